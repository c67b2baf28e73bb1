//! Source preparation with real git and real Nix: local directories in and out
//! of git, `git+file://` URLs with and without a pinned rev, `flake_dir` in a
//! subdirectory, the Nix 2.8 `lock_file` copy, and every bad-input case.

use std::path::Path;
use std::process::Command;

use kiln_engine::eval::{EvalRequest, EvaluatorChoice};
use kiln_engine::source::{SourceError, prepare};

use super::eval::{nix, run, write_flake};

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

fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

async fn job_names(dir: &Path, attribute: &str) -> Vec<String> {
    let nix = nix().await;
    let mut req = EvalRequest::new(dir, attribute);
    req.evaluator = EvaluatorChoice::Builtin;
    req.workers = 1;
    let (r, jobs) = run(&nix, &req).await;
    r.unwrap();
    jobs.into_keys().collect()
}

#[tokio::test]
async fn a_plain_directory_has_no_rev() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#,
    );
    let s = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.rev, None);
    assert_eq!(s.flake_dir, dir.path().canonicalize().unwrap());
    assert_eq!(s.config.attribute, "checks");
    assert_eq!(
        job_names(&s.flake_dir, &s.config.attribute).await,
        ["x86_64-linux.a"]
    );
}

#[tokio::test]
async fn flake_dir_in_a_subdirectory_of_a_git_repo() {
    let nix = nix().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    write_flake(
        &repo.path().join("nix"),
        r#"{ hydraJobs.t.sub = x "sub" "echo > $out"; }"#,
    );
    std::fs::write(
        repo.path().join("buildbot-nix.toml"),
        "flake_dir = \"nix\"\nattribute = \"hydraJobs\"\n",
    )
    .unwrap();
    let head = commit_all(repo.path(), "one");
    let s = prepare(&nix, repo.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.rev.as_deref(), Some(head.as_str()));
    assert_eq!(s.flake_dir, repo.path().canonicalize().unwrap().join("nix"));
    assert_eq!(s.config.attribute, "hydraJobs");
    assert_eq!(job_names(&s.flake_dir, "hydraJobs").await, ["t.sub"]);
    let req = EvalRequest::for_source(&s, None);
    assert_eq!(
        (req.flake_dir.as_path(), req.attribute.as_str()),
        (s.flake_dir.as_path(), "hydraJobs")
    );
    assert_eq!(
        EvalRequest::for_source(&s, Some("checks")).attribute,
        "checks"
    );
}

#[tokio::test]
async fn git_urls_and_pinned_revs() {
    let nix = nix().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    write_flake(
        repo.path(),
        r#"{ checks.x86_64-linux.first = x "first" "echo > $out"; }"#,
    );
    let first = commit_all(repo.path(), "first");
    write_flake(
        repo.path(),
        r#"{ checks.x86_64-linux.second = x "second" "echo > $out"; }"#,
    );
    let second = commit_all(repo.path(), "second");
    let url = format!("git+file://{}", repo.path().display());

    let head = prepare(&nix, &url, None).await.unwrap();
    assert_eq!(head.rev.as_deref(), Some(second.as_str()));
    assert_ne!(head.repo_root, repo.path());
    assert_eq!(
        job_names(&head.flake_dir, "checks").await,
        ["x86_64-linux.second"]
    );

    let pinned = prepare(&nix, &url, Some(&first)).await.unwrap();
    assert_eq!(pinned.rev.as_deref(), Some(first.as_str()));
    assert_eq!(
        job_names(&pinned.flake_dir, "checks").await,
        ["x86_64-linux.first"]
    );

    // The same through the URL's own `rev`, and --rev on a local directory.
    let query = prepare(&nix, &format!("{url}?rev={first}"), None)
        .await
        .unwrap();
    assert_eq!(query.rev.as_deref(), Some(first.as_str()));
    let local = prepare(&nix, repo.path().to_str().unwrap(), Some(&first))
        .await
        .unwrap();
    assert_eq!(local.rev.as_deref(), Some(first.as_str()));
    assert_eq!(
        job_names(&local.flake_dir, "checks").await,
        ["x86_64-linux.first"]
    );

    // A clone disappears with its Source.
    let root = pinned.repo_root.clone();
    drop(pinned);
    assert!(!root.exists());
}

/// `nix flake lock` of `flake` with input `dep` at its newest revision.
async fn lock_newest(flake: &Path) {
    let nix = nix().await;
    let mut cmd = nix.command("nix");
    cmd.arg("flake")
        .arg("lock")
        .arg(flake)
        .args(["--update-input", "dep"]);
    kiln_nix::run_output(&mut cmd, "nix flake lock")
        .await
        .unwrap();
}

