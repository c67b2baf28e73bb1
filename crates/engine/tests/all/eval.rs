//! Evaluation against real Nix: failure isolation, nesting, outputs, cache
//! status, whole-flake errors, and the nix-eval-jobs path with a stand-in
//! executable replaying recorded lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_engine::eval::{
    EvalError, EvalRequest, EvalSummary, Evaluator, EvaluatorChoice, evaluate,
};
use kiln_engine::job::{CacheStatus, EvalJob};
use kiln_nix::Nix;
use tokio::sync::mpsc;

/// A value unique to this test run, so derivations are new to the store.
pub fn salt() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Write a flake whose outputs are `body`; in scope: `self`, `salt`,
/// `mk system name script` and `x = mk "x86_64-linux"`.
pub fn write_flake(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        r#"{{
  outputs = {{ self }}: let
    salt = "{salt}";
    mk = system: name: script: derivation {{
      inherit name system salt;
      builder = "/bin/sh";
      args = [ "-c" script ];
    }};
    x = mk "x86_64-linux";
  in {body};
}}
"#,
        salt = salt()
    );
    std::fs::write(dir.join("flake.nix"), text).unwrap();
}

pub async fn nix() -> Nix {
    Nix::detect()
        .await
        .expect("Nix is installed on test machines")
}

pub async fn run(
    nix: &Nix,
    req: &EvalRequest,
) -> (Result<EvalSummary, EvalError>, BTreeMap<String, EvalJob>) {
    let (tx, mut rx) = mpsc::channel::<EvalJob>(4);
    let collect = tokio::spawn(async move {
        let mut jobs = BTreeMap::new();
        while let Some(job) = rx.recv().await {
            assert!(
                jobs.insert(job.attr.clone(), job).is_none(),
                "duplicate job"
            );
        }
        jobs
    });
    let summary = evaluate(nix, req, tx).await;
    (summary, collect.await.unwrap())
}

const MESSY: &str = r#"{
  checks.x86_64-linux = {
    ok = x "ok" "echo ok > $out";
    dep = x "dep" "read l < ${self.checks.x86_64-linux.ok}; echo $l > $out";
    thrown = throw "thrown on purpose";
    aborted = abort "aborted on purpose";
    missing = (x "m" "echo > $out").no-such-attr;
    deepthrow = x "deepthrow" (throw "thrown deep inside");
    multi = derivation {
      name = "multi"; system = "x86_64-linux"; builder = "/bin/sh"; inherit salt;
      outputs = [ "out" "dev" ]; requiredSystemFeatures = [ "kvm" ];
      args = [ "-c" "echo > $out; echo > $dev" ];
    };
    nested = { deep = { leaf = x "leaf" "echo > $out"; }; not-a-drv = 42; };
    "with.dot" = x "dotted" "echo > $out";
  };
  checks.aarch64-linux.foreign = mk "aarch64-linux" "foreign" "echo > $out";
}"#;

pub fn builtin(dir: &Path, workers: usize) -> EvalRequest {
    let mut req = EvalRequest::new(dir, "checks");
    req.workers = workers;
    req.max_memory_mib = 2048;
    req.evaluator = EvaluatorChoice::Builtin;
    req
}

