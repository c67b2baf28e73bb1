//! The last stage of both evaluators: fill in `cache_status` from the store
//! (in batches, one query per burst of jobs over a `nix-store --serve`
//! connection), register
//! GC roots, and forward jobs to the caller in arrival order.
//!
//! It must not change anything but `cache_status` and must not delay a job
//! longer than one validity check.

use std::path::PathBuf;

use std::collections::HashSet;

use kiln_nix::{Nix, NixError, StoreQuery};
use tokio::sync::mpsc;

use crate::job::{CacheStatus, EvalJob};

use super::EvalError;

/// Counts of what was forwarded.
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarded {
    /// Jobs sent.
    pub jobs: usize,
    /// Of which with an evaluation error.
    pub errors: usize,
}

/// Forward jobs from `rx` to `tx`, checking output validity when `check` is
/// set and the job has no status yet, and adding GC roots to `gc_roots_dir`.
pub async fn forward(
    nix: Nix,
    check: bool,
    gc_roots_dir: Option<PathBuf>,
    mut rx: mpsc::UnboundedReceiver<EvalJob>,
    tx: mpsc::Sender<EvalJob>,
) -> Result<Forwarded, EvalError> {
    let mut counts = Forwarded::default();
    let mut serve: Option<StoreQuery> = None;
    if let Some(dir) = &gc_roots_dir {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::Flake {
            flake: String::new(),
            message: format!("cannot create GC roots directory {}: {e}", dir.display()),
        })?;
    }
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if check {
            let paths: Vec<String> = batch
                .iter()
                .filter(|j| j.cache_status == CacheStatus::Unknown && j.error.is_none())
                .flat_map(|j| j.outputs.values().cloned())
                .collect();
            if !paths.is_empty() {
                match valid_paths(&nix, &mut serve, &paths).await {
                    Ok(valid) => {
                        for job in batch
                            .iter_mut()
                            .filter(|j| j.cache_status == CacheStatus::Unknown && j.error.is_none())
                        {
                            let local = !job.outputs.is_empty()
                                && job.outputs.values().all(|p| valid.contains(p));
                            // No substituter query here: missing means not built.
                            job.cache_status = if local {
                                CacheStatus::Local
                            } else {
                                CacheStatus::NotBuilt
                            };
                        }
                    }
                    Err(e) => tracing::warn!("cannot check output validity: {e}"),
                }
            }
        }
        for job in batch {
            if let (Some(dir), Some(drv)) = (&gc_roots_dir, &job.drv_path) {
                add_root(dir, drv);
            }
            counts.jobs += 1;
            counts.errors += usize::from(job.error.is_some());
            tx.send(job).await.map_err(|_| EvalError::Cancelled)?;
        }
    }
    Ok(counts)
}

/// Ask over a `nix-store --serve` connection (opened on first use), falling
/// back to one `nix-store --check-validity` process when that fails.
async fn valid_paths(
    nix: &Nix,
    serve: &mut Option<StoreQuery>,
    paths: &[String],
) -> Result<HashSet<String>, NixError> {
    if serve.is_none() {
        match StoreQuery::open(nix).await {
            Ok(q) => *serve = Some(q),
            Err(e) => tracing::debug!("nix-store --serve unavailable: {e}"),
        }
    }
    if let Some(q) = serve {
        match q.valid_paths(paths).await {
            Ok(valid) => return Ok(valid),
            Err(e) => {
                tracing::debug!("nix-store --serve failed, falling back: {e}");
                *serve = None;
            }
        }
    }
    nix.valid_paths(paths).await
}

fn add_root(dir: &std::path::Path, drv: &str) {
    let name = drv.rsplit('/').next().unwrap_or(drv);
    let link = dir.join(name);
    if let Err(e) = std::os::unix::fs::symlink(drv, &link)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        tracing::warn!("cannot add GC root {}: {e}", link.display());
    }
}
