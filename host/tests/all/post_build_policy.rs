//! Which post-build steps `kiln run` runs for a change, with real git and
//! real Nix: a pull request runs the default branch's `[[post_build]]`
//! steps, not the ones its own `buildbot-nix.toml` adds; a pull request from
//! a fork skips a step that uses a secret (saying why and how to opt in)
//! until the operator opts the project in, while steps without secrets still
//! run; `--default-branch` and a project's `default_branch` in `kiln.toml`
//! choose the default branch; the operator's default steps from `kiln.toml`
//! run for a project without a `buildbot-nix.toml`; a malformed default step
//! is an error that names the file and line.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{report, salt, sh};

/// `git` in `dir` with a fixed identity and `main` as the first branch.
fn git(dir: &Path, args: &[&str]) -> String {
    sh(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.org"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args))
}

/// A flake with one salted check in `dir`.
fn write_flake(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    checks.x86_64-linux.policy = derivation {{
      name = "policy"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo {} > $out" ];
    }};
  }};
}}
"#,
            salt()
        ),
    )
    .unwrap();
}

/// A git repository whose `main` has the flake and `main_steps` as its
/// buildbot-nix.toml, then a checked-out branch `pr` whose buildbot-nix.toml
/// is `pr_steps`.
fn repo_with_branches(dir: &Path, main_steps: &str, pr_steps: &str) {
    write_flake(dir);
    std::fs::write(dir.join("buildbot-nix.toml"), main_steps).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "main"]);
    git(dir, &["checkout", "-q", "-b", "pr"]);
    std::fs::write(dir.join("buildbot-nix.toml"), pr_steps).unwrap();
    git(dir, &["commit", "-q", "--allow-empty", "-am", "pr"]);
}

