//! Kiln's own evaluator on the `nix` CLI, for machines without nix-eval-jobs.
//!
//! One `nix eval <flake>#<attribute> --apply <walk>` process evaluates many
//! attributes and traces each as soon as it is done (see [`super::tree`]), so
//! jobs stream out while the process runs. With several workers, a full walk
//! from the top races a cheap enumeration walk; when the enumeration ends
//! first and splitting pays off (measured load time against the walk's rate),
//! the full walk keeps the next slice of derivations and fresh processes take
//! the others, each capped at `max_memory_mib`. When a process dies
//! (`abort`, a missing attribute, a `throw`, out of memory) the attribute it
//! was on gets Nix's message as its error and a new process resumes after it.
//! This module must not decide anything about builds.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_nix::{Nix, error_message, limit_memory};
use tokio::io::BufReader;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::nix_eval_jobs::{features, whole_failure};
use super::tree::{Cursor, MARKER, Message, apply_expr, attr_name, parse_trace};
use super::{
    EvalError, EvalRequest, EvalSummary, Evaluator, FlakeRef, MAX_LINE_BYTES, cache,
    next_line_lossy,
};
use crate::job::{CacheStatus, EvalJob};

/// Bytes of encoded roots per process: keeps `--apply` under Linux's
/// 128 KiB limit for one argument.
const MAX_ROOTS_BYTES: usize = 96 * 1024;
/// Non-trace stderr lines kept for an error message.
const MAX_ERROR_LINES: usize = 400;

type Path = Vec<String>;

struct Ctx {
    nix: Nix,
    req: EvalRequest,
    /// `<flake>#<attribute>` as Nix takes it.
    installable: String,
    jobs: mpsc::UnboundedSender<EvalJob>,
    processes: AtomicUsize,
    /// Attribute paths already sent (the racing walks overlap).
    sent: Mutex<HashSet<Path>>,
    /// Derivations handed to split-off workers: the racing full walk stops
    /// when it reaches one.
    claimed: Mutex<HashSet<Path>>,
    /// Jobs the racing full walk sent.
    race_done: AtomicUsize,
}

/// Which walk a process belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Classify nodes only; return derivation paths.
    Enumerate,
    /// Instantiate derivations in `roots`.
    Full,
    /// The full walk from the top that races the enumeration.
    Racing,
}

/// Evaluate `req` with the `nix` CLI, streaming jobs into `tx`.
pub async fn evaluate(
    nix: &Nix,
    req: &EvalRequest,
    tx: mpsc::Sender<EvalJob>,
) -> Result<EvalSummary, EvalError> {
    let (jtx, jrx) = mpsc::unbounded_channel();
    let forward = tokio::spawn(cache::forward(
        nix.clone(),
        req.check_cache_status,
        req.gc_roots_dir.clone(),
        jrx,
        tx,
    ));
    let flake_ref = FlakeRef::new(&req.flake_dir).await?;
    let ctx = Arc::new(Ctx {
        nix: nix.clone(),
        req: req.clone(),
        installable: flake_ref.installable(&req.attribute),
        jobs: jtx,
        processes: AtomicUsize::new(0),
        sent: Mutex::new(HashSet::new()),
        claimed: Mutex::new(HashSet::new()),
        race_done: AtomicUsize::new(0),
    });
    let walked = run(ctx.clone()).await;
    let processes = ctx.processes.load(Ordering::Relaxed);
    drop(ctx);
    let forwarded = forward.await.map_err(|_| EvalError::Cancelled);
    walked?;
    let counts = forwarded??;
    Ok(EvalSummary {
        evaluator: Evaluator::Builtin,
        jobs: counts.jobs,
        errors: counts.errors,
        processes,
    })
}