async fn check_messy(workers: usize) {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(dir.path(), MESSY);
    let (summary, jobs) = run(&nix, &builtin(dir.path(), workers)).await;
    let summary = summary.unwrap();
    assert_eq!(summary.evaluator, Evaluator::Builtin);
    let names: Vec<&str> = jobs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "aarch64-linux.foreign",
            "x86_64-linux.\"with.dot\"",
            "x86_64-linux.aborted",
            "x86_64-linux.deepthrow",
            "x86_64-linux.dep",
            "x86_64-linux.missing",
            "x86_64-linux.multi",
            "x86_64-linux.nested.deep.leaf",
            "x86_64-linux.ok",
            "x86_64-linux.thrown",
        ]
    );
    assert_eq!((summary.jobs, summary.errors), (10, 4));
    let err = |a: &str| jobs[a].error.clone().unwrap_or_default();
    assert!(
        err("x86_64-linux.thrown").contains("thrown on purpose"),
        "{}",
        err("x86_64-linux.thrown")
    );
    assert!(err("x86_64-linux.aborted").contains("aborted on purpose"));
    assert!(err("x86_64-linux.missing").contains("attribute 'no-such-attr' missing"));
    assert!(err("x86_64-linux.deepthrow").contains("thrown deep inside"));
    for a in [
        "x86_64-linux.thrown",
        "x86_64-linux.aborted",
        "x86_64-linux.missing",
    ] {
        assert!(err(a).starts_with("error:"), "{a}: {}", err(a));
        assert!(!err(a).contains("--show-trace"));
        assert_eq!(jobs[a].drv_path, None);
        assert!(jobs[a].outputs.is_empty());
        assert_eq!(jobs[a].system, "x86_64-linux", "{a}");
    }
    let ok = &jobs["x86_64-linux.ok"];
    assert!(ok.error.is_none());
    assert!(ok.drv_path.as_deref().unwrap().ends_with("-ok.drv"));
    assert!(ok.outputs["out"].ends_with("-ok"));
    assert_eq!(ok.system, "x86_64-linux");
    assert_eq!(ok.cache_status, CacheStatus::NotBuilt);
    assert_eq!(ok.attr_path, ["x86_64-linux", "ok"]);
    let multi = &jobs["x86_64-linux.multi"];
    assert_eq!(multi.outputs.keys().collect::<Vec<_>>(), ["dev", "out"]);
    assert_eq!(multi.required_system_features, ["kvm"]);
    assert_eq!(jobs["aarch64-linux.foreign"].system, "aarch64-linux");
    assert_eq!(
        jobs["x86_64-linux.nested.deep.leaf"].attr_path,
        ["x86_64-linux", "nested", "deep", "leaf"]
    );
    assert_eq!(
        jobs["x86_64-linux.\"with.dot\""].attr_path,
        ["x86_64-linux", "with.dot"]
    );

    // The derivation is real: Nix can show it, and it depends on `ok`.
    let dep = jobs["x86_64-linux.dep"].drv_path.clone().unwrap();
    let drvs = nix
        .show_derivations(std::slice::from_ref(&dep))
        .await
        .unwrap();
    assert!(
        drvs[&dep]
            .input_drvs
            .contains_key(ok.drv_path.as_ref().unwrap())
    );
}

#[tokio::test]
async fn one_worker_isolates_every_failure() {
    check_messy(1).await;
}

#[tokio::test]
async fn parallel_workers_isolate_every_failure() {
    check_messy(3).await;
}

#[tokio::test]
async fn built_outputs_are_reported_local() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux = { built = x "built" "echo > $out"; fresh = x "fresh" "echo > $out"; }; }"#,
    );
    let (_, jobs) = run(&nix, &builtin(dir.path(), 2)).await;
    let drv = jobs["x86_64-linux.built"].drv_path.clone().unwrap();
    let mut realise = nix.command("nix-store");
    realise.arg("--realise").arg(&drv);
    kiln_nix::run_output(&mut realise, "nix-store --realise")
        .await
        .unwrap();

    let (_, jobs) = run(&nix, &builtin(dir.path(), 2)).await;
    assert_eq!(jobs["x86_64-linux.built"].cache_status, CacheStatus::Local);
    assert_eq!(
        jobs["x86_64-linux.fresh"].cache_status,
        CacheStatus::NotBuilt
    );

    let mut req = builtin(dir.path(), 1);
    req.check_cache_status = false;
    let roots = tempfile::tempdir().unwrap();
    req.gc_roots_dir = Some(roots.path().to_path_buf());
    let (_, jobs) = run(&nix, &req).await;
    assert_eq!(
        jobs["x86_64-linux.built"].cache_status,
        CacheStatus::Unknown
    );
    let root = roots.path().join(drv.rsplit('/').next().unwrap());
    assert_eq!(std::fs::read_link(root).unwrap(), PathBuf::from(&drv));
}

