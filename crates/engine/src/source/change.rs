//! The change a run builds — branch, default branch, pull request, fork —
//! and the default-branch rule for post-build steps: a pull request (or a
//! branch other than the default one) runs the `[[post_build]]` steps of
//! the default branch's committed `buildbot-nix.toml`, never its own.
//!
//! Owns branch and default-branch detection with git and reading
//! `buildbot-nix.toml` from another branch (`git cat-file`). It must not
//! judge grants or secrets (the plugin host does) and must not change the
//! checkout being built.

use std::path::{Path, PathBuf};

use super::{Origin, Source, SourceError, git, work_tree};
use crate::repo_config::{FILE_NAME, PostBuildStep, RepoConfig};

/// What the caller says about the change (`kiln run --branch
/// --default-branch --pull-request --fork`; `kiln serve` from the forge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeOptions {
    /// The branch being built; `None` = the checked-out branch, or a git
    /// URL's `?ref=`.
    pub branch: Option<String>,
    /// The repository's default branch; `None` = detect it (see
    /// [`resolve_change`]).
    pub default_branch: Option<String>,
    /// The pull request being built.
    pub pull_request: Option<u64>,
    /// The pull request comes from a fork.
    pub fork: bool,
}

/// The change as resolved against the checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The branch built (a pull request's head branch), when known.
    pub branch: Option<String>,
    /// The repository's default branch, when known.
    pub default_branch: Option<String>,
    /// The pull request built, if any.
    pub pull_request: Option<u64>,
    /// The pull request comes from a fork.
    pub fork: bool,
    /// Not a pull request, and the branch is the default branch (or, for a
    /// plain directory outside git, neither is known).
    pub is_default_branch: bool,
}

/// Where the repository's `[[post_build]]` steps were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepsSource {
    /// The checked-out `buildbot-nix.toml` (building the default branch,
    /// or a branch whose default branch cannot be read).
    Checkout,
    /// The default branch's committed `buildbot-nix.toml`.
    DefaultBranch {
        /// The default branch.
        branch: String,
        /// Its commit.
        rev: String,
    },
    /// The default branch has no `buildbot-nix.toml`: no repository steps.
    DefaultBranchHasNone {
        /// The default branch.
        branch: String,
        /// Its commit.
        rev: String,
    },
    /// A pull request whose default branch cannot be read: no repository
    /// steps (its own are never used).
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for StepsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |rev: &str| rev.chars().take(12).collect::<String>();
        match self {
            StepsSource::Checkout => write!(f, "the checked-out {FILE_NAME}"),
            StepsSource::DefaultBranch { branch, rev } => write!(
                f,
                "{FILE_NAME} of the default branch `{branch}` ({})",
                short(rev)
            ),
            StepsSource::DefaultBranchHasNone { branch, rev } => write!(
                f,
                "the default branch `{branch}` ({}), which has no {FILE_NAME}: no repository steps",
                short(rev)
            ),
            StepsSource::Unavailable { reason } => {
                write!(f, "nowhere ({reason}): no repository steps")
            }
        }
    }
}

/// The repository's post-build steps for this change, and their origin.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoSteps {
    /// The steps, in order.
    pub steps: Vec<PostBuildStep>,
    /// Where they were read from.
    pub source: StepsSource,
}

/// Reject a branch name git would not accept or could take for an option.
pub fn check_branch_name(flag: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("@{")
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(format!(
            "{flag} {name:?} is not a valid branch name; give a name such as `main`"
        ));
    }
    Ok(())
}

