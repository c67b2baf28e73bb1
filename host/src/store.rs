//! The local Nix store as plugins see it, on top of the Nix adapter.
//!
//! Hashes are normalised to `sha256:<nix base-32>` (what narinfo files and
//! fingerprints use), whatever form `nix path-info --json` printed. Adding
//! signatures writes a one-path `file://` cache and has Nix import from it,
//! which works without a daemon on every Nix version.

use std::io::Read;
use std::path::Path;

use kiln_narinfo::{NarHash, NarInfo};
use kiln_nix::Nix;
use kiln_runtime::context::{BoxFuture, PathInfo, StoreBackend};

/// The store backend over a detected Nix.
pub struct NixStore {
    nix: Nix,
    gc_root_dir: std::path::PathBuf,
    infos: std::sync::Mutex<InfoCache>,
}

/// Path infos already read, and the closures plugins asked for recently:
/// a miss on a path of such a closure reads the infos of its other
/// uncached paths in the same `nix path-info` call, so an upload of a
/// closure of many paths costs a few Nix processes, not one per path.
/// A valid path's info changes only by gaining signatures, which
/// `add_signatures` invalidates.
#[derive(Default)]
struct InfoCache {
    infos: std::collections::HashMap<String, (std::time::Instant, PathInfo)>,
    closures: std::collections::VecDeque<std::sync::Arc<Vec<String>>>,
}

/// Paths read in one batch at most.
const INFO_BATCH: usize = 1000;
/// Cached infos at most (the cache is cleared beyond).
const INFO_CACHE_MAX: usize = 200_000;
/// How long a cached info is used: long enough for one upload, short
/// enough that a path collected and rebuilt differently, or signed outside
/// Kiln, is read afresh.
const INFO_TTL: std::time::Duration = std::time::Duration::from_secs(120);
/// Closures remembered for batching.
const RECENT_CLOSURES: usize = 8;

impl NixStore {
    /// A backend that registers GC roots under `gc_root_dir`.
    pub fn new(nix: Nix, gc_root_dir: std::path::PathBuf) -> Self {
        NixStore {
            nix,
            gc_root_dir,
            infos: std::sync::Mutex::new(InfoCache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, InfoCache> {
        self.infos.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn info(&self, path: &str) -> Result<PathInfo, String> {
        let batch = {
            let cache = self.cache();
            if let Some((at, info)) = cache.infos.get(path)
                && at.elapsed() < INFO_TTL
            {
                return Ok(info.clone());
            }
            let mut batch = vec![path.to_owned()];
            if let Some(closure) = cache.closures.iter().find(|c| c.iter().any(|p| p == path)) {
                batch.extend(
                    closure
                        .iter()
                        .filter(|p| {
                            *p != path
                                && cache
                                    .infos
                                    .get(*p)
                                    .is_none_or(|(at, _)| at.elapsed() >= INFO_TTL)
                        })
                        .take(INFO_BATCH - 1)
                        .cloned(),
                );
            }
            batch
        };
        let infos = match self.nix.path_info(&batch).await {
            Ok(infos) => infos,
            // One bad path of the batch must not fail the one asked for.
            Err(_) if batch.len() > 1 => self
                .nix
                .path_info(&batch[..1])
                .await
                .map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let now = std::time::Instant::now();
        let mut found = None;
        let mut cache = self.cache();
        if cache.infos.len() + infos.len() > INFO_CACHE_MAX {
            cache.infos.clear();
        }
        for raw in infos.into_iter().filter(|i| i.valid) {
            let wanted = raw.path == path;
            match normalise(raw) {
                Ok(info) => {
                    if wanted {
                        found = Some(Ok(info.clone()));
                    }
                    cache.infos.insert(info.path.clone(), (now, info));
                }
                Err(e) if wanted => found = Some(Err(e)),
                Err(_) => {}
            }
        }
        found.unwrap_or_else(|| Err(format!("{path} is not a valid store path")))
    }
}

/// A path info as plugins see it: the NAR hash as `sha256:<nix base-32>`,
/// references sorted.
fn normalise(info: kiln_nix::PathInfo) -> Result<PathInfo, String> {
    let path = &info.path;
    let raw = info
        .nar_hash
        .as_deref()
        .ok_or_else(|| format!("Nix printed no NAR hash for {path}"))?;
    let nar_hash = NarHash::parse(raw).map_err(|e| format!("NAR hash `{raw}` of {path}: {e}"))?;
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

/// Whether every name under `path` is UTF-8 and readable, as `nix-nar`
/// needs (it would fail mid-stream otherwise).
fn utf8_tree(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_dir() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries
        .into_iter()
        .all(|entry| entry.is_ok_and(|e| e.file_name().to_str().is_some() && utf8_tree(&e.path())))
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
        Box::pin(async move {
            let closure = self.nix.closure(paths).await.map_err(|e| e.to_string())?;
            let mut cache = self.cache();
            if !cache.closures.iter().any(|c| **c == closure) {
                if cache.closures.len() >= RECENT_CLOSURES {
                    cache.closures.pop_front();
                }
                cache
                    .closures
                    .push_back(std::sync::Arc::new(closure.clone()));
            }
            Ok(closure)
        })
    }

    fn dump_nar<'a>(
        &'a self,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Read + Send>, String>> {
        Box::pin(async move {
            // Serialised in process (the store is readable by us), which
            // saves a `nix-store --dump` process per path; plugins compare
            // the NAR hash the host computes with the store's, so a
            // difference cannot go unnoticed. Nix dumps what we cannot read.
            if utf8_tree(Path::new(path))
                && let Ok(encoder) = nix_nar::Encoder::new(path)
            {
                return Ok(Box::new(encoder) as Box<dyn Read + Send>);
            }
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
            // The path gains signatures: read its info afresh next time.
            self.cache().infos.remove(path);
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
            let copied = self
                .nix
                .copy_sigs(&url, &[info.path])
                .await
                .map_err(|e| e.to_string());
            self.cache().infos.remove(path);
            copied
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
