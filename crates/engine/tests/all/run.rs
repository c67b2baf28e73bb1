//! `kiln run` as a library call against real Nix and git: dependency order,
//! failure propagation, isolation of evaluation errors, foreign systems,
//! timeouts, caching, inputs (git URL with a pinned rev, flake_dir, custom
//! attribute, nested sets), bad inputs, cancellation, the failed-build cache
//! and the post-build hook. Every flake is salted so the builds are real.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_engine::eval::EvalError;
use kiln_engine::failed_cache::FailedCache;
use kiln_engine::job::JobStatus;
use kiln_engine::report::{JobReport, PostBuildResult, PostBuildStatus, Report};
use kiln_engine::run::{BoxFuture, PostBuildHook, RunError, RunOptions, run};
use kiln_engine::source::SourceError;
use tokio::sync::watch;

const SYSTEM: &str = "x86_64-linux";

fn salt() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("run-{}-{nanos}", std::process::id())
}

/// A flake whose outputs are `body`; in scope: `self`, `mk name script deps`
/// (an x86_64-linux derivation with `deps` in its environment), `mkFor
/// system name script deps`.
fn write_flake(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"{{
  outputs = {{ self }}: let
    salt = "{salt}";
    mkFor = system: name: script: deps: derivation {{
      inherit name system salt deps;
      builder = "/bin/sh";
      args = [ "-c" script ];
    }};
    mk = mkFor "{SYSTEM}";
  in {body};
}}
"#,
        salt = salt()
    );
    std::fs::write(dir.join("flake.nix"), text).unwrap();
}

fn options(flake: &Path, logs: &Path) -> RunOptions {
    let mut o = RunOptions::new(flake.display().to_string(), logs);
    o.systems = Some(vec![SYSTEM.to_string()]);
    o.max_jobs = 2;
    o
}

async fn go(opts: RunOptions) -> Report {
    let (_tx, rx) = watch::channel(false);
    run(opts, rx)
        .await
        .expect("the run produces a report")
        .report
}

fn jobs(r: &Report) -> BTreeMap<String, &JobReport> {
    r.jobs.iter().map(|j| (j.attr.clone(), j)).collect()
}

fn status(r: &Report, attr: &str) -> JobStatus {
    jobs(r)
        .get(attr)
        .unwrap_or_else(|| panic!("no job {attr} in {:#?}", r.jobs))
        .status
}

fn log_of(j: &JobReport) -> String {
    std::fs::read_to_string(j.log_path.as_deref().expect("a log path")).unwrap()
}

#[tokio::test]
async fn builds_a_dag_with_shared_dependencies_then_finds_it_cached() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"let
      base = mk "base" "echo base-says-hi; echo base > $out" [ ];
      lib = mk "lib" "echo lib-not-a-job; echo lib > $out" [ base ];
    in {
      checks.x86_64-linux = {
        inherit base;
        left = mk "left" "echo left-line; echo left > $out" [ lib ];
        right = mk "right" "echo right-line; echo right > $out" [ lib base ];
        top = mk "top" "echo top-line; echo top > $out" [ self.checks.x86_64-linux.left self.checks.x86_64-linux.right ];
      };
    }"#,
    );
    let r = go(options(&flake, &dir.path().join("logs1"))).await;
    assert_eq!(r.version, 1);
    assert_eq!(r.summary.total, 4, "{r:#?}");
    assert_eq!(r.summary.succeeded, 4, "{r:#?}");
    assert!(!r.has_failures());
    let by = jobs(&r);
    for (attr, line) in [
        ("x86_64-linux.base", "base-says-hi"),
        ("x86_64-linux.left", "left-line"),
        ("x86_64-linux.right", "right-line"),
        ("x86_64-linux.top", "top-line"),
    ] {
        let j = by[attr];
        assert_eq!(j.attempts, 1);
        assert!(j.drv_path.as_deref().unwrap().ends_with(".drv"));
        assert!(
            Path::new(&j.outputs["out"]).exists(),
            "{attr} output exists"
        );
        let log = log_of(j);
        assert!(log.contains(line), "{attr}'s log has its own line: {log:?}");
        // Attribution: no other job's line leaks into this log.
        for other in ["base-says-hi", "left-line", "right-line", "top-line"] {
            assert!(
                other == line || !log.contains(other),
                "{attr} log has {other}"
            );
        }
        assert!(!log.contains("lib-not-a-job"));
    }

    let again = go(options(&flake, &dir.path().join("logs2"))).await;
    assert_eq!(again.summary.cached, 4, "{again:#?}");
    assert!(
        again
            .jobs
            .iter()
            .all(|j| j.attempts == 0 && j.duration_ms == 0)
    );
}