#[tokio::test]
async fn another_lock_file_is_evaluated_from_a_copy_on_nix_2_8() {
    let nix = nix().await;
    // An input with two revisions: the lock file decides which one is used.
    let dep = tempfile::tempdir().unwrap();
    git(dep.path(), &["init", "-q"]);
    std::fs::write(dep.path().join("value"), "one").unwrap();
    let one = commit_all(dep.path(), "one");
    let dep_url = format!("git+file://{}", dep.path().display());

    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    let ci = repo.path().join("ci");
    std::fs::create_dir_all(&ci).unwrap();
    std::fs::write(
        ci.join("flake.nix"),
        format!(
            r#"{{
  inputs.dep = {{ url = "{dep_url}"; flake = false; }};
  outputs = {{ self, dep }}: let
    v = builtins.readFile "${{dep}}/value";
  in {{
    checks.x86_64-linux.${{v}} = derivation {{
      name = v; system = "x86_64-linux"; builder = "/bin/sh";
      salt = "{salt}"; args = [ "-c" "echo > $out" ];
    }};
  }};
}}
"#,
            salt = super::eval::salt()
        ),
    )
    .unwrap();
    git(repo.path(), &["add", "ci/flake.nix"]);
    lock_newest(&ci).await;
    let first_lock = std::fs::read_to_string(ci.join("flake.lock")).unwrap();
    std::fs::write(dep.path().join("value"), "two").unwrap();
    let two = commit_all(dep.path(), "two");
    lock_newest(&ci).await;
    std::fs::rename(ci.join("flake.lock"), ci.join("ci.lock")).unwrap();
    std::fs::write(ci.join("flake.lock"), first_lock).unwrap();
    let lock = std::fs::read_to_string(ci.join("ci.lock")).unwrap();
    assert!(lock.contains(&two) && !lock.contains(&one), "{lock}");
    assert!(
        std::fs::read_to_string(ci.join("flake.lock"))
            .unwrap()
            .contains(&one)
    );
    std::fs::write(
        repo.path().join("buildbot-nix.toml"),
        "flake_dir = \"ci\"\n",
    )
    .unwrap();
    commit_all(repo.path(), "one");

    // The flake's own flake.lock: the first revision.
    let s = prepare(&nix, repo.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.reference_lock_file, None);
    assert_eq!(
        job_names(&s.flake_dir, "checks").await,
        ["x86_64-linux.one"]
    );

    // `lock_file = "ci.lock"`: the second.
    std::fs::write(
        repo.path().join("buildbot-nix.toml"),
        "flake_dir = \"ci\"\nlock_file = \"ci.lock\"\n",
    )
    .unwrap();
    commit_all(repo.path(), "two");
    std::fs::write(repo.path().join("untracked"), "x").unwrap();
    let s = prepare(&nix, repo.path().to_str().unwrap(), None)
        .await
        .unwrap();
    if nix.version().has_reference_lock_file() {
        assert_eq!(
            s.reference_lock_file.as_deref(),
            Some(
                repo.path()
                    .canonicalize()
                    .unwrap()
                    .join("ci/ci.lock")
                    .as_path()
            )
        );
        let mut req = EvalRequest::for_source(&s, None);
        req.evaluator = EvaluatorChoice::Builtin;
        req.workers = 1;
        let (r, jobs) = run(&nix, &req).await;
        r.unwrap();
        assert_eq!(jobs.into_keys().collect::<Vec<_>>(), ["x86_64-linux.two"]);
        return;
    }
    assert_eq!(
        job_names(&s.flake_dir, "checks").await,
        ["x86_64-linux.two"]
    );
    assert!(!s.flake_dir.starts_with(repo.path()));
    assert!(s.flake_dir.ends_with("ci"));
    assert_eq!(
        std::fs::read_to_string(s.flake_dir.join("flake.lock")).unwrap(),
        lock
    );
    let copy_root = s.flake_dir.parent().unwrap();
    assert!(copy_root.join("buildbot-nix.toml").exists());
    assert!(
        !copy_root.join("untracked").exists(),
        "only tracked files are copied"
    );
    assert!(!copy_root.join(".git").exists());
}

#[tokio::test]
async fn bad_inputs_are_one_line_errors() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("absent");
    let e = prepare(&nix, missing.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::FlakeNotFound { .. }), "{e}");

    let e = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::FlakeNotFound { .. }), "{e}");
    assert!(e.to_string().contains("no flake.nix"), "{e}");

    write_flake(dir.path(), "{ }");
    std::fs::write(
        dir.path().join("buildbot-nix.toml"),
        "atribute = \"checks\"\n",
    )
    .unwrap();
    let e = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Config(_)), "{e}");
    assert!(e.to_string().contains("atribute"), "{e}");

    std::fs::write(
        dir.path().join("buildbot-nix.toml"),
        "lock_file = \"other.lock\"\n",
    )
    .unwrap();
    let e = prepare(&nix, dir.path().to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::LockFileMissing { .. }), "{e}");

    let url = format!("git+file://{}", dir.path().join("no-repo").display());
    let e = prepare(&nix, &url, None).await.unwrap_err();
    assert!(matches!(e, SourceError::Git { .. }), "{e}");
    assert_eq!(e.to_string().lines().count(), 1, "{e}");

    std::fs::remove_file(dir.path().join("buildbot-nix.toml")).unwrap();
    let e = prepare(&nix, dir.path().to_str().unwrap(), Some("deadbeef"))
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::FlakeNotFound { .. }), "{e}");
    assert!(e.to_string().contains("needs a git repository"), "{e}");
    git(dir.path(), &["init", "-q"]);
    commit_all(dir.path(), "one");
    let e = prepare(&nix, dir.path().to_str().unwrap(), Some("deadbeef"))
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Git { .. }), "{e}");
    assert!(e.to_string().contains("deadbeef"), "{e}");
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
}

