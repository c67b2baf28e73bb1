//! Evaluators against recorded output: a stand-in `nix` replays the
//! built-in walk's trace lines (streaming, resuming after a dead process,
//! splitting work off a racing walk) and a stand-in `nix-eval-jobs` streams
//! recorded lines. Deterministic: the scripts wait on files the test creates.

use std::path::Path;

use kiln_engine::eval::{EvalRequest, EvaluatorChoice, evaluate};
use kiln_nix::Nix;
use tokio::sync::mpsc;

use super::eval::{RECORDED, builtin, nix, run, write_flake};

/// A stand-in `nix` for the built-in evaluator: invocation N records its
/// arguments in `args.N` and runs `script.N` (recorded stderr, exit status).
fn fake_nix(dir: &Path, scripts: &[&str]) -> Nix {
    let main = "#!/bin/sh\nd=$(dirname \"$0\")\nn=$(cat \"$d/count\" 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > \"$d/count\"\nprintf '%s\\n' \"$@\" > \"$d/args.$n\"\n. \"$d/script.$n\"\n";
    std::fs::write(dir.join("nix"), main).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("nix"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (i, s) in scripts.iter().enumerate() {
        std::fs::write(dir.join(format!("script.{}", i + 1)), s).unwrap();
    }
    Nix::with_version(dir, kiln_nix::NixVersion::parse("nix (Nix) 2.8.0").unwrap())
}

fn trace_drv(path: &[&str]) -> String {
    let name = path.last().unwrap();
    format!(
        r#"trace: kiln-eval {{"d":"/nix/store/00000000000000000000000000000000-{name}.drv","f":[],"k":"drv","o":{{"out":"/nix/store/11111111111111111111111111111111-{name}"}},"p":{},"s":"x86_64-linux"}}"#,
        serde_json::to_string(path).unwrap()
    )
}

#[tokio::test]
async fn builtin_jobs_stream_before_evaluation_ends() {
    let bin = tempfile::tempdir().unwrap();
    let go = bin.path().join("go");
    let script = format!(
        "cat >&2 <<'EOF'\ntrace: kiln-eval {{\"k\":\"set\",\"n\":[\"a\",\"b\"],\"p\":[]}}\n{}\nEOF\nwhile [ ! -e '{}' ]; do sleep 0.01; done\necho '{}' >&2\necho 2\n",
        trace_drv(&["a"]),
        go.display(),
        trace_drv(&["b"]),
    );
    let nix = fake_nix(bin.path(), &[&script]);
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ }");
    let mut req = builtin(flake.path(), 1);
    req.check_cache_status = false;
    let (tx, mut rx) = mpsc::channel(4);
    let eval = tokio::spawn(async move { evaluate(&nix, &req, tx).await });
    let guard = std::time::Duration::from_secs(120);
    let first = tokio::time::timeout(guard, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attr, "a");
    assert_eq!(
        first.outputs["out"],
        "/nix/store/11111111111111111111111111111111-a"
    );
    assert!(!eval.is_finished(), "evaluation waits for `go`");
    std::fs::write(&go, "").unwrap();
    let second = tokio::time::timeout(guard, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attr, "b");
    let summary = eval.await.unwrap().unwrap();
    assert_eq!((summary.jobs, summary.processes), (2, 1));
}

