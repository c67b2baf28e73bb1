//! The change a run builds and the default-branch rule for post-build
//! steps, with real git: a checked-out branch, a `--rev` clone, a
//! `git+file://` URL with `?ref=`, a directory outside git, and an invalid
//! `buildbot-nix.toml` on the default branch.

use std::path::Path;
use std::process::Command;

use kiln_engine::source::{ChangeOptions, StepsSource, prepare, resolve_change};

use super::eval::{nix, write_flake};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.org"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const MAIN_STEPS: &str = "[[post_build]]\nplugin = \"a\"\n";
const PR_STEPS: &str = "[[post_build]]\nplugin = \"a\"\n\n[[post_build]]\nplugin = \"b\"\n";

/// A repository whose `main` selects step `a` and whose branch `pr` adds
/// `b`; `pr` is checked out. Returns (main's rev, pr's rev).
fn repo(dir: &Path) -> (String, String) {
    write_flake(dir, r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#);
    std::fs::write(dir.join("buildbot-nix.toml"), MAIN_STEPS).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "main"]);
    let main = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "-q", "-b", "pr"]);
    std::fs::write(dir.join("buildbot-nix.toml"), PR_STEPS).unwrap();
    git(dir, &["commit", "-q", "-am", "pr"]);
    let pr = git(dir, &["rev-parse", "HEAD"]);
    (main, pr)
}

fn plugins(steps: &kiln_engine::source::RepoSteps) -> Vec<&str> {
    steps.steps.iter().map(|s| s.plugin.as_str()).collect()
}

#[tokio::test]
async fn a_pull_request_reads_the_default_branch_steps() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    let (main, _) = repo(dir.path());
    let source = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap();
    // The checkout's own file is still the one evaluated.
    assert_eq!(source.config.post_build.len(), 2);
    let opts = ChangeOptions {
        pull_request: Some(5),
        ..ChangeOptions::default()
    };
    let (change, steps) = resolve_change(&source, &opts).await.unwrap();
    assert_eq!(change.branch.as_deref(), Some("pr"));
    assert_eq!(change.default_branch.as_deref(), Some("main"));
    assert_eq!(change.pull_request, Some(5));
    assert!(!change.is_default_branch);
    assert_eq!(plugins(&steps), ["a"]);
    assert_eq!(
        steps.source,
        StepsSource::DefaultBranch {
            branch: "main".into(),
            rev: main.clone()
        }
    );

    // A push to `pr` follows the same rule; naming `pr` the default
    // branch uses the checkout.
    let (change, steps) = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap();
    assert!(!change.is_default_branch);
    assert_eq!(plugins(&steps), ["a"]);
    let opts = ChangeOptions {
        default_branch: Some("pr".into()),
        ..ChangeOptions::default()
    };
    let (change, steps) = resolve_change(&source, &opts).await.unwrap();
    assert!(change.is_default_branch);
    assert_eq!(steps.source, StepsSource::Checkout);
    assert_eq!(plugins(&steps), ["a", "b"]);

    // A default branch the repository lacks: a pull request gets no
    // repository steps, a branch push keeps its own.
    let opts = ChangeOptions {
        default_branch: Some("trunk".into()),
        pull_request: Some(5),
        ..ChangeOptions::default()
    };
    let (_, steps) = resolve_change(&source, &opts).await.unwrap();
    assert!(steps.steps.is_empty());
    assert!(
        matches!(&steps.source, StepsSource::Unavailable { reason } if reason.contains("`trunk`")),
        "{:?}",
        steps.source
    );
    let opts = ChangeOptions {
        default_branch: Some("trunk".into()),
        ..ChangeOptions::default()
    };
    let (_, steps) = resolve_change(&source, &opts).await.unwrap();
    assert_eq!(steps.source, StepsSource::Checkout);
}

#[tokio::test]
async fn a_rev_clone_and_a_url_with_ref_know_their_default_branch() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    let (main, pr) = repo(dir.path());
    git(dir.path(), &["checkout", "-q", "main"]);

    // `--rev`: detached, so the branch is unknown and not the default.
    let source = prepare(&nix, dir.path().to_str().unwrap(), Some(&pr))
        .await
        .unwrap();
    let (change, steps) = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap();
    assert_eq!(change.branch, None);
    assert_eq!(change.default_branch.as_deref(), Some("main"));
    assert!(!change.is_default_branch);
    assert_eq!(plugins(&steps), ["a"]);

    // A URL: `?ref=` names the branch, the remote's HEAD the default one,
    // whose file is fetched.
    let url = format!("git+file://{}?ref=pr", dir.path().display());
    let source = prepare(&nix, &url, None).await.unwrap();
    let (change, steps) = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap();
    assert_eq!(change.branch.as_deref(), Some("pr"));
    assert_eq!(change.default_branch.as_deref(), Some("main"));
    assert_eq!(plugins(&steps), ["a"]);
    assert_eq!(
        steps.source,
        StepsSource::DefaultBranch {
            branch: "main".into(),
            rev: main
        }
    );
    // The default branch itself, by URL: its own file.
    let url = format!("git+file://{}", dir.path().display());
    let source = prepare(&nix, &url, None).await.unwrap();
    let (change, steps) = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap();
    assert!(change.is_default_branch);
    assert_eq!(change.branch.as_deref(), Some("main"));
    assert_eq!(steps.source, StepsSource::Checkout);
}

#[tokio::test]
async fn outside_git_the_checkout_counts_as_the_default_branch() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#,
    );
    std::fs::write(dir.path().join("buildbot-nix.toml"), MAIN_STEPS).unwrap();
    let source = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap();
    let (change, steps) = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap();
    assert_eq!((change.branch, change.default_branch), (None, None));
    assert!(change.is_default_branch);
    assert_eq!(plugins(&steps), ["a"]);
    let opts = ChangeOptions {
        pull_request: Some(1),
        ..ChangeOptions::default()
    };
    let (change, steps) = resolve_change(&source, &opts).await.unwrap();
    assert!(!change.is_default_branch);
    assert!(steps.steps.is_empty(), "a pull request's own steps ran");
}

#[tokio::test]
async fn an_invalid_file_on_the_default_branch_is_an_error() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path());
    git(dir.path(), &["checkout", "-q", "main"]);
    std::fs::write(dir.path().join("buildbot-nix.toml"), "bogus = 1\n").unwrap();
    git(dir.path(), &["commit", "-q", "-am", "break"]);
    git(dir.path(), &["checkout", "-q", "pr"]);
    let source = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap();
    let e = resolve_change(&source, &ChangeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("main:buildbot-nix.toml:1:1:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}