#[tokio::test]
async fn a_failure_fails_its_dependents_and_spares_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"let
      broken = mk "broken-helper" "echo helper-breaks; exit 4" [ ];
      c = self.checks.x86_64-linux;
    in {
      checks.x86_64-linux = {
        bad = mk "bad" "echo about-to-fail; exit 3" [ ];
        child = mk "child" "echo > $out" [ c.bad ];
        grandchild = mk "grandchild" "echo > $out" [ c.child ];
        viaHelper = mk "via-helper" "echo > $out" [ broken ];
        fine = mk "fine" "echo fine > $out" [ ];
      };
    }"#,
    );
    let r = go(options(&flake, &dir.path().join("logs"))).await;
    assert!(r.has_failures());
    let by = jobs(&r);
    let bad = by["x86_64-linux.bad"];
    assert_eq!(bad.status, JobStatus::Failed);
    assert!(
        bad.error.as_deref().unwrap().contains("exit code 3"),
        "{bad:?}"
    );
    assert!(log_of(bad).contains("about-to-fail"));
    for attr in ["x86_64-linux.child", "x86_64-linux.grandchild"] {
        assert_eq!(by[attr].status, JobStatus::DependencyFailed, "{attr}");
        assert_eq!(
            by[attr].failed_dependency.as_deref(),
            Some("x86_64-linux.bad")
        );
    }
    let via = by["x86_64-linux.viaHelper"];
    assert_eq!(via.status, JobStatus::DependencyFailed, "{via:?}");
    let dep = via.failed_dependency.as_deref().unwrap();
    assert!(
        dep.starts_with("/nix/store/") && dep.ends_with("-broken-helper.drv"),
        "{dep}"
    );
    assert_eq!(by["x86_64-linux.fine"].status, JobStatus::Succeeded);
    assert_eq!(r.summary.failed, 1);
    assert_eq!(r.summary.dependency_failed, 3);
}

#[tokio::test]
async fn failed_dependency_names_what_really_failed() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"let
      bad = mk "bad-helper" "echo helper-breaks; exit 4" [ ];
      c = self.checks.x86_64-linux;
    in {
      checks.x86_64-linux = {
        viaHelper = mk "via-helper" "echo > $out" [ bad ];
        top = mk "top" "echo > $out" [ c.viaHelper ];
        usesArm = mk "uses-arm" "echo > $out" [ self.checks.aarch64-linux.arm ];
        aboveArm = mk "above-arm" "echo > $out" [ c.usesArm ];
      };
      checks.aarch64-linux.arm = mkFor "aarch64-linux" "arm" "echo > $out" [ ];
    }"#,
    );
    let mut o = options(&flake, &dir.path().join("logs"));
    o.systems = Some(vec![SYSTEM.to_string()]);
    let r = go(o).await;
    let by = jobs(&r);
    let via = by["x86_64-linux.viaHelper"];
    assert_eq!(via.status, JobStatus::DependencyFailed, "{via:?}");
    let bad = via.failed_dependency.as_deref().unwrap();
    assert!(bad.ends_with("-bad-helper.drv"), "{via:?}");
    // `top` waited for `viaHelper`, which did not fail itself: the root
    // cause is the non-job derivation.
    let top = by["x86_64-linux.top"];
    assert_eq!(top.status, JobStatus::DependencyFailed, "{top:?}");
    assert_eq!(top.failed_dependency.as_deref(), Some(bad), "{top:?}");
    assert!(top.error.as_deref().unwrap().contains(bad), "{top:?}");

    assert_eq!(by["aarch64-linux.arm"].status, JobStatus::UnsupportedSystem);
    for attr in ["x86_64-linux.usesArm", "x86_64-linux.aboveArm"] {
        let j = by[attr];
        assert_eq!(j.status, JobStatus::DependencyFailed, "{j:?}");
        assert_eq!(j.failed_dependency.as_deref(), Some("aarch64-linux.arm"));
        let e = j.error.as_deref().unwrap();
        assert!(e.contains("aarch64-linux.arm"), "{e}");
        assert!(e.contains("--systems") && !e.contains("failed"), "{e}");
    }
}

