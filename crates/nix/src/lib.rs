//! Kiln's Nix adapter: the one place that runs `nix`, `nix-store` and friends.
//!
//! It detects the Nix version once and hides the differences between Debian's
//! Nix 2.8 and modern Nix/Lix (`show-derivation` vs `derivation show`,
//! `path-info --json` list vs object, `drv^*`). It always passes
//! `--extra-experimental-features 'nix-command flakes'` itself.
//! It must not know about jobs, schedules or reports.

pub mod build;
mod builders;
mod derivation;
mod error;
mod path_info;
mod process;
mod serve;
mod store_ops;
mod version;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokio::process::Command;

pub use builders::{builder_systems, parse_config};
pub use derivation::{Derivation, STORE_DIR, parse_derivations};
pub use error::{NixError, error_message};
pub use path_info::{PathInfo, parse_path_info};
pub use process::{limit_memory, plain_command, run_output};
pub use serve::StoreQuery;
pub use version::{Generation, Implementation, NixVersion};

/// The experimental features every invocation enables.
pub const EXPERIMENTAL_FEATURES: &str = "nix-command flakes";

/// Paths per command line when a list of store paths is passed as arguments.
const ARG_CHUNK: usize = 2048;

/// A detected Nix installation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nix {
    bin_dir: PathBuf,
    version: NixVersion,
}

/// Find `program` on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    find_in(&std::env::var_os("PATH")?, program)
}

