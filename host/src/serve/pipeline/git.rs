//! Git for the pipeline: one bare mirror per project, fetched with the
//! forge plugin's clone credentials; a pull request's base merged into its
//! head without a work tree (`git merge-tree --write-tree`, then
//! `commit-tree` with both parents, as `merge --no-ff` would); trees and
//! messages; `ls-remote` for reconciliation.
//!
//! Credentials reach git through a credential helper that reads them from
//! the child's environment: never in a URL, an argument or a message.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// Credentials for one fetch.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Password or token.
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
#[error("git {command}: {message}")]
pub struct GitError {
    /// The subcommand and its arguments (no credentials).
    pub command: String,
    /// Git's stderr, trimmed.
    pub message: String,
    /// Exit code (1 for a merge conflict).
    pub code: Option<i32>,
}

/// The bare mirror of a project: `<data>/mirrors/<forge>/<name>.git`.
pub fn mirror_path(data_dir: &Path, forge: &str, project: &str) -> PathBuf {
    let safe: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.replace("..", "__");
    data_dir
        .join("mirrors")
        .join(forge)
        .join(format!("{}.git", safe.trim_matches('/')))
}

async fn git(
    dir: Option<&Path>,
    args: &[&str],
    creds: Option<&Credentials>,
) -> Result<String, GitError> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    // No prompt, no system or user configuration surprises.
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ASKPASS", "true")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    if let Some(c) = creds.filter(|c| c.password.is_some()) {
        cmd.arg("-c").arg("credential.helper=").arg("-c").arg(
            "credential.helper=!f() { test \"$1\" = get || exit 0; echo \"username=$KILN_GIT_USERNAME\"; echo \"password=$KILN_GIT_PASSWORD\"; }; f",
        );
        cmd.env(
            "KILN_GIT_USERNAME",
            c.username.as_deref().unwrap_or("x-access-token"),
        )
        .env("KILN_GIT_PASSWORD", c.password.as_deref().unwrap_or(""));
    }
    cmd.args(args).kill_on_drop(true);
    let shown = args.join(" ");
    let out = cmd.output().await.map_err(|e| GitError {
        command: shown.clone(),
        message: format!("cannot run git: {e}"),
        code: None,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(GitError {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            code: out.status.code(),
        })
    }
}

/// Create the bare mirror at `path` unless it exists.
pub async fn ensure_mirror(path: &Path) -> Result<(), GitError> {
    if path.join("HEAD").is_file() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| GitError {
            command: "init".into(),
            message: format!("cannot create {}: {e}", parent.display()),
            code: None,
        })?;
    }
    let p = path.to_string_lossy();
    git(None, &["init", "--quiet", "--bare", &p], None).await?;
    Ok(())
}

/// Fetch every branch of `url` into the mirror's `refs/heads/*`.
pub async fn fetch_branches(
    mirror: &Path,
    url: &str,
    creds: Option<&Credentials>,
) -> Result<(), GitError> {
    git(
        Some(mirror),
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--force",
            url,
            "+refs/heads/*:refs/heads/*",
        ],
        creds,
    )
    .await
    .map(|_| ())
}

/// Make `rev` present in the mirror under `local_ref`: fetched by id from
/// `url`, or with `branch` when the server refuses a bare id.
pub async fn fetch_rev(
    mirror: &Path,
    url: &str,
    rev: &str,
    branch: Option<&str>,
    local_ref: &str,
    creds: Option<&Credentials>,
) -> Result<(), GitError> {
    if !has_commit(mirror, rev).await {
        let by_id = git(
            Some(mirror),
            &["fetch", "--quiet", "--no-tags", url, rev],
            creds,
        )
        .await;
        if let (Err(e), Some(b)) = (&by_id, branch) {
            tracing::debug!("fetching {rev} by id failed ({e}); fetching branch {b}");
            // A full ref (a Gerrit change's `refs/changes/…`) is fetched as
            // it is; a branch name lives under `refs/heads/`.
            let spec = if b.starts_with("refs/") {
                format!("+{b}:{local_ref}")
            } else {
                format!("+refs/heads/{b}:{local_ref}")
            };
            git(
                Some(mirror),
                &["fetch", "--quiet", "--no-tags", url, &spec],
                creds,
            )
            .await?;
        } else {
            by_id?;
        }
    }
    if !has_commit(mirror, rev).await {
        return Err(GitError {
            command: format!("fetch {url} {rev}"),
            message: format!("commit {rev} is not on the remote (force-pushed away?)"),
            code: None,
        });
    }
    update_ref(mirror, local_ref, rev).await
}