#[tokio::test]
async fn rev_of_a_flake_in_a_subdirectory_of_a_git_repo() {
    let nix = nix().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    let sub = repo.path().join("sub");
    write_flake(
        &sub,
        r#"{ checks.x86_64-linux.first = x "first" "echo > $out"; }"#,
    );
    let first = commit_all(repo.path(), "first");
    write_flake(
        &sub,
        r#"{ checks.x86_64-linux.second = x "second" "echo > $out"; }"#,
    );
    let second = commit_all(repo.path(), "second");
    for (rev, want, name) in [
        ("HEAD", &second, "x86_64-linux.second"),
        (first.as_str(), &first, "x86_64-linux.first"),
    ] {
        let s = prepare(&nix, sub.to_str().unwrap(), Some(rev))
            .await
            .unwrap();
        assert_eq!(s.rev.as_deref(), Some(want.as_str()));
        assert!(!s.flake_dir.starts_with(repo.path()));
        assert!(s.flake_dir.ends_with("sub"), "{}", s.flake_dir.display());
        assert_eq!(job_names(&s.flake_dir, "checks").await, [name]);
    }
}

#[tokio::test]
async fn a_dirty_work_tree_has_no_rev() {
    let nix = nix().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    write_flake(
        repo.path(),
        r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#,
    );
    let head = commit_all(repo.path(), "one");
    // Untracked files do not make the flake dirty.
    std::fs::write(repo.path().join("untracked"), "x").unwrap();
    let s = prepare(&nix, repo.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.rev.as_deref(), Some(head.as_str()));
    // A modified tracked file does.
    std::fs::write(
        repo.path().join("flake.nix"),
        "{ outputs = { self }: { }; }",
    )
    .unwrap();
    let s = prepare(&nix, repo.path().to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.rev, None);
    // So does a staged one, and in a subdirectory too.
    std::fs::create_dir(repo.path().join("sub")).unwrap();
    write_flake(&repo.path().join("sub"), "{ }");
    git(repo.path(), &["checkout", "--", "flake.nix"]);
    git(repo.path(), &["add", "sub/flake.nix"]);
    let s = prepare(&nix, repo.path().join("sub").to_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.rev, None);
}

#[tokio::test]
async fn the_dir_of_a_git_url_selects_the_flake() {
    let nix = nix().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    write_flake(
        repo.path(),
        r#"{ checks.x86_64-linux.top = x "top" "echo > $out"; }"#,
    );
    write_flake(
        &repo.path().join("sub"),
        r#"{ checks.x86_64-linux.sub = x "sub" "echo > $out"; }"#,
    );
    let head = commit_all(repo.path(), "one");
    let url = format!("git+file://{}", repo.path().display());

    let s = prepare(&nix, &format!("{url}?dir=sub"), None)
        .await
        .unwrap();
    assert_eq!(s.rev.as_deref(), Some(head.as_str()));
    assert!(s.flake_dir.ends_with("sub"));
    assert_eq!(
        job_names(&s.flake_dir, "checks").await,
        ["x86_64-linux.sub"]
    );
    let s = prepare(&nix, &format!("{url}?rev={head}&dir=sub"), None)
        .await
        .unwrap();
    assert_eq!(
        job_names(&s.flake_dir, "checks").await,
        ["x86_64-linux.sub"]
    );

    for bad in ["../x", "/etc"] {
        let e = prepare(&nix, &format!("{url}?dir={bad}"), None)
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::FlakeNotFound { .. }), "{e}");
        assert!(e.to_string().contains("relative directory"), "{e}");
    }

    // Messages name the URL and rev, not a temporary clone.
    let missing = format!("{url}?dir=absent");
    let e = prepare(&nix, &missing, Some(&head)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&missing) && text.contains(&head), "{text}");
    assert!(!text.contains("kiln-src-"), "{text}");
    std::fs::create_dir(repo.path().join("empty")).unwrap();
    std::fs::write(repo.path().join("empty/README"), "").unwrap();
    commit_all(repo.path(), "two");
    let e = prepare(&nix, &format!("{url}?dir=empty"), None)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("no flake.nix in `empty` of"), "{text}");
    assert!(!text.contains("kiln-src-"), "{text}");
    let e = prepare(&nix, &url, Some("deadbeef")).await.unwrap_err();
    assert!(!e.to_string().contains("kiln-src-"), "{e}");
}