/// Find `program` in the directories of a `PATH`-style value.
pub fn find_in(path: &std::ffi::OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Nix {
    /// Find `nix` on PATH and run `nix --version` once.
    pub async fn detect() -> Result<Nix, NixError> {
        let nix = find_on_path("nix").ok_or(NixError::NotFound)?;
        let bin_dir = nix.parent().map(Path::to_path_buf).unwrap_or_default();
        let out = run_output(plain_command(&nix).arg("--version"), "nix --version").await?;
        let version = NixVersion::parse(&out)?;
        tracing::debug!(%version, bin = %bin_dir.display(), "detected Nix");
        Ok(Nix { bin_dir, version })
    }

    /// A handle for a known version (tests, or a caller that detected it).
    pub fn with_version(bin_dir: impl Into<PathBuf>, version: NixVersion) -> Nix {
        Nix {
            bin_dir: bin_dir.into(),
            version,
        }
    }

    /// The detected version.
    pub fn version(&self) -> &NixVersion {
        &self.version
    }

    /// The directory holding `nix`, `nix-store`, ….
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A command for a Nix program (`nix`, `nix-store`, `nix-build`, …) from
    /// the detected installation, with the experimental features enabled,
    /// stdin closed, `kill_on_drop`, and in its own process group (kill the
    /// group with `libc::kill(-pid, SIGKILL)` to stop builders too).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = plain_command(self.bin_dir.join(program));
        cmd.arg("--extra-experimental-features")
            .arg(EXPERIMENTAL_FEATURES);
        cmd
    }

    /// `nix derivation show -r` (modern) / `nix show-derivation -r` (2.8) of
    /// the given derivations: every derivation in their closure, keyed by path.
    pub async fn show_derivations_recursive(
        &self,
        drvs: &[String],
    ) -> Result<HashMap<String, Derivation>, NixError> {
        self.show_derivations_inner(drvs, true).await
    }

    /// The same, without `-r`: just the given derivations.
    pub async fn show_derivations(
        &self,
        drvs: &[String],
    ) -> Result<HashMap<String, Derivation>, NixError> {
        self.show_derivations_inner(drvs, false).await
    }

    async fn show_derivations_inner(
        &self,
        drvs: &[String],
        recursive: bool,
    ) -> Result<HashMap<String, Derivation>, NixError> {
        let mut all = HashMap::new();
        for chunk in drvs.chunks(ARG_CHUNK) {
            let mut cmd = self.command("nix");
            match self.version.generation() {
                Generation::Legacy => cmd.arg("show-derivation"),
                Generation::Modern => cmd.args(["derivation", "show"]),
            };
            if recursive {
                cmd.arg("--recursive");
            }
            cmd.arg("--").args(chunk);
            let out = run_output(&mut cmd, "nix derivation show").await?;
            all.extend(parse_derivations(&out)?);
        }
        Ok(all)
    }

    /// `nix path-info --json` of store paths (derivations are described
    /// themselves, not their outputs). Invalid paths come back with
    /// `valid: false`.
    pub async fn path_info(&self, paths: &[String]) -> Result<Vec<PathInfo>, NixError> {
        let mut all = Vec::with_capacity(paths.len());
        // On 2.8 a `.drv` argument means its outputs unless `--derivation`,
        // which in turn rejects non-derivations: ask in two groups.
        let (drvs, others): (Vec<&String>, Vec<&String>) = match self.version.generation() {
            Generation::Legacy => paths.iter().partition(|p| p.ends_with(".drv")),
            Generation::Modern => (Vec::new(), paths.iter().collect()),
        };
        for (group, derivation) in [(drvs, true), (others, false)] {
            for chunk in group.chunks(ARG_CHUNK) {
                let mut cmd = self.command("nix");
                cmd.args(["path-info", "--json"]);
                if derivation {
                    cmd.arg("--derivation");
                }
                cmd.arg("--").args(chunk.iter().map(|s| s.as_str()));
                let out = run_output(&mut cmd, "nix path-info --json").await?;
                all.extend(parse_path_info(&out)?);
            }
        }
        Ok(all)
    }

    /// The subset of `paths` that are valid in the local store
    /// (`nix-store --check-validity --print-invalid`, one process per 2048).
    pub async fn valid_paths(&self, paths: &[String]) -> Result<HashSet<String>, NixError> {
        let mut valid: HashSet<String> = paths.iter().cloned().collect();
        for chunk in paths.chunks(ARG_CHUNK) {
            let mut cmd = self.command("nix-store");
            cmd.args(["--check-validity", "--print-invalid", "--"])
                .args(chunk);
            let out = run_output(&mut cmd, "nix-store --check-validity").await?;
            for line in out.lines() {
                valid.remove(line.trim());
            }
        }
        Ok(valid)
    }

    /// Nix's configuration (`nix show-config`, or `nix config show` on
    /// Nix ≥ 2.20) as key → value.
    pub async fn config(&self) -> Result<BTreeMap<String, String>, NixError> {
        let mut cmd = self.command("nix");
        let v = &self.version;
        if v.implementation == Implementation::Nix && (v.major, v.minor) >= (2, 20) {
            cmd.args(["config", "show"]);
        } else {
            cmd.arg("show-config");
        }
        Ok(parse_config(
            &run_output(&mut cmd, "nix show-config").await?,
        ))
    }

    /// The host's system (`system` setting), e.g. `x86_64-linux`.
    pub async fn current_system(&self) -> Result<String, NixError> {
        self.config()
            .await?
            .remove("system")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| NixError::parse("nix show-config", "no `system` setting"))
    }

    /// Systems offered by Nix's configured remote builders (`builders`).
    pub async fn remote_builder_systems(&self) -> Result<BTreeSet<String>, NixError> {
        let config = self.config().await?;
        let local = config.get("system").cloned().unwrap_or_default();
        let builders = config.get("builders").cloned().unwrap_or_default();
        Ok(builder_systems(&builders, &local, &|p| {
            std::fs::read_to_string(p).ok()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn nix() -> Nix {
        Nix::detect().await.expect("these machines have Nix")
    }

    #[tokio::test]
    async fn detects_the_installed_nix() {
        let nix = nix().await;
        assert!(nix.version().raw.starts_with("nix ("));
        assert!(nix.bin_dir().join("nix-store").exists());
        let system = nix.current_system().await.unwrap();
        assert!(system.contains('-'), "{system}");
        // No builders are configured on the test machines; the call must work.
        nix.remote_builder_systems().await.unwrap();
    }

    #[tokio::test]
    async fn checks_validity_and_path_info_against_the_store() {
        let nix = nix().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln-nix-test");
        let salt = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        std::fs::write(&file, salt).unwrap();
        let mut add = nix.command("nix-store");
        add.arg("--add").arg(&file);
        let path = run_output(&mut add, "nix-store --add").await.unwrap();
        let path = path.trim().to_string();
        let missing = format!("{STORE_DIR}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-kiln-missing");
        let valid = nix
            .valid_paths(&[path.clone(), missing.clone()])
            .await
            .unwrap();
        assert!(valid.contains(&path));
        assert!(!valid.contains(&missing));
        let infos = nix.path_info(std::slice::from_ref(&path)).await.unwrap();
        assert_eq!(infos.len(), 1);
        assert!(infos[0].valid);
        assert!(infos[0].nar_hash.as_deref().unwrap().starts_with("sha256"));
    }
}