/// `kiln run DIR --json --config CONFIG ARGS…` for x86_64-linux, with logs,
/// caches and GC roots under `work`.
fn kiln_run(dir: &Path, config: &Path, work: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("run")
        .arg(dir)
        .args(["--json", "--systems", "x86_64-linux", "--log-dir"])
        .arg(work.join("logs"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("XDG_CACHE_HOME", work.join("cache"))
        .env("KILN_GC_ROOT_DIR", work.join("gcroots"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("kiln runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The (step, status, message) triples of the report's only job.
fn steps(r: &serde_json::Value) -> Vec<(String, String, String)> {
    let jobs = r["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{r}");
    jobs[0]["post_build"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (f("step"), f("status"), f("message"))
        })
        .collect()
}

fn names(steps: &[(String, String, String)]) -> Vec<&str> {
    steps.iter().map(|(n, _, _)| n.as_str()).collect()
}

const GRANT_GCROOT: &str = "[grants.gcroot]\nstore = [\"add-gc-root\"]\n";

#[test]
fn a_pull_request_runs_the_default_branch_steps_not_its_own() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    repo_with_branches(
        &dir,
        "[[post_build]]\nplugin = \"gcroot\"\non_cached = true\n",
        "[[post_build]]\nplugin = \"gcroot\"\non_cached = true\n\n[[post_build]]\nplugin = \"outputs\"\non_cached = true\n",
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "{GRANT_GCROOT}[grants.outputs]\ndirectories = {{ outputs = {:?} }}\n",
            work.path().join("outputs").display().to_string()
        ),
    )
    .unwrap();

    let out = kiln_run(&dir, &config, work.path(), &["--pull-request", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    let ran = steps(&r);
    assert_eq!(names(&ran), ["gcroot"], "{r}");
    // The step ran, and was told it builds pull request #1.
    assert_eq!(ran[0].1, "succeeded", "{r}");
    assert_eq!(ran[0].2, "skipped: pull request #1", "{r}");
    let main_rev = git(&dir, &["rev-parse", "main"]);
    let from = format!(
        "repository steps from buildbot-nix.toml of the default branch `main` ({})",
        &main_rev[..12]
    );
    assert!(stderr(&out).contains(&from), "{}", stderr(&out));
    let log = std::fs::read_to_string(r["jobs"][0]["log_path"].as_str().unwrap()).unwrap();
    assert!(
        log.contains(&format!(
            "[kiln] post-build steps: `gcroot` (buildbot-nix.toml); {from}"
        )),
        "{log}"
    );
    assert!(
        !work.path().join("outputs").exists(),
        "the pull request's own step ran"
    );

    // A push to the branch `pr` is not the default branch either.
    let out = kiln_run(&dir, &config, work.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&steps(&report(&out))), ["gcroot"]);

    // Naming `pr` the default branch makes its own file the one to use.
    let out = kiln_run(&dir, &config, work.path(), &["--default-branch", "pr"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&steps(&report(&out))), ["gcroot", "outputs"]);

    // So does kiln.toml's `default_branch` for the project…
    let grants = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{grants}\n[projects.{:?}]\ndefault_branch = \"pr\"\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let out = kiln_run(&dir, &config, work.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&steps(&report(&out))), ["gcroot", "outputs"]);
    // …and `--default-branch` overrides it.
    let out = kiln_run(&dir, &config, work.path(), &["--default-branch", "main"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&steps(&report(&out))), ["gcroot"]);
}

#[test]
fn a_default_branch_without_buildbot_nix_toml_runs_no_repository_steps() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    write_flake(&dir);
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "main"]);
    git(&dir, &["checkout", "-q", "-b", "pr"]);
    std::fs::write(
        dir.join("buildbot-nix.toml"),
        "[[post_build]]\nplugin = \"gcroot\"\n",
    )
    .unwrap();
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "pr"]);
    let config = work.path().join("kiln.toml");
    std::fs::write(&config, GRANT_GCROOT).unwrap();
    let out = kiln_run(&dir, &config, work.path(), &["--pull-request", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(steps(&report(&out)).is_empty());
    assert!(
        stderr(&out).contains("which has no buildbot-nix.toml: no repository steps"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fork_pull_request_skips_secret_steps_unless_the_project_opts_in() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let steps_toml = "[[post_build]]\nplugin = \"gcroot\"\non_cached = true\n\n[[post_build]]\nplugin = \"sign\"\non_cached = true\n";
    repo_with_branches(&dir, steps_toml, steps_toml);
    let key = sh(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "key",
        "generate-secret",
        "--key-name",
        "kiln-fork-1",
    ]));
    let key_file = work.path().join("key.sec");
    std::fs::write(&key_file, key).unwrap();
    let grants = format!(
        "{GRANT_GCROOT}[grants.sign]\nsecrets = [\"signing-key\"]\nstore = [\"path-info\"]\n[secrets.signing-key]\nfile = {:?}\n",
        key_file.display().to_string()
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(&config, &grants).unwrap();
    let fork_pr = ["--pull-request", "2", "--fork", "--branch", "contributor"];

    let out = kiln_run(&dir, &config, work.path(), &fork_pr);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    let ran = steps(&r);
    assert_eq!(names(&ran), ["gcroot", "sign"], "{r}");
    // A step without secrets still runs.
    assert_eq!(ran[0].1, "succeeded", "{r}");
    let project = dir.display().to_string();
    assert_eq!(ran[1].1, "skipped", "{r}");
    assert_eq!(
        ran[1].2,
        format!(
            "pull request #2 comes from a fork, and plugin `sign` uses secret `signing-key`; to run it on fork pull requests, set `secrets_on_fork_pull_requests = true` under [projects.\"{project}\"] in kiln.toml"
        ),
        "{r}"
    );
    let path = r["jobs"][0]["outputs"]["out"].as_str().unwrap().to_owned();
    let sigs = || {
        sh(Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--sigs",
            &path,
        ]))
    };
    assert!(!sigs().contains("kiln-fork-1:"), "{}", sigs());

    std::fs::write(
        &config,
        format!("{grants}\n[projects.{project:?}]\nsecrets_on_fork_pull_requests = true\n"),
    )
    .unwrap();
    let out = kiln_run(&dir, &config, work.path(), &fork_pr);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    let ran = steps(&r);
    assert_eq!(names(&ran), ["gcroot", "sign"], "{r}");
    assert_eq!(ran[1].1, "succeeded", "{r}");
    assert!(sigs().contains("kiln-fork-1:"), "{}", sigs());
}

#[test]
fn operator_default_steps_run_for_a_project_without_buildbot_nix_toml() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    write_flake(&dir);
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[[post_build]]\nplugin = \"gcroot\"\n\n[[post_build]]\nplugin = \"outputs\"\nprojects = [\"someone/else\"]\n\n{GRANT_GCROOT}"
        ),
    )
    .unwrap();
    let out = kiln_run(&dir, &config, work.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    let ran = steps(&r);
    assert_eq!(names(&ran), ["gcroot"], "{r}");
    assert_eq!(ran[0].1, "succeeded", "{r}");
    assert!(ran[0].2.starts_with("registered 1 GC root"), "{r}");
    let roots: Vec<_> = std::fs::read_dir(work.path().join("gcroots"))
        .unwrap()
        .collect();
    assert_eq!(roots.len(), 1);
    assert!(
        stderr(&out).contains("post-build steps: `gcroot` (kiln.toml)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_malformed_default_step_is_an_error_with_file_and_line() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    write_flake(&dir);
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[plugins]\nbuiltin = true\n\n[[post_build]]\nplugin = \"gcroot\"\nwarn_only = \"yes\"\n",
    )
    .unwrap();
    let out = kiln_run(&dir, &config, work.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("kiln run: {}:4: ", config.display())),
        "{err}"
    );
    assert!(err.contains("[[post_build]]"), "{err}");
    assert!(out.stdout.is_empty());

    std::fs::write(
        &config,
        "[[post_build]]\nplugin = \"gcroot\"\nprojects = []\n",
    )
    .unwrap();
    let out = kiln_run(&dir, &config, work.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("kiln run: {}:1: ", config.display())),
        "{}",
        stderr(&out)
    );
}
