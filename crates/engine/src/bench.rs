//! Benchmarks behind `kiln bench scheduler` and `kiln bench run`: they print
//! figures and ratios against baselines measured in the same process, and
//! never assert on time (tests do not call them for timing).
//!
//! `scheduler`: synthetic evaluation output (N jobs, ~10 edges each) fed
//! through the derivation graph and the scheduler to "all dispatched" with
//! instant fake builds; prints time and bytes per job. `run`: 200 small fresh
//! checks built by `kiln run --max-jobs 2` against (a) one `nix eval` plus one
//! `nix-store --realise -j 2` and (b) one `nix-store --realise` per derivation
//! two at a time, each with its own salted derivations. Nothing here may be
//! used by a run.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use kiln_nix::Nix;
use tokio::sync::watch;

use crate::graph::DrvGraph;
use crate::job::JobStatus;
use crate::run::{RunOptions, run};
use crate::scheduler::Scheduler;

/// Arguments of `kiln bench scheduler`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerBenchArgs {
    /// Job counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub jobs: Vec<usize>,
    /// Dependency edges per job (the first jobs have fewer).
    #[arg(long, default_value_t = 10)]
    pub edges_per_job: usize,
    /// Jobs handed out per dispatch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
}

/// Arguments of `kiln bench run`.
#[derive(Debug, Clone, Args)]
pub struct RunBenchArgs {
    /// Independent checks.
    #[arg(long, default_value_t = 150)]
    pub independent: usize,
    /// Checks that each depend on one independent check.
    #[arg(long, default_value_t = 50)]
    pub dependent: usize,
    /// Build slots for every contender.
    #[arg(long, default_value_t = 2)]
    pub max_jobs: usize,
}

/// Synthetic evaluation output: drv paths and, per job, the indices of its
/// input jobs (always earlier ones, so the graph is a DAG).
struct Synthetic {
    drvs: Vec<String>,
    inputs: Vec<Vec<u32>>,
    edges: usize,
}