#[tokio::test]
async fn custom_attribute_and_empty_sets() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ hydraJobs = { tests.unit = x "unit" "echo > $out"; tests.broken = throw "no"; empty = { }; };
             checks = { }; checks2.x86_64-linux.greeting = x "greeting" "echo > $out"; }"#,
    );
    let (summary, jobs) = run(&nix, &builtin(dir.path(), 2)).await;
    assert_eq!(summary.unwrap().jobs, 0);
    assert!(jobs.is_empty());
    let mut req = builtin(dir.path(), 2);
    req.attribute = "hydraJobs".into();
    let (_, jobs) = run(&nix, &req).await;
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        ["tests.broken", "tests.unit"]
    );
    // Not a system: left empty.
    assert_eq!(jobs["tests.broken"].system, "");

    // A single derivation is named by the attribute's last component.
    for workers in [1, 2] {
        let mut req = builtin(dir.path(), workers);
        req.attribute = "checks2.x86_64-linux.greeting".into();
        let (summary, jobs) = run(&nix, &req).await;
        assert_eq!(summary.unwrap().jobs, 1);
        let job = &jobs["greeting"];
        assert_eq!(job.attr_path, ["greeting"]);
        assert_eq!(job.system, "x86_64-linux");
        assert!(job.drv_path.as_deref().unwrap().ends_with("-greeting.drv"));
    }
}

#[tokio::test]
async fn whole_flake_failures_are_errors() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(dir.path(), r#"{ checks = { }; }"#);
    let mut req = builtin(dir.path(), 1);
    req.attribute = "nope".into();
    let (r, jobs) = run(&nix, &req).await;
    let e = r.unwrap_err();
    assert!(matches!(e, EvalError::AttributeMissing { .. }), "{e}");
    assert!(e.to_string().contains("does not provide attribute `nope`"));
    assert!(jobs.is_empty());

    std::fs::write(
        dir.path().join("flake.nix"),
        "{ outputs = { self }: { checks = ; }; }",
    )
    .unwrap();
    let (r, _) = run(&nix, &builtin(dir.path(), 1)).await;
    let e = r.unwrap_err();
    assert!(matches!(e, EvalError::Flake { .. }), "{e}");
    assert!(e.to_string().contains("syntax error"), "{e}");
    assert!(e.to_string().contains("at flake.nix:1:"), "{e}");
    assert_eq!(e.to_string().lines().count(), 1, "{e}");

    let (r, _) = run(&nix, &builtin(&dir.path().join("absent"), 1)).await;
    assert!(matches!(r.unwrap_err(), EvalError::Flake { .. }));
}

/// A stand-in `nix-eval-jobs`: records its arguments, prints `lines`.
fn stand_in(dir: &Path, lines: &str, exit: i32) -> PathBuf {
    let program = dir.join("nix-eval-jobs");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"{args}\"\ncat <<'KILN_EOF'\n{lines}\nKILN_EOF\necho 'error: boom (stand-in)' >&2\nexit {exit}\n",
        args = dir.join("args").display()
    );
    std::fs::write(&program, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    program
}

pub const RECORDED: &str = r#"{"attr":"x86_64-linux.hello","attrPath":["x86_64-linux","hello"],"cacheStatus":"notBuilt","drvPath":"/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello.drv","isCached":false,"name":"hello","neededBuilds":["/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-hello.drv"],"neededSubstitutes":[],"outputs":{"out":"/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-hello"},"system":"x86_64-linux"}
{"attr":"x86_64-linux.local","attrPath":["x86_64-linux","local"],"cacheStatus":"local","drvPath":"/nix/store/2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-local.drv","isCached":true,"name":"local","neededBuilds":[],"neededSubstitutes":[],"outputs":{"out":"/nix/store/3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d-local"},"system":"x86_64-linux"}
{"attr":"x86_64-linux.cached","attrPath":["x86_64-linux","cached"],"cacheStatus":"cached","drvPath":"/nix/store/4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e-cached.drv","isCached":true,"name":"cached","neededBuilds":[],"neededSubstitutes":["/nix/store/5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f-cached"],"outputs":{"out":"/nix/store/5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f-cached"},"system":"x86_64-linux"}
{"attr":"x86_64-linux.broken","attrPath":["x86_64-linux","broken"],"error":"error: attribute 'nope' missing\n\n       at /nix/store/6g6g-source/flake.nix:3:9:\n"}"#;