/// Point `name` at `rev`.
pub async fn update_ref(mirror: &Path, name: &str, rev: &str) -> Result<(), GitError> {
    git(Some(mirror), &["update-ref", name, rev], None)
        .await
        .map(|_| ())
}

/// Whether the commit `rev` is in the repository.
pub async fn has_commit(repo: &Path, rev: &str) -> bool {
    let obj = format!("{rev}^{{commit}}");
    git(Some(repo), &["cat-file", "-e", &obj], None)
        .await
        .is_ok()
}

/// The commit `what` (a ref or id) names.
pub async fn resolve(repo: &Path, what: &str) -> Result<String, GitError> {
    let obj = format!("{what}^{{commit}}");
    git(
        Some(repo),
        &["rev-parse", "--verify", "--quiet", &obj],
        None,
    )
    .await
}

/// The tree of commit `rev`.
pub async fn tree_of(repo: &Path, rev: &str) -> Result<String, GitError> {
    let obj = format!("{rev}^{{tree}}");
    git(Some(repo), &["rev-parse", "--verify", &obj], None).await
}

/// The full message of commit `rev`.
pub async fn message_of(repo: &Path, rev: &str) -> Result<String, GitError> {
    git(Some(repo), &["log", "-1", "--format=%B", rev, "--"], None).await
}

/// The text of `path` at `rev`, `None` when the file is absent.
pub async fn show_file(repo: &Path, rev: &str, path: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{rev}:{path}");
    if git(Some(repo), &["cat-file", "-e", &spec], None)
        .await
        .is_err()
    {
        return Ok(None);
    }
    git(Some(repo), &["cat-file", "blob", &spec], None)
        .await
        .map(Some)
}

/// How merging a pull request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The merge commit (base first parent, head second).
    Commit(String),
    /// The head does not merge cleanly into the base.
    Conflict(String),
}

/// Merge `head` into `base` as `git merge --no-ff` would, without a work
/// tree, and keep the result under `local_ref`. The commit is deterministic
/// (fixed author and date), so merging the same pair again gives the same
/// id.
pub async fn merge(
    mirror: &Path,
    base: &str,
    head: &str,
    message: &str,
    local_ref: &str,
) -> Result<Merged, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(mirror)
        .args([
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            base,
            head,
        ])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .await
        .map_err(|e| GitError {
            command: "merge-tree".into(),
            message: format!("cannot run git: {e}"),
            code: None,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let tree = lines.next().unwrap_or_default().to_owned();
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            let files: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
            return Ok(Merged::Conflict(format!(
                "conflicts in {}",
                files.join(", ")
            )));
        }
        code => {
            return Err(GitError {
                command: format!("merge-tree --write-tree {base} {head}"),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                code,
            });
        }
    }
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(mirror)
        .args(["commit-tree", &tree, "-p", base, "-p", head, "-m", message])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Kiln")
        .env("GIT_AUTHOR_EMAIL", "kiln@localhost")
        .env("GIT_COMMITTER_NAME", "Kiln")
        .env("GIT_COMMITTER_EMAIL", "kiln@localhost")
        .env("GIT_AUTHOR_DATE", "@0 +0000")
        .env("GIT_COMMITTER_DATE", "@0 +0000");
    let out = cmd.output().await.map_err(|e| GitError {
        command: "commit-tree".into(),
        message: format!("cannot run git: {e}"),
        code: None,
    })?;
    if !out.status.success() {
        return Err(GitError {
            command: format!("commit-tree {tree} -p {base} -p {head}"),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            code: out.status.code(),
        });
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    update_ref(mirror, local_ref, &commit).await?;
    Ok(Merged::Commit(commit))
}