#[tokio::test]
async fn evaluation_errors_are_isolated_and_foreign_systems_are_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{
      checks.x86_64-linux = {
        ok = mk "ok" "echo > $out" [ ];
        thrown = throw "thrown on purpose";
        aborted = abort "aborted on purpose";
        missing = (mk "m" "echo > $out" [ ]).no-such-attr;
      };
      checks.aarch64-darwin.foreign = mkFor "aarch64-darwin" "foreign" "echo > $out" [ ];
    }"#,
    );
    let r = go(options(&flake, &dir.path().join("logs"))).await;
    assert_eq!(status(&r, "x86_64-linux.ok"), JobStatus::Succeeded);
    let by = jobs(&r);
    for (attr, text) in [
        ("x86_64-linux.thrown", "thrown on purpose"),
        ("x86_64-linux.aborted", "aborted on purpose"),
        ("x86_64-linux.missing", "no-such-attr"),
    ] {
        let j = by[attr];
        assert_eq!(j.status, JobStatus::EvalError, "{attr}");
        assert!(j.error.as_deref().unwrap().contains(text), "{j:?}");
        assert_eq!(j.drv_path, None);
    }
    let foreign = by["aarch64-darwin.foreign"];
    assert_eq!(foreign.status, JobStatus::UnsupportedSystem);
    assert_eq!(foreign.attempts, 0);

    // Only the foreign system: nothing fails.
    let only = dir.path().join("only-foreign");
    write_flake(
        &only,
        r#"{ checks.aarch64-darwin.foreign = mkFor "aarch64-darwin" "foreign" "echo > $out" [ ]; }"#,
    );
    let r = go(options(&only, &dir.path().join("logs2"))).await;
    assert_eq!(r.summary.unsupported_system, 1);
    assert!(!r.has_failures());
}

#[tokio::test]
async fn a_silent_check_times_out_while_its_batch_mates_finish() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{
      checks.x86_64-linux = {
        silent = mk "silent" "echo going-quiet; while :; do :; done" [ ];
        quick = mk "quick" "echo quick > $out" [ ];
      };
    }"#,
    );
    let mut o = options(&flake, &dir.path().join("logs"));
    o.max_silent_time = Some(std::time::Duration::from_secs(1));
    let r = go(o).await;
    let by = jobs(&r);
    let silent = by["x86_64-linux.silent"];
    assert_eq!(silent.status, JobStatus::TimedOut, "{silent:?}");
    assert!(log_of(silent).contains("going-quiet"));
    assert_eq!(by["x86_64-linux.quick"].status, JobStatus::Succeeded);
    assert!(r.has_failures());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_git_url_at_a_pinned_rev_builds_that_rev() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    write_flake(
        &repo,
        r#"{ checks.x86_64-linux.v = mk "v1" "echo one > $out" [ ]; }"#,
    );
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "flake.nix"]);
    git(&repo, &["commit", "-qm", "v1"]);
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    write_flake(
        &repo,
        r#"{ checks.x86_64-linux.v = mk "v2" "exit 1" [ ]; }"#,
    );
    git(&repo, &["commit", "-qam", "v2"]);
    let url = format!("git+file://{}", repo.display());
    let mut o = options(Path::new("unused"), &dir.path().join("logs"));
    o.flake = url.clone();
    o.rev = Some(v1.clone());
    let r = go(o).await;
    assert_eq!(r.flake, url);
    assert_eq!(r.rev.as_deref(), Some(v1.as_str()));
    assert_eq!(status(&r, "x86_64-linux.v"), JobStatus::Succeeded, "{r:#?}");
    assert!(
        jobs(&r)["x86_64-linux.v"]
            .drv_path
            .as_deref()
            .unwrap()
            .ends_with("-v1.drv")
    );
}