#[tokio::test]
async fn builtin_resumes_after_the_attribute_a_process_died_on() {
    let bin = tempfile::tempdir().unwrap();
    // 1st process: walks into x, finishes x.a, aborts on x.b.
    let first = format!(
        "cat >&2 <<'EOF'\ntrace: kiln-eval {{\"k\":\"set\",\"n\":[\"x\",\"y\"],\"p\":[]}}\ntrace: kiln-eval {{\"k\":\"set\",\"n\":[\"a\",\"b\",\"c\"],\"p\":[\"x\"]}}\n{}\ntrace: some user trace\nerror: evaluation aborted with the following error message: 'no b'\n(use '--show-trace' to show detailed location information)\nEOF\nexit 1\n",
        trace_drv(&["x", "a"])
    );
    // 2nd process: resumes with x.c and y.
    let second = format!(
        "cat >&2 <<'EOF'\n{}\ntrace: kiln-eval {{\"k\":\"skip\",\"p\":[\"y\"]}}\nEOF\necho 1\n",
        trace_drv(&["x", "c"])
    );
    let nix = fake_nix(bin.path(), &[&first, &second]);
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ }");
    let mut req = builtin(flake.path(), 1);
    req.check_cache_status = false;
    let (summary, jobs) = run(&nix, &req).await;
    let summary = summary.unwrap();
    assert_eq!((summary.jobs, summary.errors, summary.processes), (3, 1, 2));
    assert_eq!(jobs.keys().collect::<Vec<_>>(), ["x.a", "x.b", "x.c"]);
    assert_eq!(
        jobs["x.b"].error.as_deref(),
        Some("error: evaluation aborted with the following error message: 'no b'")
    );
    let args = std::fs::read_to_string(bin.path().join("args.2")).unwrap();
    assert!(args.contains(r#"roots = [ ["x" "c"] ["y"] ];"#), "{args}");
    assert!(args.lines().any(|l| l.ends_with("#checks")), "{args}");
    assert!(args.contains("--no-write-lock-file"));
}

#[tokio::test]
async fn nix_eval_jobs_streams_lines_as_they_come() {
    let nix = nix().await;
    let bin = tempfile::tempdir().unwrap();
    let go = bin.path().join("go");
    let lines: Vec<&str> = RECORDED.lines().collect();
    let program = bin.path().join("nix-eval-jobs");
    let script = format!(
        "#!/bin/sh\ncat <<'EOF'\n{}\nEOF\nwhile [ ! -e '{}' ]; do sleep 0.01; done\ncat <<'EOF'\n{}\nEOF\n",
        lines[0],
        go.display(),
        lines[3]
    );
    std::fs::write(&program, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ }");
    let mut req = EvalRequest::new(flake.path(), "checks");
    req.evaluator = EvaluatorChoice::NixEvalJobs(program);
    let (tx, mut rx) = mpsc::channel(4);
    let eval = tokio::spawn(async move { evaluate(&nix, &req, tx).await });
    let guard = std::time::Duration::from_secs(120);
    let first = tokio::time::timeout(guard, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attr, "x86_64-linux.hello");
    assert!(!eval.is_finished());
    std::fs::write(&go, "").unwrap();
    let second = tokio::time::timeout(guard, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attr, "x86_64-linux.broken");
    assert_eq!(eval.await.unwrap().unwrap().jobs, 2);
}

/// A stand-in `nix` that picks its script by what it was asked: the
/// enumeration walk (`full = false`), the racing full walk from the top, or a
/// split-off worker.
fn fake_nix_by_role(dir: &Path, enumerate: &str, race: &str, split: &str) -> Nix {
    let main = "#!/bin/sh\nd=$(dirname \"$0\")\na=\"$d/args.$$\"\nprintf '%s\\n' \"$@\" > \"$a\"\nif grep -q 'full = false' \"$a\"; then . \"$d/script.enum\"\nelif grep -qF 'roots = [ [] ]' \"$a\"; then . \"$d/script.race\"\nelse cp \"$a\" \"$d/args.split\"; . \"$d/script.split\"; fi\n";
    std::fs::write(dir.join("nix"), main).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("nix"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("script.enum"), enumerate).unwrap();
    std::fs::write(dir.join("script.race"), race).unwrap();
    std::fs::write(dir.join("script.split"), split).unwrap();
    Nix::with_version(dir, kiln_nix::NixVersion::parse("nix (Nix) 2.8.0").unwrap())
}

#[tokio::test]
async fn a_stalled_racing_walk_keeps_its_slice_and_hands_off_the_rest() {
    let bin = tempfile::tempdir().unwrap();
    let go = bin.path().join("go");
    let set = r#"trace: kiln-eval {"k":"set","n":["a","b","c","d"],"p":[]}"#;
    let leaf = |n: &str| format!(r#"trace: kiln-eval {{"k":"drv","p":["{n}"]}}"#);
    // The enumeration lists four derivations at once.
    let enumerate = format!(
        "cat >&2 <<'EOF'\n{set}\n{}\n{}\n{}\n{}\nEOF\n",
        leaf("a"),
        leaf("b"),
        leaf("c"),
        leaf("d")
    );
    // The racing walk makes no progress until the split-off worker runs,
    // then does its slice (a, b) and goes on into c, where it is stopped.
    let race = format!(
        "echo '{set}' >&2\nwhile [ ! -e '{go}' ]; do sleep 0.01; done\ncat >&2 <<'EOF'\n{}\n{}\n{}\nEOF\nwhile true; do sleep 0.01; done\n",
        trace_drv(&["a"]),
        trace_drv(&["b"]),
        trace_drv(&["c"]),
        go = go.display(),
    );
    let split = format!(
        "cat >&2 <<'EOF'\n{}\n{}\nEOF\ntouch '{}'\necho 2\n",
        trace_drv(&["c"]),
        trace_drv(&["d"]),
        go.display()
    );
    let nix = fake_nix_by_role(bin.path(), &enumerate, &race, &split);
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ }");
    let mut req = builtin(flake.path(), 2);
    req.check_cache_status = false;
    let (summary, jobs) = run(&nix, &req).await;
    let summary = summary.unwrap();
    assert_eq!(jobs.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    assert_eq!((summary.jobs, summary.errors, summary.processes), (4, 0, 3));
    let args = std::fs::read_to_string(bin.path().join("args.split")).unwrap();
    assert!(args.contains(r#"roots = [ ["c"] ["d"] ];"#), "{args}");
    assert!(args.contains("full = true;"), "{args}");
}