fn synthetic(n: usize, per_job: usize) -> Synthetic {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let drvs: Vec<String> = (0..n)
        .map(|i| {
            let h = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
            format!("/nix/store/{h:032x}-job-{i}.drv")
        })
        .collect();
    let mut edges = 0;
    let inputs = (0..n)
        .map(|i| {
            let k = per_job.min(i);
            let mut v: Vec<u32> = (0..k).map(|_| (rand() % i as u64) as u32).collect();
            v.sort_unstable();
            v.dedup();
            edges += v.len();
            v
        })
        .collect();
    Synthetic {
        drvs,
        inputs,
        edges,
    }
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One scheduler measurement: returns (elapsed, bytes per job, edges).
fn scheduler_once(n: usize, per_job: usize, batch: usize) -> (Duration, f64, usize, usize) {
    let input = synthetic(n, per_job);
    let before = rss_bytes();
    let start = Instant::now();
    let mut graph = DrvGraph::new();
    let mut sched = Scheduler::with_capacity(n);
    let mut failed = Vec::new();
    for (i, drv) in input.drvs.iter().enumerate() {
        graph.add_derivation(
            drv,
            input.inputs[i]
                .iter()
                .map(|&j| input.drvs[j as usize].as_str()),
        );
        let id = sched.add_job(0, &[]);
        let (deps, above) = graph.attach_job(drv, id);
        for d in deps {
            sched.add_dependency(id, d, &mut failed);
        }
        for a in above {
            sched.add_dependency(a, id, &mut failed);
        }
    }
    sched.finish_graph();
    let mut dispatched = 0usize;
    let mut out = Vec::with_capacity(batch);
    while sched.unfinished() > 0 {
        out.clear();
        sched.pop_batch(0, batch, &mut out);
        if out.is_empty() {
            break;
        }
        dispatched += out.len();
        for &id in &out {
            sched.complete(id, JobStatus::Succeeded, &mut failed);
        }
    }
    let elapsed = start.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(dispatched, n, "every job must be dispatched exactly once");
    let per_job_bytes = grown as f64 / n as f64;
    let exact = sched.heap_bytes();
    drop(graph);
    (elapsed, per_job_bytes, input.edges, exact / n)
}

/// `kiln bench scheduler`.
pub fn scheduler_bench(args: SchedulerBenchArgs) -> ExitCode {
    println!("scheduler benchmark: synthetic DAG, instant builds, one thread");
    for &n in &args.jobs {
        let (t, per_job, edges, sched_bytes) = scheduler_once(n, args.edges_per_job, args.batch);
        println!(
            "  {n:>9} jobs {edges:>10} edges: {:>8.1} ms  {:>7.0} B/job (RSS growth incl. graph)  {sched_bytes} B/job (scheduler alone)",
            t.as_secs_f64() * 1000.0,
            per_job
        );
    }
    ExitCode::SUCCESS
}

/// A flake with `independent` + `dependent` salted checks for `system`.
fn write_flake(dir: &Path, system: &str, independent: usize, dependent: usize, salt: &str) {
    let text = format!(
        r#"{{
  outputs = {{ self }}:
    let
      mk = name: deps: derivation {{
        inherit name deps;
        system = "{system}";
        builder = "/bin/sh";
        args = [ "-c" "echo building ${{name}}; echo ok > $out" ];
        salt = "{salt}";
      }};
      range = n: builtins.genList (i: i) n;
      base = builtins.listToAttrs (map (i: {{ name = "c${{toString i}}"; value = mk "c${{toString i}}" [ ]; }}) (range {independent}));
      dependents = builtins.listToAttrs (map (i: {{
        name = "d${{toString i}}";
        value = mk "d${{toString i}}" [ base."c${{toString (i - (i / {independent}) * {independent})}}" ];
      }}) (range {dependent}));
    in {{ checks.{system} = base // dependents; }};
}}
"#
    );
    std::fs::write(dir.join("flake.nix"), text).expect("writing the benchmark flake");
}

fn salt(tag: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("kiln-bench-{tag}-{t}-{}", std::process::id())
}

/// One `nix eval` of every check's drvPath, dependencies first.
async fn eval_drvs(nix: &Nix, dir: &Path, system: &str) -> Vec<String> {
    let mut cmd = nix.command("nix");
    cmd.args(["eval", "--json", "--apply"])
        .arg("checks: builtins.attrValues (builtins.mapAttrs (n: d: d.drvPath) checks)")
        .arg(format!("{}#checks.{system}", dir.display()))
        .stdout(Stdio::piped());
    let out = cmd.output().await.expect("running nix eval");
    assert!(
        out.status.success(),
        "nix eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut drvs: Vec<String> = serde_json::from_slice(&out.stdout).expect("nix eval --json");
    // Independent checks (c…) before dependents (d…), as a scheduler would.
    drvs.sort_by_key(|d| d.contains("-d"));
    drvs
}

async fn realise(nix: &Nix, drvs: &[String], jobs: usize) {
    let mut cmd = nix.command("nix-store");
    cmd.arg("--realise")
        .args(drvs)
        .args(["-j", &jobs.to_string(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = cmd.status().await.expect("running nix-store");
    assert!(status.success(), "nix-store --realise failed");
}

async fn run_bench_async(args: RunBenchArgs) -> Result<(), String> {
    let nix = Nix::detect().await.map_err(|e| e.to_string())?;
    let system = nix.current_system().await.map_err(|e| e.to_string())?;
    let n = args.independent + args.dependent;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mk = |tag: &str| {
        let dir = tmp.path().join(tag);
        std::fs::create_dir_all(&dir).expect("creating a flake directory");
        write_flake(&dir, &system, args.independent, args.dependent, &salt(tag));
        dir
    };
    let (a_dir, b_dir, k_dir) = (mk("floor"), mk("per-drv"), mk("kiln"));

    let start = Instant::now();
    let drvs = eval_drvs(&nix, &a_dir, &system).await;
    realise(&nix, &drvs, args.max_jobs).await;
    let floor = start.elapsed();

    let start = Instant::now();
    let drvs = eval_drvs(&nix, &b_dir, &system).await;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_jobs));
    let mut set = tokio::task::JoinSet::new();
    for d in drvs {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let nix = nix.clone();
        set.spawn(async move {
            realise(&nix, &[d], 1).await;
            drop(permit);
        });
    }
    while set.join_next().await.is_some() {}
    let per_drv = start.elapsed();

    let start = Instant::now();
    let mut opts = RunOptions::new(k_dir.display().to_string(), tmp.path().join("logs"));
    opts.max_jobs = args.max_jobs;
    let (_keep, cancel) = watch::channel(false);
    let outcome = run(opts, cancel).await.map_err(|e| e.to_string())?;
    let kiln = start.elapsed();
    let s = &outcome.report.summary;
    if s.succeeded != n {
        return Err(format!("kiln built {} of {n} checks: {s:?}", s.succeeded));
    }
    println!(
        "run benchmark: {n} fresh checks ({} independent, {} dependent), --max-jobs {}",
        args.independent, args.dependent, args.max_jobs
    );
    println!(
        "  (a) nix eval + one nix-store --realise -j {}: {:>7.2} s",
        args.max_jobs,
        floor.as_secs_f64()
    );
    println!(
        "  (b) one nix-store --realise per derivation:  {:>7.2} s",
        per_drv.as_secs_f64()
    );
    println!(
        "  kiln run --max-jobs {}:                       {:>7.2} s",
        args.max_jobs,
        kiln.as_secs_f64()
    );
    println!(
        "  kiln / (a) = {:.2} (target ≤ 1.10)   (b) / kiln = {:.2} (target ≥ 2)",
        kiln.as_secs_f64() / floor.as_secs_f64(),
        per_drv.as_secs_f64() / kiln.as_secs_f64()
    );
    Ok(())
}

/// `kiln bench run`.
pub fn run_bench(args: RunBenchArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln bench run: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run_bench_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln bench run: {e}");
            ExitCode::from(2)
        }
    }
}