#[tokio::test]
async fn nix_eval_jobs_lines_become_jobs() {
    let nix = nix().await;
    let bin = tempfile::tempdir().unwrap();
    let program = stand_in(bin.path(), RECORDED, 0);
    // Auto picks it from a PATH where it comes first.
    let path = std::env::join_paths([bin.path(), Path::new("/usr/bin")]).unwrap();
    assert_eq!(
        EvaluatorChoice::Auto.resolve(Some(&path)),
        EvaluatorChoice::NixEvalJobs(program.clone())
    );
    assert_eq!(
        EvaluatorChoice::Auto.resolve(Some("/nonexistent".as_ref())),
        EvaluatorChoice::Builtin
    );

    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ checks = { }; }");
    let mut req = EvalRequest::new(flake.path(), "checks");
    req.workers = 3;
    req.max_memory_mib = 1234;
    req.evaluator = EvaluatorChoice::NixEvalJobs(program);
    let (summary, jobs) = run(&nix, &req).await;
    let summary = summary.unwrap();
    assert_eq!(summary.evaluator, Evaluator::NixEvalJobs);
    assert_eq!((summary.jobs, summary.errors), (4, 1));
    assert_eq!(
        jobs["x86_64-linux.hello"].cache_status,
        CacheStatus::NotBuilt
    );
    assert_eq!(jobs["x86_64-linux.local"].cache_status, CacheStatus::Local);
    assert_eq!(
        jobs["x86_64-linux.cached"].cache_status,
        CacheStatus::Cached
    );
    assert_eq!(
        jobs["x86_64-linux.hello"].outputs["out"],
        "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-hello"
    );
    let broken = &jobs["x86_64-linux.broken"];
    assert!(
        broken
            .error
            .as_deref()
            .unwrap()
            .starts_with("error: attribute 'nope' missing")
    );
    assert_eq!(broken.drv_path, None);
    assert_eq!(broken.system, "x86_64-linux");

    let args = std::fs::read_to_string(bin.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let flake_ref = format!("{}#checks", flake.path().display());
    for want in [
        &["--workers", "3"][..],
        &["--max-memory-size", "1234"],
        &["--force-recurse"],
        &["--check-cache-status"],
        &["--flake", &flake_ref],
        &[
            "--option",
            "extra-experimental-features",
            "nix-command flakes",
        ],
    ] {
        assert!(
            args.windows(want.len()).any(|w| w == want),
            "{want:?} not in {args:?}"
        );
    }
}

#[tokio::test]
async fn nix_eval_jobs_failing_before_any_job_is_a_flake_error() {
    let nix = nix().await;
    let bin = tempfile::tempdir().unwrap();
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ checks = { }; }");
    let mut req = EvalRequest::new(flake.path(), "checks");
    req.evaluator = EvaluatorChoice::NixEvalJobs(stand_in(bin.path(), "", 1));
    let (r, _) = run(&nix, &req).await;
    let e = r.unwrap_err();
    assert!(matches!(e, EvalError::Flake { .. }), "{e}");
    assert!(e.to_string().contains("boom (stand-in)"));
}

#[tokio::test]
async fn an_attribute_over_the_memory_cap_fails_alone() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux = {
          a = x "a" "echo > $out";
          big = builtins.seq (builtins.length (builtins.genList (i: [ i i ]) 50000000)) (x "big" "echo > $out");
          c = x "c" "echo > $out";
        }; }"#,
    );
    for workers in [1, 2] {
        let mut req = builtin(dir.path(), workers);
        req.max_memory_mib = 512;
        let (summary, jobs) = run(&nix, &req).await;
        assert_eq!(summary.unwrap().errors, 1);
        let big = jobs["x86_64-linux.big"].error.clone().unwrap();
        assert!(big.contains("memory limit of 512 MiB"), "{big}");
        assert!(jobs["x86_64-linux.a"].drv_path.is_some());
        assert!(jobs["x86_64-linux.c"].drv_path.is_some());
    }
}

