//! The `nix-eval-jobs` path: run it with the flags buildbot-nix uses and
//! normalise its JSON lines into [`EvalJob`]s.
//!
//! Owns the command line and every recorded line shape (`cacheStatus` and the
//! older `isCached`, errors, intermediate `attrs` lines). It must not
//! interpret jobs beyond that.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use kiln_nix::{Nix, error_message, plain_command};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::sync::mpsc;

use super::{
    EvalError, EvalRequest, EvalSummary, Evaluator, FlakeRef, MAX_LINE_BYTES, cache, drain_capped,
    next_line_lossy, tree::attr_name,
};

/// stderr lines kept from the start and from the end for error messages.
const MAX_STDERR_LINES: usize = 200;
use crate::job::{CacheStatus, EvalJob};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    attr: Option<String>,
    attr_path: Option<Vec<String>>,
    drv_path: Option<String>,
    #[serde(default)]
    outputs: BTreeMap<String, Option<String>>,
    system: Option<String>,
    cache_status: Option<String>,
    is_cached: Option<bool>,
    error: Option<String>,
    required_system_features: Option<Value>,
    meta: Option<Value>,
    attrs: Option<Value>,
}

/// Features from a list or a space-separated string.
pub(super) fn features(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// Parse one stdout line of nix-eval-jobs. `Ok(None)` for lines that are not
/// jobs (intermediate `attrs` lines of some versions).
pub fn parse_line(line: &str) -> Result<Option<EvalJob>, String> {
    let l: Line = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    if l.attrs.is_some() && l.drv_path.is_none() && l.error.is_none() {
        return Ok(None);
    }
    let attr_path = match (l.attr_path, &l.attr) {
        (Some(p), _) => p,
        (None, Some(a)) => a.split('.').map(str::to_string).collect(),
        (None, None) => return Err(format!("line without `attr`: {line}")),
    };
    let attr = l.attr.unwrap_or_else(|| attr_name(&attr_path));
    if let Some(error) = l.error {
        return Ok(Some(EvalJob {
            attr,
            attr_path,
            system: l.system.unwrap_or_default(),
            drv_path: None,
            outputs: BTreeMap::new(),
            cache_status: CacheStatus::Unknown,
            required_system_features: Vec::new(),
            error: Some(error.trim().to_string()),
        }));
    }
    let cache_status = match (l.cache_status.as_deref(), l.is_cached) {
        (Some("local"), _) => CacheStatus::Local,
        (Some("cached"), _) => CacheStatus::Cached,
        (Some("notBuilt"), _) => CacheStatus::NotBuilt,
        (_, Some(true)) => CacheStatus::Cached,
        (_, Some(false)) => CacheStatus::NotBuilt,
        _ => CacheStatus::Unknown,
    };
    let required_system_features = match &l.required_system_features {
        Some(v) => features(Some(v)),
        None => features(
            l.meta
                .as_ref()
                .and_then(|m| m.get("requiredSystemFeatures")),
        ),
    };
    Ok(Some(EvalJob {
        attr,
        attr_path,
        system: l.system.unwrap_or_default(),
        drv_path: Some(
            l.drv_path
                .ok_or_else(|| format!("job without drvPath: {line}"))?,
        ),
        outputs: l
            .outputs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect(),
        cache_status,
        required_system_features,
        error: None,
    }))
}

/// Run `program` (nix-eval-jobs) for `req`, streaming jobs into `tx`.
pub async fn evaluate(
    nix: &Nix,
    program: &Path,
    req: &EvalRequest,
    tx: mpsc::Sender<EvalJob>,
) -> Result<EvalSummary, EvalError> {
    let mut cmd = plain_command(program);
    cmd.args(["--option", "extra-experimental-features"])
        .arg(kiln_nix::EXPERIMENTAL_FEATURES)
        .arg("--workers")
        .arg(req.workers.max(1).to_string())
        .arg("--force-recurse");
    if req.max_memory_mib > 0 {
        cmd.arg("--max-memory-size")
            .arg(req.max_memory_mib.to_string());
    }
    if req.check_cache_status {
        cmd.arg("--check-cache-status");
    }
    if let Some(dir) = &req.gc_roots_dir {
        cmd.arg("--gc-roots-dir").arg(dir);
    }
    if let Some(lock) = &req.reference_lock_file {
        cmd.arg("--reference-lock-file").arg(lock);
    }
    // `--flake` is a switch; the installable is the positional argument.
    let flake_ref = FlakeRef::new(&req.flake_dir).await?;
    cmd.arg("--flake")
        .arg(flake_ref.installable(&req.attribute));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| EvalError::NixEvalJobs(format!("cannot start {}: {e}", program.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    // Drained to EOF whatever it holds, keeping only the head and tail.
    let stderr_task = tokio::spawn(drain_capped(stderr, MAX_STDERR_LINES));
    // nix-eval-jobs checks the cache itself; the forwarder only adds roots
    // when nix-eval-jobs did not (it always does when given the flag).
    let (jtx, jrx) = mpsc::unbounded_channel();
    let forward = tokio::spawn(cache::forward(nix.clone(), false, None, jrx, tx));
    let mut lines = BufReader::new(stdout);
    let mut bad = None;
    let mut cancelled = false;
    // Read to EOF even past bad lines, so nix-eval-jobs never blocks on a
    // full pipe; when the receiver is gone, stop it instead.
    while let Some(line) = next_line_lossy(&mut lines, MAX_LINE_BYTES).await {
        if cancelled || line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(Some(mut job)) => {
                super::complete_job(&mut job, &req.attribute);
                if jtx.send(job).is_err() {
                    cancelled = true;
                    let _ = child.start_kill();
                }
            }
            Ok(None) => {}
            Err(e) => {
                if bad.is_none() {
                    bad = Some(e.chars().take(1000).collect::<String>());
                }
            }
        }
    }
    drop(jtx);
    let status = child
        .wait()
        .await
        .map_err(|e| EvalError::NixEvalJobs(e.to_string()))?;
    let stderr = stderr_task.await.unwrap_or_default();
    let counts = forward
        .await
        .map_err(|e| EvalError::NixEvalJobs(e.to_string()))??;
    if !status.success() {
        let message = error_message(&stderr);
        if counts.jobs == 0 {
            return Err(whole_failure(req, message));
        }
        return Err(EvalError::NixEvalJobs(format!("{status}: {message}")));
    }
    if let Some(e) = bad {
        return Err(EvalError::NixEvalJobs(format!(
            "unexpected output line: {e}"
        )));
    }
    Ok(EvalSummary {
        evaluator: Evaluator::NixEvalJobs,
        jobs: counts.jobs,
        errors: counts.errors,
        processes: 1,
    })
}

/// Classify a failure before any job as a missing attribute or a broken flake.
pub(super) fn whole_failure(req: &EvalRequest, message: String) -> EvalError {
    if message.contains("does not provide attribute") {
        EvalError::AttributeMissing {
            flake: req.flake_dir.display().to_string(),
            attribute: req.attribute.clone(),
        }
    } else {
        let mut message = one_line(&message);
        if req.max_memory_mib > 0 && looks_out_of_memory(&message) {
            message.push_str(&format!(
                " (the memory cap is {} MiB; raise --eval-max-memory-size)",
                req.max_memory_mib
            ));
        }
        EvalError::Flake {
            flake: req.flake_dir.display().to_string(),
            message,
        }
    }
}

/// Whether a message looks like a process that could not map or allocate
/// memory (as under a too small address-space cap).
pub(super) fn looks_out_of_memory(message: &str) -> bool {
    [
        "failed to map segment",
        "error while loading shared libraries",
        "cannot allocate memory",
        "out of memory",
        "bad_alloc",
        "cannot mmap",
        "mmap failed",
    ]
    .iter()
    .any(|m| message.to_ascii_lowercase().contains(m))
}

/// Nix's first `error:` line plus its location, on one line, with the
/// store copy of the source shown as a relative path:
/// `syntax error, unexpected ';' at flake.nix:1:35`.
pub fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return "nix failed without a message".into();
    };
    let first = first.strip_prefix("error:").unwrap_or(first).trim();
    let at = lines
        .find_map(|l| l.strip_prefix("at "))
        .map(|l| l.trim_end_matches(':'))
        .map(|l| match l.strip_prefix("/nix/store/") {
            Some(rest) => rest.split_once('/').map_or(l, |(_, rel)| rel),
            None => l,
        });
    match at {
        Some(at) => format!("{first} at {at}"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_failures_fit_on_one_line() {
        let m = "error: syntax error, unexpected ';'\n\n       at /nix/store/435q3ji2lgi61alz400nblq61799fafj-source/flake.nix:1:35:\n\n            1| { outputs = { self }: { checks = ; }; }\n             |                                   ^";
        assert_eq!(
            one_line(m),
            "syntax error, unexpected ';' at flake.nix:1:35"
        );
        assert_eq!(one_line("error: boom\n"), "boom");
        assert_eq!(one_line(""), "nix failed without a message");
        assert!(looks_out_of_memory(
            "nix: error while loading shared libraries: libnixexpr.so: failed to map segment from shared object"
        ));
        assert!(!looks_out_of_memory("syntax error, unexpected ';'"));
    }

    #[test]
    fn parses_recorded_lines() {
        let j = parse_line(r#"{"attr":"x86_64-linux.hello","attrPath":["x86_64-linux","hello"],"cacheStatus":"notBuilt","drvPath":"/nix/store/a-hello.drv","isCached":false,"name":"hello","neededBuilds":["/nix/store/a-hello.drv"],"neededSubstitutes":[],"outputs":{"out":"/nix/store/b-hello"},"system":"x86_64-linux"}"#).unwrap().unwrap();
        assert_eq!(j.attr, "x86_64-linux.hello");
        assert_eq!(j.cache_status, CacheStatus::NotBuilt);
        assert_eq!(j.outputs["out"], "/nix/store/b-hello");
        let j =
            parse_line(r#"{"attr":"x.\"a.b\"","attrPath":["x","a.b"],"error":"error: boom\n"}"#)
                .unwrap()
                .unwrap();
        assert_eq!(j.error.as_deref(), Some("error: boom"));
        assert_eq!(j.drv_path, None);
        let j = parse_line(r#"{"attr":"old","drvPath":"/nix/store/c.drv","isCached":true,"outputs":{"out":"/nix/store/d","dev":null},"system":"aarch64-linux","meta":{"requiredSystemFeatures":["kvm"]}}"#).unwrap().unwrap();
        assert_eq!(j.cache_status, CacheStatus::Cached);
        assert_eq!(j.attr_path, vec!["old".to_string()]);
        assert_eq!(j.outputs.len(), 1);
        assert_eq!(j.required_system_features, vec!["kvm".to_string()]);
        assert_eq!(
            parse_line(r#"{"attr":"x","attrPath":["x"],"attrs":["a"]}"#).unwrap(),
            None
        );
        assert!(parse_line("not json").is_err());
    }
}