/// Name the change and pick the repository's post-build steps for it.
///
/// The branch is `opts.branch`, else a git URL's `?ref=`, else the checked-out
/// branch (unknown for a detached checkout such as `--rev`). The default
/// branch is `opts.default_branch`, else `origin/HEAD` of the repository
/// (the remote's `HEAD` for a git URL), else `main` or `master` when such a
/// branch exists, else the checked-out branch.
///
/// Steps come from the checkout on the default branch. Otherwise they come
/// from the default branch's committed `buildbot-nix.toml` (none when it
/// has none) when the repository holds that branch; when it does not, a
/// pull request gets no repository steps and another branch keeps the
/// checkout's. An invalid file on the default branch is an error.
pub async fn resolve_change(
    source: &Source,
    opts: &ChangeOptions,
) -> Result<(Change, RepoSteps), SourceError> {
    let repo = Repo::of(source).await;
    let checked_out = repo.checked_out_branch(source).await;
    let branch = opts.branch.clone().or_else(|| checked_out.clone());
    let default_branch = match &opts.default_branch {
        Some(b) => Some(b.clone()),
        None => repo.default_branch().await.or(checked_out),
    };
    let is_default_branch = opts.pull_request.is_none()
        && match (&branch, &default_branch) {
            (Some(b), Some(d)) => b == d,
            (None, None) => true,
            _ => false,
        };
    let change = Change {
        branch,
        default_branch,
        pull_request: opts.pull_request,
        fork: opts.fork,
        is_default_branch,
    };
    let checkout = || RepoSteps {
        steps: source.config.post_build.clone(),
        source: StepsSource::Checkout,
    };
    if change.is_default_branch {
        return Ok((change, checkout()));
    }
    let read = match &change.default_branch {
        None => Err("the default branch is not known; pass --default-branch".to_owned()),
        Some(d) => repo.read_config(d).await,
    };
    let steps = match read {
        Ok((rev, Some(text))) => {
            let d = change.default_branch.clone().unwrap_or_default();
            let file = format!("{d}:{}", repo.config_path().display());
            let config = RepoConfig::parse(&text, &file)?;
            RepoSteps {
                steps: config.post_build,
                source: StepsSource::DefaultBranch { branch: d, rev },
            }
        }
        Ok((rev, None)) => RepoSteps {
            steps: Vec::new(),
            source: StepsSource::DefaultBranchHasNone {
                branch: change.default_branch.clone().unwrap_or_default(),
                rev,
            },
        },
        Err(reason) if change.pull_request.is_some() => RepoSteps {
            steps: Vec::new(),
            source: StepsSource::Unavailable { reason },
        },
        Err(_) => checkout(),
    };
    Ok((change, steps))
}

/// The git repository behind a source, as far as branches go.
enum Repo {
    /// Not in git.
    None,
    /// A local repository holding every branch; the flake root is `prefix`
    /// inside `top`. `clone` when the checkout is a `--rev` clone of it.
    Local {
        top: PathBuf,
        prefix: PathBuf,
        clone: bool,
    },
    /// A clone of `url` in `top`.
    Url {
        url: String,
        reference: Option<String>,
        top: PathBuf,
        prefix: PathBuf,
    },
}

impl Repo {
    async fn of(source: &Source) -> Repo {
        match &source.origin {
            Origin::Dir => match work_tree(&source.repo_root).await {
                Some((top, prefix)) => Repo::Local {
                    top,
                    prefix,
                    clone: false,
                },
                None => Repo::None,
            },
            Origin::LocalClone { top, prefix } => Repo::Local {
                top: top.clone(),
                prefix: prefix.clone(),
                clone: true,
            },
            Origin::Url {
                url,
                reference,
                top,
                prefix,
            } => Repo::Url {
                url: url.clone(),
                reference: reference.clone(),
                top: top.clone(),
                prefix: prefix.clone(),
            },
        }
    }

    /// `buildbot-nix.toml` relative to the top of the repository.
    fn config_path(&self) -> PathBuf {
        match self {
            Repo::None => PathBuf::from(FILE_NAME),
            Repo::Local { prefix, .. } | Repo::Url { prefix, .. } => prefix.join(FILE_NAME),
        }
    }

    async fn checked_out_branch(&self, source: &Source) -> Option<String> {
        match self {
            Repo::None | Repo::Local { clone: true, .. } => None,
            Repo::Local { .. } => symbolic_ref(&source.repo_root, "HEAD").await,
            Repo::Url { reference, top, .. } => match reference {
                Some(r) => Some(r.strip_prefix("refs/heads/").unwrap_or(r).to_owned()),
                None => symbolic_ref(top, "HEAD").await,
            },
        }
    }