fn copy_example(name: &str, to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(src.join("flake.nix"), to.join("flake.nix")).unwrap();
}

#[tokio::test]
async fn the_examples_evaluate_as_documented() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    copy_example("hello-flake", &dir.path().join("hello"));
    let (summary, jobs) = run(&nix, &builtin(&dir.path().join("hello"), 2)).await;
    assert_eq!(summary.unwrap().errors, 0);
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        [
            "x86_64-linux.count",
            "x86_64-linux.greeting",
            "x86_64-linux.independent",
            "x86_64-linux.shout",
            "x86_64-linux.summary",
        ]
    );
    // shout and count share greeting; summary depends on both.
    let drv = |a: &str| jobs[a].drv_path.clone().unwrap();
    let graph = nix
        .show_derivations(&[
            drv("x86_64-linux.shout"),
            drv("x86_64-linux.count"),
            drv("x86_64-linux.summary"),
        ])
        .await
        .unwrap();
    for a in ["x86_64-linux.shout", "x86_64-linux.count"] {
        assert!(
            graph[&drv(a)]
                .input_drvs
                .contains_key(&drv("x86_64-linux.greeting"))
        );
    }
    let summary_inputs = &graph[&drv("x86_64-linux.summary")].input_drvs;
    assert!(summary_inputs.contains_key(&drv("x86_64-linux.shout")));
    assert!(summary_inputs.contains_key(&drv("x86_64-linux.count")));

    copy_example("failing-flake", &dir.path().join("failing"));
    let (summary, jobs) = run(&nix, &builtin(&dir.path().join("failing"), 2)).await;
    assert_eq!(summary.unwrap().errors, 3);
    let errors: Vec<&str> = jobs
        .values()
        .filter(|j| j.error.is_some())
        .map(|j| j.attr.as_str())
        .collect();
    assert_eq!(
        errors,
        [
            "x86_64-linux.aborted",
            "x86_64-linux.missing",
            "x86_64-linux.thrown"
        ]
    );
    assert_eq!(jobs["aarch64-linux.foreign"].system, "aarch64-linux");
    assert!(jobs["x86_64-linux.after-broken"].drv_path.is_some());
}

/// Generous upper bound for one evaluation in tests that used to hang.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

async fn run_with_deadline(
    nix: &Nix,
    req: &EvalRequest,
) -> (Result<EvalSummary, EvalError>, BTreeMap<String, EvalJob>) {
    tokio::time::timeout(DEADLINE, run(nix, req))
        .await
        .expect("evaluation hung on output it could not read")
}

/// Replace `placeholder` in `dir/flake.nix` with raw bytes.
fn patch_bytes(dir: &Path, placeholder: &str, bytes: &[u8]) {
    let text = std::fs::read(dir.join("flake.nix")).unwrap();
    let at = text
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .unwrap();
    let mut out = text[..at].to_vec();
    out.extend_from_slice(bytes);
    out.extend_from_slice(&text[at + placeholder.len()..]);
    std::fs::write(dir.join("flake.nix"), out).unwrap();
}

#[tokio::test]
async fn non_utf8_attribute_names_do_not_stall_the_builtin_evaluator() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    // 3000 attributes after the odd one: far more trace output than a pipe
    // holds, so a reader that stops at the bad line leaves Nix blocked.
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux = builtins.listToAttrs (builtins.genList (i: { name = "n${toString i}"; value = i; }) 3000) // {
          "BAD_NAME" = x "odd" "echo > $out";
          zz-last = x "last" "echo > $out";
        }; }"#,
    );
    patch_bytes(dir.path(), "BAD_NAME", b"a\xff");
    let (summary, jobs) = run_with_deadline(&nix, &builtin(dir.path(), 1)).await;
    let summary = summary.unwrap();
    assert_eq!((summary.jobs, summary.errors), (2, 0), "{jobs:?}");
    assert!(
        jobs["x86_64-linux.a\u{fffd}"]
            .drv_path
            .as_deref()
            .unwrap()
            .ends_with("-odd.drv")
    );
    assert!(jobs["x86_64-linux.zz-last"].drv_path.is_some());
}

