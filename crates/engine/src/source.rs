//! Source preparation for `kiln run`: turn FLAKE (a directory, or a
//! `git+file://` / `https://` git URL, with an optional `--rev`) into a local
//! directory Nix can evaluate, plus its repository config and git revision.
//!
//! Owns cloning, checkout, applying `flake_dir`, and the Nix 2.8 workaround
//! for `lock_file` (a temporary path-flake copy with that lock file as
//! `flake.lock`). It must not evaluate or build anything.

use std::path::{Path, PathBuf};

use kiln_nix::{Nix, plain_command};
use tempfile::TempDir;

use crate::repo_config::{RepoConfig, RepoConfigError};

mod change;

pub use change::{
    Change, ChangeOptions, RepoSteps, StepsSource, check_branch_name, resolve_change,
};

/// A flake ready to evaluate. Temporary directories live as long as this.
#[derive(Debug)]
pub struct Source {
    /// FLAKE as the user gave it.
    pub flake: String,
    /// The repository root (where `buildbot-nix.toml` was looked for).
    pub repo_root: PathBuf,
    /// The directory to evaluate (`flake_dir` applied; maybe a temporary copy).
    pub flake_dir: PathBuf,
    /// `git rev-parse HEAD` of the checkout, or `None` outside git.
    pub rev: Option<String>,
    /// The repository's `buildbot-nix.toml` (defaults when absent).
    pub config: RepoConfig,
    /// On Nix with `--reference-lock-file`: the lock file to pass to it.
    pub reference_lock_file: Option<PathBuf>,
    /// Where the checkout came from, for reading other branches.
    origin: Origin,
    _temp: Vec<TempDir>,
}

/// Where a [`Source`]'s checkout came from: what [`resolve_change`] needs
/// to name the branch and read the default branch's `buildbot-nix.toml`.
#[derive(Debug, Clone)]
enum Origin {
    /// A local directory, used in place (maybe inside a git work tree).
    Dir,
    /// A clone of the local repository `top` at `--rev`; the flake is
    /// `prefix` inside it.
    LocalClone { top: PathBuf, prefix: PathBuf },
    /// A clone of a git URL; `reference` is its `?ref=`, the flake is
    /// `prefix` (`?dir=`) inside it.
    Url {
        url: String,
        reference: Option<String>,
        top: PathBuf,
        prefix: PathBuf,
    },
}

