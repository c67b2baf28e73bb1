//! Store operations the plugin runtime needs: closures, NAR dumps, adding
//! signatures and GC roots — the same commands on Nix 2.8 and modern Nix.
//!
//! Adding signatures needs no daemon protocol: the caller writes a one-path
//! `file://` binary cache holding a narinfo with the signatures, and
//! `nix store copy-sigs` imports them (verified against the path's NAR hash by
//! Nix). This module must not build narinfo text itself.

use std::path::Path;
use std::process::Stdio;

use crate::{Nix, NixError, run_output};

impl Nix {
    /// The closure of `paths` (including them), sorted.
    pub async fn closure(&self, paths: &[String]) -> Result<Vec<String>, NixError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = plain_std(self, "nix-store");
        cmd.arg("--query").arg("--requisites").args(paths);
        let out = run_output(
            &mut tokio::process::Command::from(cmd),
            "nix-store --query --requisites",
        )
        .await?;
        let mut all: Vec<String> = out
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Start `nix-store --dump PATH`; read the NAR from the child's stdout.
    pub fn dump_nar(&self, path: &str) -> Result<std::process::Child, NixError> {
        let mut cmd = plain_std(self, "nix-store");
        cmd.arg("--dump")
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd.spawn().map_err(|source| NixError::Spawn {
            program: "nix-store".into(),
            source,
        })
    }

    /// `nix store copy-sigs --substituter <cache> <paths>`: import the
    /// signatures a binary cache holds for `paths` into the local store.
    pub async fn copy_sigs(&self, cache_url: &str, paths: &[String]) -> Result<(), NixError> {
        let mut cmd = self.command("nix");
        cmd.args(["store", "copy-sigs", "--substituter", cache_url])
            .args(paths);
        run_output(&mut cmd, "nix store copy-sigs").await.map(drop)
    }

    /// Make `link` an indirect GC root for the valid path `path`.
    pub async fn add_gc_root(&self, path: &str, link: &Path) -> Result<(), NixError> {
        let mut cmd = self.command("nix-store");
        cmd.arg("--add-root")
            .arg(link)
            .arg("--indirect")
            .arg("--realise")
            .arg(path);
        run_output(&mut cmd, "nix-store --add-root").await.map(drop)
    }
}

/// A blocking command from the detected installation (`nix-store` takes no
/// experimental-features flag for these subcommands, but accepts it).
fn plain_std(nix: &Nix, program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(nix.bin_dir().join(program));
    cmd.stdin(Stdio::null());
    cmd
}