#[tokio::test]
async fn nix_eval_jobs_output_is_drained_past_non_utf8_bytes() {
    let nix = nix().await;
    let bin = tempfile::tempdir().unwrap();
    let program = bin.path().join("nix-eval-jobs");
    // Invalid UTF-8 first on both streams, then far more than a pipe holds.
    let job = r#"{"attr":"x86_64-linux.j%s","attrPath":["x86_64-linux","j%s"],"drvPath":"/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-j.drv","outputs":{"out":"/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-j"},"system":"x86_64-linux"}\n"#;
    let script = format!(
        "#!/bin/sh\nprintf 'warning: \\377\\n' >&2\ni=0\nwhile [ $i -lt 4000 ]; do echo \"warning: filler line $i of stderr output\" >&2; i=$((i+1)); done\necho 'error: the real failure' >&2\nprintf '{{\"attr\":\"x86_64-linux.\\377\",\"attrPath\":[\"x86_64-linux\",\"\\377\"],\"error\":\"bad \\377\"}}\\n'\ni=0\nwhile [ $i -lt 2000 ]; do printf '{job}' $i $i; i=$((i+1)); done\nexit 1\n"
    );
    std::fs::write(&program, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flake = tempfile::tempdir().unwrap();
    write_flake(flake.path(), "{ checks = { }; }");
    let mut req = EvalRequest::new(flake.path(), "checks");
    req.check_cache_status = false;
    req.evaluator = EvaluatorChoice::NixEvalJobs(program);
    let (r, jobs) = run_with_deadline(&nix, &req).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("error: the real failure"), "{e}");
    assert!(e.len() < 64 * 1024, "stderr is capped: {} bytes", e.len());
    assert_eq!(
        jobs["x86_64-linux.\u{fffd}"].error.as_deref(),
        Some("bad \u{fffd}")
    );
    assert!(jobs.contains_key("x86_64-linux.j1999"));
}

#[tokio::test]
async fn flake_directories_with_spaces_and_hashes_evaluate() {
    let nix = nix().await;
    let top = tempfile::tempdir().unwrap();
    // Outside git.
    let plain = top.path().join("sp ace");
    write_flake(
        &plain,
        r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#,
    );
    let (r, jobs) = run(&nix, &builtin(&plain, 1)).await;
    r.unwrap();
    assert_eq!(jobs.keys().collect::<Vec<_>>(), ["x86_64-linux.a"]);

    // Inside a git work tree: still only tracked files are visible.
    let repo = top.path().join("re po#1");
    write_flake(
        &repo.join("sub dir"),
        r#"{ checks.x86_64-linux = if builtins.pathExists ./untracked.nix
          then { sees-untracked = x "u" "echo > $out"; }
          else { tracked-only = x "t" "echo > $out"; }; }"#,
    );
    std::fs::write(repo.join("sub dir/untracked.nix"), "{ }").unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "sub dir/flake.nix"]);
    // Dirty (nothing committed yet), then clean.
    for commit in [false, true] {
        if commit {
            git(&[
                "-c",
                "user.name=kiln",
                "-c",
                "user.email=kiln@example.org",
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "-m",
                "one",
            ]);
        }
        for workers in [1, 2] {
            let (r, jobs) = run(&nix, &builtin(&repo.join("sub dir"), workers)).await;
            r.unwrap();
            assert_eq!(
                jobs.keys().collect::<Vec<_>>(),
                ["x86_64-linux.tracked-only"],
                "committed: {commit}"
            );
        }
    }
}

#[tokio::test]
async fn a_memory_cap_too_small_to_start_nix_says_to_raise_it() {
    let nix = nix().await;
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ checks.x86_64-linux.a = x "a" "echo > $out"; }"#,
    );
    for workers in [1, 2] {
        let mut req = builtin(dir.path(), workers);
        req.max_memory_mib = 50;
        let (r, jobs) = run(&nix, &req).await;
        let e = r.unwrap_err();
        assert!(matches!(e, EvalError::Flake { .. }), "{e}");
        assert!(
            e.to_string().ends_with("raise --eval-max-memory-size)"),
            "{e}"
        );
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        assert!(jobs.is_empty());
    }
}