#[tokio::test]
async fn flake_dir_custom_attribute_and_nested_sets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("buildbot-nix.toml"),
        "attribute = \"ci\"\nflake_dir = \"nix/sub\"\n",
    )
    .unwrap();
    write_flake(
        &root.join("nix/sub"),
        r#"{
      checks.x86_64-linux.ignored = mk "ignored" "exit 1" [ ];
      ci.x86_64-linux = {
        top = mk "top" "echo > $out" [ ];
        group.inner = mk "inner" "echo > $out" [ ];
        group.deeper.leaf = mk "leaf" "echo > $out" [ ];
      };
      other.x86_64-linux.picked = mk "picked" "echo > $out" [ ];
    }"#,
    );
    let r = go(options(&root, &dir.path().join("logs"))).await;
    assert_eq!(r.attribute, "ci");
    let attrs: Vec<&str> = r.jobs.iter().map(|j| j.attr.as_str()).collect();
    for attr in [
        "x86_64-linux.top",
        "x86_64-linux.group.inner",
        "x86_64-linux.group.deeper.leaf",
    ] {
        assert_eq!(status(&r, attr), JobStatus::Succeeded, "{attrs:?}");
    }
    assert_eq!(r.summary.total, 3, "{attrs:?}");

    let mut o = options(&root, &dir.path().join("logs2"));
    o.attribute = Some("other".into());
    let r = go(o).await;
    assert_eq!(r.attribute, "other");
    assert_eq!(status(&r, "x86_64-linux.picked"), JobStatus::Succeeded);
}