    async fn default_branch(&self) -> Option<String> {
        match self {
            Repo::None => None,
            Repo::Local { top, .. } => {
                if let Some(b) = origin_head(top).await {
                    return Some(b);
                }
                for name in ["main", "master"] {
                    if commit_of(top, &format!("refs/heads/{name}"))
                        .await
                        .is_some()
                    {
                        return Some(name.to_owned());
                    }
                }
                None
            }
            Repo::Url { url, top, .. } => {
                if let Some(b) = origin_head(top).await {
                    return Some(b);
                }
                let out = git(Some(top), &["ls-remote", "--symref", url, "HEAD"])
                    .await
                    .ok()?;
                out.lines().find_map(|l| {
                    let target = l.strip_prefix("ref:")?.split_whitespace().next()?;
                    target.strip_prefix("refs/heads/").map(str::to_owned)
                })
            }
        }
    }

    /// The default branch's commit and its `buildbot-nix.toml` (`None`
    /// when it has none), or why it cannot be read.
    async fn read_config(&self, branch: &str) -> Result<(String, Option<String>), String> {
        let (dir, commit) = match self {
            Repo::None => return Err("the flake is not in a git repository".to_owned()),
            Repo::Local { top, .. } => {
                let mut found = None;
                for r in [
                    format!("refs/heads/{branch}"),
                    format!("refs/remotes/origin/{branch}"),
                ] {
                    if let Some(c) = commit_of(top, &r).await {
                        found = Some(c);
                        break;
                    }
                }
                let commit = found.ok_or_else(|| {
                    format!(
                        "the default branch `{branch}` is not in the repository at {}",
                        top.display()
                    )
                })?;
                (top.as_path(), commit)
            }
            Repo::Url { url, top, .. } => {
                let want = format!("refs/heads/{branch}");
                git(Some(top), &["fetch", "--quiet", "--depth", "1", url, &want])
                    .await
                    .map_err(|e| format!("cannot fetch the default branch `{branch}`: {e}"))?;
                let commit = commit_of(top, "FETCH_HEAD")
                    .await
                    .ok_or_else(|| format!("cannot fetch the default branch `{branch}`"))?;
                (top.as_path(), commit)
            }
        };
        let object = format!("{commit}:{}", self.config_path().display());
        if git(Some(dir), &["cat-file", "-e", &object]).await.is_err() {
            return Ok((commit, None));
        }
        let text = git(Some(dir), &["cat-file", "blob", &object])
            .await
            .map_err(|e| e.to_string())?;
        Ok((commit, Some(text)))
    }
}

/// The short name `name` (a symbolic ref) points at, if it is one.
async fn symbolic_ref(dir: &Path, name: &str) -> Option<String> {
    let out = git(Some(dir), &["symbolic-ref", "--quiet", "--short", name])
        .await
        .ok()?;
    Some(out.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The branch `origin/HEAD` names, when set.
async fn origin_head(dir: &Path) -> Option<String> {
    let target = symbolic_ref(dir, "refs/remotes/origin/HEAD").await?;
    target.strip_prefix("origin/").map(str::to_owned)
}

/// The commit `reference` (a full ref name) resolves to.
async fn commit_of(dir: &Path, reference: &str) -> Option<String> {
    let spec = format!("{reference}^{{commit}}");
    let out = git(Some(dir), &["rev-parse", "--verify", "--quiet", &spec])
        .await
        .ok()?;
    Some(out.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_checked() {
        for ok in ["main", "release/1.2", "feature-x", "v1"] {
            assert!(check_branch_name("--branch", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a..b", "a b", "a:b", "x.lock", "/a", "a/", "a~1"] {
            let e = check_branch_name("--branch", bad).unwrap_err();
            assert!(e.starts_with("--branch "), "{e}");
        }
    }

    #[test]
    fn the_source_of_steps_says_where() {
        let s = StepsSource::DefaultBranch {
            branch: "main".into(),
            rev: "0123456789abcdef0123".into(),
        };
        assert_eq!(
            s.to_string(),
            "buildbot-nix.toml of the default branch `main` (0123456789ab)"
        );
        assert!(
            StepsSource::Unavailable { reason: "x".into() }
                .to_string()
                .contains("no repository steps")
        );
    }
}