/// The commit of each of `refs` on `url` (those that exist).
pub async fn ls_remote(
    url: &str,
    refs: &[String],
    creds: Option<&Credentials>,
) -> Result<Vec<(String, String)>, GitError> {
    let mut args = vec!["ls-remote", "--quiet", url];
    args.extend(refs.iter().map(String::as_str));
    let out = git(None, &args, creds).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(rev, name)| (rev.to_owned(), name.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A fast-forwardable pull request still gets a merge commit whose tree
    /// is the head's; a conflicting one is reported, not merged.
    #[tokio::test]
    async fn merges_like_no_ff_and_reports_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        run(&work, &["init", "--quiet", "-b", "main"]).await;
        std::fs::write(work.join("a"), "1\n").unwrap();
        run(&work, &["add", "a"]).await;
        run(&work, &["commit", "--quiet", "-m", "one"]).await;
        run(&work, &["checkout", "--quiet", "-b", "feature"]).await;
        std::fs::write(work.join("b"), "2\n").unwrap();
        run(&work, &["add", "b"]).await;
        run(&work, &["commit", "--quiet", "-m", "two [skip ci]"]).await;
        let head = run(&work, &["rev-parse", "HEAD"]).await;

        let mirror = mirror_path(tmp.path(), "gh", "o/r");
        ensure_mirror(&mirror).await.unwrap();
        ensure_mirror(&mirror).await.unwrap();
        let url = format!("file://{}", work.display());
        fetch_branches(&mirror, &url, None).await.unwrap();
        fetch_rev(
            &mirror,
            &url,
            &head,
            Some("feature"),
            "refs/kiln/pr/1",
            None,
        )
        .await
        .unwrap();
        let base = resolve(&mirror, "refs/heads/main").await.unwrap();
        let Merged::Commit(m) = merge(&mirror, &base, &head, "merge", "refs/kiln/merge/1")
            .await
            .unwrap()
        else {
            panic!("conflict")
        };
        assert_ne!(m, head, "--no-ff makes a merge commit");
        assert_eq!(
            tree_of(&mirror, &m).await.unwrap(),
            tree_of(&mirror, &head).await.unwrap()
        );
        let again = merge(&mirror, &base, &head, "merge", "refs/kiln/merge/1")
            .await
            .unwrap();
        assert_eq!(again, Merged::Commit(m.clone()), "deterministic");
        assert!(
            message_of(&mirror, &head)
                .await
                .unwrap()
                .contains("[skip ci]")
        );
        assert_eq!(
            show_file(&mirror, &head, "b").await.unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(show_file(&mirror, &head, "zzz").await.unwrap(), None);

        // Conflict: both change `a`.
        run(&work, &["checkout", "--quiet", "main"]).await;
        std::fs::write(work.join("a"), "main\n").unwrap();
        run(&work, &["commit", "--quiet", "-am", "main side"]).await;
        run(&work, &["checkout", "--quiet", "feature"]).await;
        std::fs::write(work.join("a"), "feature\n").unwrap();
        run(&work, &["commit", "--quiet", "-am", "feature side"]).await;
        fetch_branches(&mirror, &url, None).await.unwrap();
        let base = resolve(&mirror, "refs/heads/main").await.unwrap();
        let head = resolve(&mirror, "refs/heads/feature").await.unwrap();
        let merged = merge(&mirror, &base, &head, "merge", "refs/kiln/merge/1")
            .await
            .unwrap();
        assert!(
            matches!(merged, Merged::Conflict(ref m) if m.contains('a')),
            "{merged:?}"
        );

        let heads = ls_remote(&url, &["refs/heads/main".into()], None)
            .await
            .unwrap();
        assert_eq!(heads, vec![(base, "refs/heads/main".to_owned())]);
        let missing = fetch_rev(&mirror, &url, &"0".repeat(40), None, "refs/x", None).await;
        assert!(missing.is_err());
    }
}