#[tokio::test]
async fn bad_inputs_are_errors_not_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(false);
    let logs = dir.path().join("logs");

    let missing = options(&dir.path().join("nope"), &logs);
    let e = run(missing, rx.clone()).await.unwrap_err();
    assert!(
        matches!(e, RunError::Source(SourceError::FlakeNotFound { .. })),
        "{e}"
    );

    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{ checks.x86_64-linux.a = mk "a" "echo > $out" [ ]; }"#,
    );
    let mut o = options(&flake, &logs);
    o.attribute = Some("nonexistent".into());
    let e = run(o, rx.clone()).await.unwrap_err();
    assert!(
        matches!(e, RunError::Eval(EvalError::AttributeMissing { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("nonexistent"), "{e}");

    std::fs::write(
        flake.join("buildbot-nix.toml"),
        "attribute = \"checks\"\nbogus_key = 1\n",
    )
    .unwrap();
    let e = run(options(&flake, &logs), rx.clone()).await.unwrap_err();
    assert!(matches!(e, RunError::Source(SourceError::Config(_))), "{e}");
    assert!(e.to_string().contains("bogus_key"), "{e}");

    let mut o = options(&flake, &logs);
    o.max_jobs = 0;
    assert!(matches!(run(o, rx).await.unwrap_err(), RunError::Usage(_)));
}

#[tokio::test]
async fn cancellation_kills_builds_and_reports_the_rest_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    let token = format!("spin-token-{}", salt());
    write_flake(
        &flake,
        &r#"{
      checks.x86_64-linux = {
        spin = mk "spin" "echo spinning; while :; do :; done; echo TOKEN" [ ];
        after = mk "after" "echo > $out" [ self.checks.x86_64-linux.spin ];
      };
    }"#
        .replace("TOKEN", &token),
    );
    let (tx, rx) = watch::channel(false);
    let mut o = options(&flake, &dir.path().join("logs"));
    o.max_jobs = 1;
    let logs = dir.path().join("logs");
    let handle = tokio::spawn(run(o, rx));
    // Cancel once the spinning build has printed (its log has the line).
    // A hang guard, not a timed assertion: give up after a generous while.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let spin_log = logs.join("x86_64-linux.spin.log");
    while !std::fs::read_to_string(&spin_log).is_ok_and(|l| l.contains("spinning")) {
        if handle.is_finished() {
            let r = handle.await.unwrap();
            kill_builders(&token);
            panic!("the run ended before the spin build printed: {r:?}");
        }
        if std::time::Instant::now() > deadline {
            handle.abort();
            kill_builders(&token);
            panic!("hang guard: no \"spinning\" in {spin_log:?} after {HANG_GUARD:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tx.send(true).unwrap();
    let outcome = handle.await.unwrap().unwrap();
    assert!(outcome.interrupted);
    let r = outcome.report;
    assert_eq!(status(&r, "x86_64-linux.spin"), JobStatus::Cancelled);
    assert_eq!(status(&r, "x86_64-linux.after"), JobStatus::Cancelled);
    assert_eq!(r.summary.cancelled, 2);
    // The builder itself is gone (Nix kills it when its client dies); wait
    // for that, however long it takes, rather than timing it.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while builder_running(&token) {
        if std::time::Instant::now() > deadline {
            kill_builders(&token);
            panic!("hang guard: the spin builder still runs {HANG_GUARD:?} after cancelling");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long a test waits for something that should happen before it gives
/// up, kills what it started and fails: a guard against hanging CI, not a
/// timing assertion.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(300);

/// SIGKILL every process whose command line has `token` (the builders this
/// test started).
fn kill_builders(token: &str) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(token))
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn builder_running(token: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(token))
    })
}

#[tokio::test]
async fn the_failed_build_cache_reports_earlier_failures_until_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{ checks.x86_64-linux.bad = mk "bad" "echo nope; exit 1" [ ]; }"#,
    );
    let cache = FailedCache::new(dir.path().join("failed"));
    let mut o = options(&flake, &dir.path().join("logs1"));
    o.failed_cache = Some(cache.clone());
    let first = go(o.clone()).await;
    let first_log = jobs(&first)["x86_64-linux.bad"].log_path.clone().unwrap();
    assert_eq!(jobs(&first)["x86_64-linux.bad"].attempts, 1);

    o.log_dir = dir.path().join("logs2");
    let second = go(o.clone()).await;
    let j = jobs(&second)["x86_64-linux.bad"].clone();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.attempts, 0, "not rebuilt: {j:?}");
    assert!(j.error.as_deref().unwrap().contains(&first_log), "{j:?}");
    assert_eq!(j.log_path.as_deref(), Some(first_log.as_str()));

    o.failed_cache = Some(cache.rebuilding());
    o.log_dir = dir.path().join("logs3");
    let third = go(o).await;
    assert_eq!(jobs(&third)["x86_64-linux.bad"].attempts, 1);
}

struct Stamp;

impl PostBuildHook for Stamp {
    fn run<'a>(&'a self, job: &'a JobReport) -> BoxFuture<'a, Vec<PostBuildResult>> {
        Box::pin(async move {
            vec![PostBuildResult {
                step: "stamp".into(),
                status: PostBuildStatus::Succeeded,
                message: format!("saw {}", job.attr),
            }]
        })
    }
}