async fn run(ctx: Arc<Ctx>) -> Result<(), EvalError> {
    let workers = ctx.req.workers.max(1);
    if workers == 1 {
        walk(&ctx, vec![Vec::new()], Kind::Full).await?;
        return Ok(());
    }
    let started = Instant::now();
    let racing = walk(&ctx, vec![Vec::new()], Kind::Racing);
    let enumerate = walk(&ctx, vec![Vec::new()], Kind::Enumerate);
    tokio::pin!(racing, enumerate);
    let leaves = tokio::select! {
        // Done before the enumeration: the flake was small. Dropping the
        // enumeration kills its process.
        r = &mut racing => return r.map(|_| ()),
        r = &mut enumerate => r?,
    };
    let load = started.elapsed();
    // Watch the racing walk alone for a moment to measure its rate.
    let before = ctx.race_done.load(Ordering::Relaxed);
    let window = (load / 4).clamp(Duration::from_millis(50), Duration::from_millis(1000));
    tokio::select! {
        r = &mut racing => return r.map(|_| ()),
        _ = tokio::time::sleep(window) => {}
    }
    let progress = ctx.race_done.load(Ordering::Relaxed) - before;
    let remaining: Vec<Path> = {
        let sent = ctx.sent.lock().expect("not poisoned");
        leaves.into_iter().filter(|p| !sent.contains(p)).collect()
    };
    // More evaluating processes than cores never pays (two run already).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = workers.min(cores.max(2));
    if workers < 2 || !split_pays(remaining.len(), workers, load, window, progress) {
        return racing.await.map(|_| ());
    }
    // The racing walk goes on in traversal order with the first slice; the
    // other slices are claimed by fresh processes.
    let per = remaining.len().div_ceil(workers);
    ctx.claimed
        .lock()
        .expect("not poisoned")
        .extend(remaining.iter().skip(per).cloned());
    let mut set = JoinSet::new();
    for chunk in remaining.chunks(per).skip(1) {
        let ctx = ctx.clone();
        let roots = chunk.to_vec();
        set.spawn(async move { walk(&ctx, roots, Kind::Full).await.map(|_| ()) });
    }
    racing.await?;
    while let Some(r) = set.join_next().await {
        r.map_err(|_| EvalError::Cancelled)??;
    }
    Ok(())
}

/// Whether `remaining` derivations finish sooner split over `workers`
/// processes (each paying `load` again) than left to the racing walk, which
/// did `progress` of them in `window`. No progress: split.
fn split_pays(
    remaining: usize,
    workers: usize,
    load: Duration,
    window: Duration,
    progress: usize,
) -> bool {
    if remaining < 2 {
        return false;
    }
    if progress == 0 {
        return true;
    }
    let alone = window.as_secs_f64() * remaining as f64 / progress as f64;
    load.as_secs_f64() + alone / (workers as f64) < alone
}

/// Walk `roots` in as few processes as failures allow. In a full walk every
/// derivation is sent as a job; otherwise derivation paths are returned.
/// Failures are always sent as jobs.
async fn walk(ctx: &Ctx, mut roots: Vec<Path>, kind: Kind) -> Result<Vec<Path>, EvalError> {
    let mut leaves = Vec::new();
    let top_level = roots.len() == 1 && roots[0].is_empty();
    let mut first_process = true;
    while !roots.is_empty() {
        let later = roots.split_off(take_by_size(&roots));
        let outcome = one_process(ctx, roots, kind, &mut leaves).await?;
        roots = match outcome {
            Outcome::Done => Vec::new(),
            Outcome::Stopped => return Ok(leaves),
            Outcome::Failed { mut cursor, stderr } => {
                let message = error_message(&stderr);
                if top_level && first_process && cursor.visited == 0 {
                    return Err(whole_failure(&ctx.req, message));
                }
                let Some(culprit) = cursor.next() else {
                    // Died after the last attribute: nothing is lost.
                    tracing::warn!("evaluator exited with an error after finishing: {message}");
                    roots = later;
                    first_process = false;
                    continue;
                };
                let oom = is_out_of_memory(&stderr);
                if oom && cursor.visited > 0 {
                    // Memory built up over earlier attributes: retry this one
                    // in a fresh process before blaming it.
                    cursor.rest()
                } else {
                    let message = if oom {
                        format!(
                            "error: evaluation exceeded the memory limit of {} MiB (raise --eval-max-memory-size)\n{message}",
                            ctx.req.max_memory_mib
                        )
                    } else {
                        message
                    };
                    send(ctx, error_job(culprit, message))?;
                    cursor.rest_after_current()
                }
            }
        };
        roots.extend(later);
        first_process = false;
    }
    Ok(leaves)
}

/// How many roots fit in one `--apply` argument (at least one).
fn take_by_size(roots: &[Path]) -> usize {
    let mut size = 0;
    for (i, r) in roots.iter().enumerate() {
        size += r.iter().map(|c| c.len() + 4).sum::<usize>() + 4;
        if size > MAX_ROOTS_BYTES {
            return i.max(1);
        }
    }
    roots.len()
}

enum Outcome {
    Done,
    /// The racing walk reached a claimed derivation.
    Stopped,
    Failed {
        cursor: Cursor,
        stderr: String,
    },
}

