//! The local Nix store as plugins see it, on top of the Nix adapter.
//!
//! Hashes are normalised to `sha256:<nix base-32>` (what narinfo files and
//! fingerprints use), whatever form `nix path-info --json` printed. Adding
//! signatures writes a one-path `file://` cache and has Nix import from it,
//! which works without a daemon on every Nix version.

use std::io::Read;

use kiln_narinfo::{NarHash, NarInfo};
use kiln_nix::Nix;
use kiln_runtime::context::{BoxFuture, PathInfo, StoreBackend};

/// The store backend over a detected Nix.
pub struct NixStore {
    nix: Nix,
    gc_root_dir: std::path::PathBuf,
}

impl NixStore {
    /// A backend that registers GC roots under `gc_root_dir`.
    pub fn new(nix: Nix, gc_root_dir: std::path::PathBuf) -> Self {
        NixStore { nix, gc_root_dir }
    }

    async fn info(&self, path: &str) -> Result<PathInfo, String> {
        let infos = self
            .nix
            .path_info(&[path.to_owned()])
            .await
            .map_err(|e| e.to_string())?;
        let info = infos
            .into_iter()
            .find(|i| i.path == path)
            .filter(|i| i.valid)
            .ok_or_else(|| format!("{path} is not a valid store path"))?;
        let raw = info
            .nar_hash
            .ok_or_else(|| format!("Nix printed no NAR hash for {path}"))?;
        let nar_hash =
            NarHash::parse(&raw).map_err(|e| format!("NAR hash `{raw}` of {path}: {e}"))?;
        let mut references = info.references;
        references.sort();
        Ok(PathInfo {
            path: info.path,
            nar_hash: nar_hash.to_nix(),
            nar_size: info.nar_size.unwrap_or(0),
            references,
            deriver: info.deriver,
            signatures: info.signatures,
            ca: info.ca,
        })
    }
}

struct ChildReader(std::process::Child);

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let out = self
            .0
            .stdout
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let n = out.read(buf)?;
        if n == 0 {
            let status = self.0.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "nix-store --dump failed: {status}"
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl StoreBackend for NixStore {
    fn path_info<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<PathInfo, String>> {
        Box::pin(self.info(path))
    }

    fn closure<'a>(&'a self, paths: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move { self.nix.closure(paths).await.map_err(|e| e.to_string()) })
    }

    fn dump_nar<'a>(
        &'a self,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Read + Send>, String>> {
        Box::pin(async move {
            let child = self.nix.dump_nar(path).map_err(|e| e.to_string())?;
            Ok(Box::new(ChildReader(child)) as Box<dyn Read + Send>)
        })
    }

    fn add_signatures<'a>(
        &'a self,
        path: &'a str,
        signatures: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if signatures.is_empty() {
                return Ok(());
            }
            let info = self.info(path).await?;
            let nar_hash = NarHash::parse(&info.nar_hash).map_err(|e| e.to_string())?;
            let narinfo = NarInfo {
                store_path: info.path.clone(),
                url: NarInfo::nar_url(&nar_hash, "none"),
                compression: "none".into(),
                file_hash: nar_hash,
                file_size: info.nar_size,
                nar_hash,
                nar_size: info.nar_size,
                references: info.references.clone(),
                deriver: info.deriver.clone(),
                signatures: signatures.to_vec(),
                ca: info.ca.clone(),
            };
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let write = |name: &str, text: String| {
                std::fs::write(dir.path().join(name), text).map_err(|e| e.to_string())
            };
            write(
                "nix-cache-info",
                format!("StoreDir: {}\n", kiln_nix::STORE_DIR),
            )?;
            write(&narinfo.file_name(), narinfo.to_string())?;
            let url = format!("file://{}", dir.path().display());
            self.nix
                .copy_sigs(&url, &[info.path])
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn add_gc_root<'a>(
        &'a self,
        name: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if safe.is_empty() || safe.starts_with('.') {
                return Err(format!("`{name}` is not usable as a GC root name"));
            }
            std::fs::create_dir_all(&self.gc_root_dir).map_err(|e| e.to_string())?;
            self.nix
                .add_gc_root(path, &self.gc_root_dir.join(safe))
                .await
                .map_err(|e| e.to_string())
        })
    }
}