#[tokio::test]
async fn the_post_build_hook_fills_post_build_for_built_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{ checks.x86_64-linux = { good = mk "good" "echo > $out" [ ]; bad = mk "bad" "exit 1" [ ]; }; }"#,
    );
    let mut o = options(&flake, &dir.path().join("logs"));
    o.post_build = Some(Arc::new(Stamp));
    let r = go(o).await;
    let by = jobs(&r);
    assert_eq!(by["x86_64-linux.good"].post_build.len(), 1);
    assert_eq!(
        by["x86_64-linux.good"].post_build[0].message,
        "saw x86_64-linux.good"
    );
    assert!(by["x86_64-linux.bad"].post_build.is_empty());
}

#[tokio::test]
async fn a_chatty_check_past_its_timeout_is_timed_out_with_a_capped_log() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    write_flake(
        &flake,
        r#"{
      checks.x86_64-linux.chatty = mk "chatty" "echo first-line; i=0; while :; do i=$((i+1)); echo line-$i-padding-padding-padding-padding-padding; done" [ ];
    }"#,
    );
    let mut o = options(&flake, &dir.path().join("logs"));
    o.timeout = Some(std::time::Duration::from_secs(3));
    let r = go(o).await;
    let j = jobs(&r)["x86_64-linux.chatty"].clone();
    assert_eq!(j.status, JobStatus::TimedOut, "{j:?}");
    assert!(j.error.as_deref().unwrap().contains("timed out"), "{j:?}");
    let log = log_of(&j);
    assert!(log.starts_with("first-line\n"), "the head is kept");
    let cap = kiln_engine::logfile::HEAD_BYTES + kiln_engine::logfile::TAIL_BYTES + 4096;
    assert!(
        log.len() <= cap,
        "log of {} bytes exceeds the cap",
        log.len()
    );
    // The builder prints without pause until it is killed: far more than the
    // cap, so the log is always cut, and says so.
    assert!(
        log.contains("[kiln: ") && log.contains("cut here"),
        "a cut log says so ({} bytes)",
        log.len()
    );
}

/// Counts jobs running over several runs at once, and the peak.
#[derive(Default)]
struct Concurrency {
    running: std::sync::Mutex<(std::collections::HashSet<(usize, u32)>, usize)>,
}

struct RunCounter {
    shared: Arc<Concurrency>,
    run: usize,
}

impl kiln_engine::run::RunObserver for RunCounter {
    fn job(&self, index: u32, job: &JobReport) {
        let mut g = self.shared.running.lock().unwrap();
        if job.status == JobStatus::Running {
            g.0.insert((self.run, index));
        } else {
            g.0.remove(&(self.run, index));
        }
        g.1 = g.1.max(g.0.len());
    }
}

/// Two runs sharing a pool of one build slot never build two jobs at once,
/// though each may use two; both still build everything.
#[tokio::test]
async fn runs_sharing_a_slot_pool_never_build_more_than_its_size() {
    let shared = Arc::new(Concurrency::default());
    let pool = Arc::new(kiln_engine::slots::SlotPool::new(1));
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for run_index in 0..2 {
        let flake = dir.path().join(format!("flake-{run_index}"));
        write_flake(
            &flake,
            r#"{
      checks.x86_64-linux = {
        a = mk "a" "sleep 0.5; echo a > $out" [ ];
        b = mk "b" "sleep 0.5; echo b > $out" [ ];
        c = mk "c" "sleep 0.5; echo c > $out" [ ];
      };
    }"#,
        );
        let mut opts = options(&flake, &dir.path().join(format!("logs-{run_index}")));
        opts.slots = Some(pool.clone());
        opts.observer = Some(Arc::new(RunCounter {
            shared: shared.clone(),
            run: run_index,
        }));
        runs.push(tokio::spawn(go(opts)));
    }
    for r in runs {
        let report = r.await.unwrap();
        for attr in ["a", "b", "c"] {
            assert_eq!(
                status(&report, &format!("{SYSTEM}.{attr}")),
                JobStatus::Succeeded
            );
        }
    }
    let (still, peak) = shared.running.lock().unwrap().clone();
    assert!(still.is_empty(), "{still:?}");
    assert_eq!(peak, 1, "at most one job built at a time");
    assert_eq!(pool.in_use(), 0, "every slot given back");
}