/// Why FLAKE could not be prepared. All of these are exit-2 class.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// FLAKE does not name an existing flake.
    #[error("flake {flake}: {reason}")]
    FlakeNotFound {
        /// FLAKE as given.
        flake: String,
        /// What is missing and what to do.
        reason: String,
    },
    /// A git command failed (clone, fetch, checkout).
    #[error("`{command}` failed: {message}")]
    Git {
        /// The git command line.
        command: String,
        /// git's message.
        message: String,
    },
    /// `buildbot-nix.toml` is invalid.
    #[error(transparent)]
    Config(#[from] RepoConfigError),
    /// The configured `lock_file` does not exist.
    #[error(
        "lock file {shown} (from `lock_file` in buildbot-nix.toml) does not exist; commit it or fix `lock_file`"
    )]
    LockFileMissing {
        /// Where it was expected.
        path: PathBuf,
        /// The same for messages (relative to the URL in a clone).
        shown: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

/// Whether FLAKE is a git URL rather than a directory.
pub fn is_url(flake: &str) -> bool {
    ["git+", "https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| flake.starts_with(p))
}

/// Prepare FLAKE (at `rev` if given) for evaluation.
pub async fn prepare(nix: &Nix, flake: &str, rev: Option<&str>) -> Result<Source, SourceError> {
    let mut temp = Vec::new();
    // For a clone: its directory and how to name it in messages.
    let mut clone_of: Option<(PathBuf, String)> = None;
    let mut origin = Origin::Dir;
    let root = if is_url(flake) {
        let parts = split_url(flake);
        let sub = checked_dir(flake, parts.dir.as_deref())?;
        let dir =
            TempDir::with_prefix("kiln-src-").map_err(io("creating a temporary directory"))?;
        let want = rev.map(str::to_string).or(parts.rev);
        clone(
            &parts.url,
            want.as_deref(),
            parts.reference.as_deref(),
            dir.path(),
            flake,
        )
        .await?;
        let top = dir.path().to_path_buf();
        temp.push(dir);
        let label = label(flake, want.as_deref());
        let root = top.join(&sub);
        if !root.is_dir() {
            return Err(SourceError::FlakeNotFound {
                flake: flake.to_string(),
                reason: format!("no directory `{}` in {label}", sub.display()),
            });
        }
        origin = Origin::Url {
            url: parts.url.clone(),
            reference: parts.reference.clone(),
            top: top.clone(),
            prefix: sub.clone(),
        };
        clone_of = Some((top, label));
        root
    } else {
        let dir = Path::new(flake);
        if !dir.is_dir() {
            return Err(SourceError::FlakeNotFound {
                flake: flake.to_string(),
                reason: "no such directory; give a flake directory or a git URL".into(),
            });
        }
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {flake}")))?;
        match rev {
            None => dir,
            Some(rev) => {
                let Some((top, prefix)) = work_tree(&dir).await else {
                    return Err(SourceError::FlakeNotFound {
                        flake: flake.to_string(),
                        reason: format!(
                            "--rev {rev} needs a git repository, and {} is not in one",
                            dir.display()
                        ),
                    });
                };
                let t = TempDir::with_prefix("kiln-src-")
                    .map_err(io("creating a temporary directory"))?;
                // Clone the whole repository and go back to the same
                // subdirectory inside it.
                let url = format!("file://{}", top.display());
                clone(&url, Some(rev), None, t.path(), flake).await?;
                let clone_top = t.path().to_path_buf();
                temp.push(t);
                let label = label(flake, Some(rev));
                let root = clone_top.join(&prefix);
                if !root.is_dir() {
                    return Err(SourceError::FlakeNotFound {
                        flake: flake.to_string(),
                        reason: format!("no directory `{}` in {label}", prefix.display()),
                    });
                }
                clone_of = Some((clone_top, label));
                origin = Origin::LocalClone { top, prefix };
                root
            }
        }
    };
    // Canonical, so that `flake_dir` (resolved through symlinks) stays a
    // prefix-comparable path below it.
    let root = root.canonicalize().unwrap_or(root);
    let clone_of = clone_of.map(|(top, label)| (top.canonicalize().unwrap_or(top), label));
    // A path in messages: relative to the URL for a clone, never its
    // temporary directory.
    let shown = |path: &Path| match &clone_of {
        Some((top, label)) => {
            let rel = path.strip_prefix(top).unwrap_or(path);
            let rel = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            format!("`{}` of {label}", rel.display())
        }
        None => path.display().to_string(),
    };
    let rev = git_head(&root).await;
    let config = RepoConfig::load(&root)?;
    let mut flake_dir = config.resolve_flake_dir(&root)?;
    if !flake_dir.join("flake.nix").is_file() {
        return Err(SourceError::FlakeNotFound {
            flake: flake.to_string(),
            reason: format!(
                "no flake.nix in {} (flake_dir = {:?}); point FLAKE or `flake_dir` at a flake",
                shown(&flake_dir),
                config.flake_dir
            ),
        });
    }
    let mut reference_lock_file = None;
    if config.has_custom_lock_file() {
        let lock = config.resolve_lock_file(&root)?;
        if !lock.is_file() {
            let shown = shown(&lock);
            return Err(SourceError::LockFileMissing { path: lock, shown });
        }
        if nix.version().has_reference_lock_file() {
            reference_lock_file = Some(lock);
        } else {
            let copy = TempDir::with_prefix("kiln-flake-")
                .map_err(io("creating a temporary directory"))?;
            copy_tree(&root, copy.path()).await?;
            let rel = flake_dir.strip_prefix(&root).unwrap_or(Path::new(""));
            flake_dir = copy.path().join(rel);
            std::fs::copy(&lock, flake_dir.join("flake.lock"))
                .map_err(io(format!("copying {}", lock.display())))?;
            temp.push(copy);
        }
    }
    Ok(Source {
        flake: flake.to_string(),
        repo_root: root,
        flake_dir,
        rev,
        config,
        reference_lock_file,
        origin,
        _temp: temp,
    })
}

/// The parts of a flake-style git URL.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    /// The URL git understands.
    url: String,
    rev: Option<String>,
    reference: Option<String>,
    /// `dir`: the subdirectory to use (unchecked).
    dir: Option<String>,
}

/// Split `git+https://host/repo?ref=main&rev=abc&dir=sub` into its parts.
fn split_url(flake: &str) -> UrlParts {
    let flake = flake.strip_prefix("git+").unwrap_or(flake);
    let (url, query) = flake.split_once('?').unwrap_or((flake, ""));
    let mut parts = UrlParts {
        url: url.to_string(),
        rev: None,
        reference: None,
        dir: None,
    };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("rev", v)) => parts.rev = Some(percent_decode(v)),
            Some(("ref", v)) => parts.reference = Some(percent_decode(v)),
            Some(("dir", v)) => parts.dir = Some(percent_decode(v)),
            _ => {}
        }
    }
    parts
}