async fn one_process(
    ctx: &Ctx,
    roots: Vec<Path>,
    kind: Kind,
    leaves: &mut Vec<Path>,
) -> Result<Outcome, EvalError> {
    let full = kind != Kind::Enumerate;
    let mut cmd = ctx.nix.command("nix");
    cmd.args(["eval", "--json", "--no-write-lock-file"]);
    if let Some(lock) = &ctx.req.reference_lock_file {
        cmd.arg("--reference-lock-file").arg(lock);
    }
    cmd.arg(&ctx.installable)
        .arg("--apply")
        .arg(apply_expr(&roots, full));
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    limit_memory(&mut cmd, ctx.req.max_memory_mib);
    ctx.processes.fetch_add(1, Ordering::Relaxed);
    let mut child = cmd.spawn().map_err(|source| kiln_nix::NixError::Spawn {
        program: "nix".into(),
        source,
    })?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr);
    let mut cursor = Cursor::new(roots);
    let mut other: Vec<String> = Vec::new();
    let mut trusted = true;
    // Every line up to EOF, whatever its bytes: stopping early would leave
    // Nix blocked on a full pipe while we wait for it to exit.
    while let Some(line) = next_line_lossy(&mut lines, MAX_LINE_BYTES).await {
        if (line.starts_with(MARKER) || line.contains('\x1b'))
            && let Some(msg) = parse_trace(&line)
        {
            other.clear();
            if !cursor.advance(&msg) {
                trusted = false;
                tracing::warn!("evaluator trace out of order at {:?}", msg.p);
                continue;
            }
            if msg.k == "drv" {
                if !full {
                    leaves.push(msg.p);
                    continue;
                }
                if kind == Kind::Racing {
                    if ctx.claimed.lock().expect("not poisoned").contains(&msg.p) {
                        if let Some(pid) = child.id() {
                            // SAFETY: signalling our own child's process group.
                            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                        }
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return Ok(Outcome::Stopped);
                    }
                    ctx.race_done.fetch_add(1, Ordering::Relaxed);
                }
                send(ctx, drv_job(msg))?;
            }
        } else if other.len() < MAX_ERROR_LINES {
            other.push(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|source| kiln_nix::NixError::Spawn {
            program: "nix".into(),
            source,
        })?;
    if status.success() || !trusted {
        return Ok(Outcome::Done);
    }
    let mut stderr = other.join("\n");
    if stderr.trim().is_empty() {
        stderr = format!("error: nix eval exited with {status}");
    }
    Ok(Outcome::Failed { cursor, stderr })
}

fn is_out_of_memory(stderr: &str) -> bool {
    stderr.contains("out of memory")
        || stderr.contains("std::bad_alloc")
        || stderr.contains("Cannot allocate memory")
        || stderr.contains("GC Warning: Out of Memory")
}

/// Send a job unless an overlapping walk already sent this attribute.
fn send(ctx: &Ctx, mut job: EvalJob) -> Result<(), EvalError> {
    super::complete_job(&mut job, &ctx.req.attribute);
    if !ctx
        .sent
        .lock()
        .expect("not poisoned")
        .insert(job.attr_path.clone())
    {
        return Ok(());
    }
    ctx.jobs.send(job).map_err(|_| EvalError::Cancelled)
}

fn drv_job(msg: Message) -> EvalJob {
    EvalJob {
        attr: attr_name(&msg.p),
        attr_path: msg.p,
        system: msg.s.unwrap_or_default(),
        drv_path: msg.d,
        outputs: msg.o,
        cache_status: CacheStatus::Unknown,
        required_system_features: features(msg.f.as_ref()),
        error: None,
    }
}

fn error_job(path: Path, message: String) -> EvalJob {
    EvalJob {
        attr: attr_name(&path),
        attr_path: path,
        system: String::new(),
        drv_path: None,
        outputs: Default::default(),
        cache_status: CacheStatus::Unknown,
        required_system_features: Vec::new(),
        error: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_when_it_pays() {
        let ms = Duration::from_millis;
        // 40 done in 20 ms, 160 left: 80 ms alone vs 100 ms + 40 ms split.
        assert!(!split_pays(160, 2, ms(100), ms(20), 40));
        // 1 done in 500 ms, 100 left: 50 s alone vs 2 s + 25 s split.
        assert!(split_pays(100, 2, ms(2000), ms(500), 1));
        assert!(split_pays(100, 2, ms(2000), ms(500), 0));
        assert!(!split_pays(1, 4, ms(1), ms(500), 0));
    }
}
