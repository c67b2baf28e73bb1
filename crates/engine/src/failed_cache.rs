//! The opt-in failed-build cache (buildbot-nix's `cacheFailedBuilds`): a
//! derivation that failed in an earlier run is reported `failed` again with a
//! pointer to that run's log, instead of being rebuilt.
//!
//! One small file per derivation (named after the `.drv` base name, holding
//! the log path) in a cache directory, so concurrent runs never contend. It
//! must not decide when to consult the cache: the driver does.

use std::path::{Path, PathBuf};

/// A directory of failed derivations.
#[derive(Debug, Clone)]
pub struct FailedCache {
    dir: PathBuf,
    rebuild: bool,
}

impl FailedCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FailedCache {
            dir: dir.into(),
            rebuild: false,
        }
    }

    /// Keep recording failures but never answer a lookup
    /// (`--rebuild-failed`).
    pub fn rebuilding(mut self) -> Self {
        self.rebuild = true;
        self
    }

    /// The default place: `$XDG_CACHE_HOME/kiln/failed-builds` (or
    /// `~/.cache/kiln/failed-builds`).
    pub fn default_dir() -> PathBuf {
        cache_home().join("kiln").join("failed-builds")
    }

    fn entry(&self, drv: &str) -> PathBuf {
        let name = Path::new(drv)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| drv.replace('/', "_"));
        self.dir.join(name)
    }

    /// The log of an earlier failure of `drv`, if any.
    pub fn lookup(&self, drv: &str) -> Option<String> {
        if self.rebuild {
            return None;
        }
        std::fs::read_to_string(self.entry(drv))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Remember that `drv` failed, with its log.
    pub fn record(&self, drv: &str, log: &str) {
        let write = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(self.entry(drv), format!("{log}\n")));
        if let Err(e) = write {
            tracing::warn!("cannot record failed build in {}: {e}", self.dir.display());
        }
    }

    /// Forget `drv` (it built after all).
    pub fn forget(&self, drv: &str) {
        let _ = std::fs::remove_file(self.entry(drv));
    }
}

/// `$XDG_CACHE_HOME`, else `~/.cache`, else the temporary directory.
pub fn cache_home() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache"),
        None => std::env::temp_dir(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_looks_up_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let c = FailedCache::new(dir.path().join("fb"));
        let drv = "/nix/store/abc-x.drv";
        assert_eq!(c.lookup(drv), None);
        c.record(drv, "/logs/x.log");
        assert_eq!(c.lookup(drv).as_deref(), Some("/logs/x.log"));
        c.forget(drv);
        assert_eq!(c.lookup(drv), None);
    }
}