/// `%XX` escapes (and `+` as a space) decoded; invalid escapes kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dir` of a URL as a relative path that stays inside the repository.
fn checked_dir(flake: &str, dir: Option<&str>) -> Result<PathBuf, SourceError> {
    let Some(dir) = dir.filter(|d| !d.is_empty()) else {
        return Ok(PathBuf::new());
    };
    let path = Path::new(dir);
    let ok = path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !ok {
        return Err(SourceError::FlakeNotFound {
            flake: flake.to_string(),
            reason: format!(
                "`dir={dir}` must be a relative directory inside the repository (no `..`, not absolute)"
            ),
        });
    }
    Ok(path.to_path_buf())
}

/// `<flake> at rev <rev>` (or `at its default branch`) for messages.
fn label(flake: &str, rev: Option<&str>) -> String {
    match rev {
        Some(rev) => format!("{flake} at rev {rev}"),
        None => format!("{flake} at its default branch"),
    }
}

/// The top of the git work tree containing `dir` and `dir` relative to it.
async fn work_tree(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let out = git(
        Some(dir),
        &["rev-parse", "--show-toplevel", "--show-prefix"],
    )
    .await
    .ok()?;
    let mut lines = out.lines();
    let top = lines.next().filter(|l| !l.is_empty())?;
    let prefix = lines.next().unwrap_or_default();
    Some((PathBuf::from(top), PathBuf::from(prefix)))
}

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, SourceError> {
    let mut cmd = plain_command("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
    let shown = format!("git {}", args.join(" "));
    let out = cmd.output().await.map_err(|e| SourceError::Git {
        command: shown.clone(),
        message: format!("cannot run git: {e}"),
    })?;
    if !out.status.success() {
        return Err(SourceError::Git {
            command: shown,
            message: one_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// git's most telling line (`fatal: …` if any, else the last one).
fn one_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last())
        .map_or_else(|| "failed without a message".to_string(), |l| l.to_string())
}

async fn clone(
    url: &str,
    rev: Option<&str>,
    reference: Option<&str>,
    dir: &Path,
    flake: &str,
) -> Result<(), SourceError> {
    clone_in(url, rev, reference, dir, flake)
        .await
        .map_err(|e| match e {
            // Name the URL, not the temporary directory.
            SourceError::Git { command, message } => SourceError::Git {
                command: command.replace(&dir.display().to_string(), &format!("<clone of {url}>")),
                message: message.replace(&dir.display().to_string(), "<clone>"),
            },
            e => e,
        })
}

async fn clone_in(
    url: &str,
    rev: Option<&str>,
    reference: Option<&str>,
    dir: &Path,
    flake: &str,
) -> Result<(), SourceError> {
    let d = dir.to_str().ok_or_else(|| SourceError::FlakeNotFound {
        flake: flake.to_string(),
        reason: "temporary directory is not UTF-8".into(),
    })?;
    match rev {
        None => {
            let mut args = vec!["clone", "--quiet", "--depth", "1"];
            if let Some(r) = reference {
                args.extend(["--branch", r]);
            }
            args.extend(["--", url, d]);
            git(None, &args).await?;
        }
        Some(rev) => {
            git(None, &["init", "--quiet", d]).await?;
            let shallow = git(Some(dir), &["fetch", "--quiet", "--depth", "1", url, rev]).await;
            if shallow.is_err() {
                // Servers that refuse a bare commit id: fetch everything.
                git(
                    Some(dir),
                    &[
                        "fetch",
                        "--quiet",
                        url,
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                )
                .await?;
                git(Some(dir), &["checkout", "--quiet", "--detach", rev])
                    .await
                    .map_err(|e| match e {
                        SourceError::Git { command, message } => SourceError::Git {
                            command: format!("{command} (in a clone of {url})"),
                            message,
                        },
                        e => e,
                    })?;
            } else {
                git(
                    Some(dir),
                    &["checkout", "--quiet", "--detach", "FETCH_HEAD"],
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn git_head(dir: &Path) -> Option<String> {
    let inside = git(Some(dir), &["rev-parse", "--is-inside-work-tree"])
        .await
        .ok()?;
    if inside.trim() != "true" {
        return None;
    }
    let head = git(Some(dir), &["rev-parse", "HEAD"]).await.ok()?;
    // Modified tracked files: Nix evaluates a dirty tree, which has no rev.
    let status = git(
        Some(dir),
        &["status", "--porcelain", "--untracked-files=no"],
    )
    .await
    .ok()?;
    if !status.trim().is_empty() {
        return None;
    }
    Some(head.trim().to_string())
}

/// Copy the repository into `to`: only the files git tracks when it is a git
/// work tree (what a git flake would see), else everything but `.git`.
pub(crate) async fn copy_tree(from: &Path, to: &Path) -> Result<(), SourceError> {
    let tracked = git(Some(from), &["ls-files", "-z", "--cached"]).await.ok();
    let files: Vec<PathBuf> = match tracked {
        Some(list) => list
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => walk(from, Path::new("")).map_err(io(format!("listing {}", from.display())))?,
    };
    for rel in files {
        let src = from.join(&rel);
        let dst = to.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let meta = match std::fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(_) => continue, // tracked but deleted in the work tree
        };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(io(format!("reading {}", src.display())))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(io(format!("linking {}", dst.display())))?;
        } else if meta.is_file() {
            std::fs::copy(&src, &dst).map_err(io(format!("copying {}", src.display())))?;
        }
    }
    Ok(())
}

fn walk(root: &Path, rel: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let rel = rel.join(&name);
        if entry.file_type()?.is_dir() {
            out.extend(walk(root, &rel)?);
        } else {
            out.push(rel);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flake_style_git_urls() {
        assert_eq!(
            split_url("git+https://example.org/r.git?ref=main&rev=abc&dir=ci%20dir"),
            UrlParts {
                url: "https://example.org/r.git".into(),
                rev: Some("abc".into()),
                reference: Some("main".into()),
                dir: Some("ci dir".into()),
            }
        );
        assert_eq!(
            split_url("git+file:///srv/r"),
            UrlParts {
                url: "file:///srv/r".into(),
                rev: None,
                reference: None,
                dir: None,
            }
        );
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
        assert!(checked_dir("f", Some("../x")).is_err());
        assert!(checked_dir("f", Some("/abs")).is_err());
        assert_eq!(checked_dir("f", Some("a/b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(checked_dir("f", None).unwrap(), PathBuf::new());
        assert!(is_url("git+file:///srv/r"));
        assert!(is_url("https://example.org/r.git"));
        assert!(!is_url("./examples/hello-flake"));
    }
}
