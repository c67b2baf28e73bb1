//! The repository's own settings: `buildbot-nix.toml` at the repository root.
//!
//! Owns the file's schema (every key buildbot-nix and nixbot define, plus
//! Kiln's `[[post_build]]` steps and opaque `[effects]` tables), its defaults,
//! error messages that name the key and line, and the rule that `flake_dir`
//! and `lock_file` stay inside the repository. It must not run Nix or git,
//! and must not widen any plugin grant: it only selects and configures.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name, at the repository root.
pub const FILE_NAME: &str = "buildbot-nix.toml";

/// Parsed `buildbot-nix.toml`; [`RepoConfig::default`] when the file is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoConfig {
    /// Flake output attribute to evaluate (default `checks`).
    pub attribute: String,
    /// Directory of the flake, relative to the repository root (default `.`).
    pub flake_dir: String,
    /// Lock file, relative to `flake_dir` (default `flake.lock`).
    pub lock_file: String,
    /// Run effects for pull requests too.
    pub effects_on_pull_requests: bool,
    /// Branches whose pushes run effects.
    pub effects_branches: Vec<String>,
    /// Extra branches (besides the default branch) that are built on push.
    pub build_branches: Vec<String>,
    /// Kiln: post-build steps, in order.
    pub post_build: Vec<PostBuildStep>,
    /// Kiln: effect settings, kept opaque until effects exist.
    pub effects: Option<toml::Table>,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            attribute: "checks".into(),
            flake_dir: ".".into(),
            lock_file: "flake.lock".into(),
            effects_on_pull_requests: false,
            effects_branches: Vec::new(),
            build_branches: Vec::new(),
            post_build: Vec::new(),
            effects: None,
        }
    }
}

/// One `[[post_build]]` table: a plugin and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostBuildStep {
    /// Plugin name, as installed by the operator.
    pub plugin: String,
    /// A failure is reported as a warning, not a failed job.
    #[serde(default)]
    pub warn_only: bool,
    /// Only on these branches (empty: all).
    #[serde(default)]
    pub branches: Vec<String>,
    /// Also run for jobs whose outputs were already cached.
    #[serde(default)]
    pub on_cached: bool,
    /// Every other key: the plugin's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// Why `buildbot-nix.toml` was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RepoConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Syntax error, unknown key or wrong type.
    #[error(
        "{file}:{line}:{column}: {message}; fix or remove it (see the keys buildbot-nix.toml accepts)"
    )]
    Invalid {
        /// File name as shown.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// A path setting points outside the repository.
    #[error("{file}: `{key} = {value:?}` {reason}; it must name a path inside the repository")]
    Escapes {
        /// File name as shown.
        file: String,
        /// `flake_dir` or `lock_file`.
        key: &'static str,
        /// The offending value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

impl RepoConfig {
    /// Parse the text of a `buildbot-nix.toml`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<RepoConfig, RepoConfigError> {
        let config: RepoConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            RepoConfigError::Invalid {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        for (key, value) in [
            ("flake_dir", &config.flake_dir),
            ("lock_file", &config.lock_file),
        ] {
            check_relative(value).map_err(|reason| RepoConfigError::Escapes {
                file: match key_line(text, key) {
                    Some(line) => format!("{file}:{line}"),
                    None => file.to_string(),
                },
                key,
                value: value.clone(),
                reason,
            })?;
        }
        Ok(config)
    }

    /// Read `<repo_root>/buildbot-nix.toml`, or the defaults when it is absent.
    pub fn load(repo_root: &Path) -> Result<RepoConfig, RepoConfigError> {
        let path = repo_root.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => RepoConfig::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RepoConfig::default()),
            Err(source) => Err(RepoConfigError::Read { path, source }),
        }
    }

    /// The flake directory on disk, checked to stay inside `repo_root` after
    /// resolving symlinks.
    pub fn resolve_flake_dir(&self, repo_root: &Path) -> Result<PathBuf, RepoConfigError> {
        resolve_inside(repo_root, &self.flake_dir, "flake_dir")
    }

    /// The lock file on disk (relative to the flake directory), checked to
    /// stay inside `repo_root`. Whether it exists is the caller's question.
    pub fn resolve_lock_file(&self, repo_root: &Path) -> Result<PathBuf, RepoConfigError> {
        let rel = Path::new(&self.flake_dir).join(&self.lock_file);
        resolve_inside(repo_root, &rel.to_string_lossy(), "lock_file")
    }

    /// Whether a lock file other than `<flake_dir>/flake.lock` is selected.
    pub fn has_custom_lock_file(&self) -> bool {
        Path::new(&self.lock_file)
            .components()
            .ne(Path::new("flake.lock").components())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// The 1-based line where top-level `key` is assigned.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn check_relative(value: &str) -> Result<(), String> {
    let p = Path::new(value);
    if value.is_empty() {
        return Err("is empty".into());
    }
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("is absolute".into()),
            Component::ParentDir => return Err("uses `..`".into()),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

fn resolve_inside(root: &Path, rel: &str, key: &'static str) -> Result<PathBuf, RepoConfigError> {
    let file = root.join(FILE_NAME).display().to_string();
    let escapes = |reason: String| RepoConfigError::Escapes {
        file: file.clone(),
        key,
        value: rel.to_string(),
        reason,
    };
    check_relative(rel).map_err(escapes)?;
    let joined = root.join(rel);
    let (Ok(root_c), Ok(joined_c)) = (root.canonicalize(), joined.canonicalize()) else {
        // Missing paths cannot escape through a symlink; the caller reports
        // them as missing.
        return Ok(joined);
    };
    if !joined_c.starts_with(&root_c) {
        return Err(escapes(format!(
            "resolves to {} through a symlink",
            joined_c.display()
        )));
    }
    Ok(joined_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_buildbot_nix() {
        let c = RepoConfig::parse("", "t.toml").unwrap();
        assert_eq!(c, RepoConfig::default());
        assert_eq!(c.attribute, "checks");
        assert!(!c.has_custom_lock_file());
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
