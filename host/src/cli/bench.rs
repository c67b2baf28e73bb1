//! `kiln bench …`: benchmarks that print their figures (never run by the
//! test suite). `plugin-call` and `plugin-startup` measure the runtime;
//! `scheduler` and `run` are the pipeline's, from `kiln-engine`; `upload`
//! (in `bench_upload.rs`) is the binary-cache plugin against `nix copy`;
//! `serve` (in `bench_serve.rs`) is the `kiln serve` service; `ui` (in
//! `bench_ui.rs`) its web UI.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kiln_runtime::bindings::post_build_types::{BuildInfo, Output};
use kiln_runtime::context::{KvStore, LogSink, NoStore, StaticSecrets};
use kiln_runtime::{CallContext, CompileCache, Grant, Limits, Runtime};

// Declared here rather than in `cli/mod.rs`: only `bench` uses it.
#[path = "bench_ingest.rs"]
mod bench_ingest;
#[path = "bench_serve.rs"]
mod bench_serve;
#[path = "bench_ui.rs"]
mod bench_ui;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Per-call overhead of a trivial post-build plugin: fresh store,
    /// instantiate from InstancePre, call, drop.
    PluginCall(PluginCallArgs),
    /// Start-up time of all first-party plugins with a cold and a warm
    /// compile cache.
    PluginStartup(PluginStartupArgs),
    /// The scheduler alone on synthetic graphs with instant builds.
    Scheduler(kiln_engine::bench::SchedulerBenchArgs),
    /// `kiln run` on 200 small fresh checks against the floor and one Nix
    /// process per derivation.
    Run(kiln_engine::bench::RunBenchArgs),
    /// The binary-cache plugin uploading a 200 MiB closure to a local S3
    /// server, against `nix copy --to http://…?compression=zstd`.
    Upload(super::bench_upload::UploadArgs),
    /// `kiln serve`: a push webhook to final statuses against the Nix
    /// floor, 50,000 jobs persisted, and `GET /api/v1/runs/{id}` under load.
    Serve(bench_serve::ServeBenchArgs),
    /// `kiln serve` webhook ingest: signed pushes accepted and stored per
    /// second with group commit, against one transaction per request.
    Ingest(bench_ingest::IngestArgs),
    /// The web UI: first byte of a 5,000-job run page against the same
    /// jobs as JSON, and the browser's time to show its job graph.
    Ui(bench_ui::UiBenchArgs),
}

#[derive(Debug, Args)]
pub struct PluginCallArgs {
    /// Calls to time.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// The plugin component to call (default: the trivial test plugin).
    #[arg(long)]
    plugin: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct PluginStartupArgs {
    /// Repetitions of each measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// Run a benchmark.
pub fn main(cmd: BenchCommand) -> ExitCode {
    match cmd {
        BenchCommand::Scheduler(args) => kiln_engine::bench::scheduler_bench(args),
        BenchCommand::Run(args) => kiln_engine::bench::run_bench(args),
        BenchCommand::PluginCall(args) => block_on(plugin_call(args)),
        BenchCommand::PluginStartup(args) => block_on(plugin_startup(args)),
        BenchCommand::Upload(args) => block_on(super::bench_upload::upload(args)),
        BenchCommand::Serve(args) => bench_serve::main(args),
        BenchCommand::Ingest(args) => bench_ingest::main(args),
        BenchCommand::Ui(args) => bench_ui::main(args),
    }
}

fn block_on(f: impl Future<Output = Result<(), String>>) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn plugin_call(args: PluginCallArgs) -> Result<(), String> {
    let path = args.plugin.unwrap_or_else(|| {
        std::path::Path::new(crate::builtin::WASM_DIR).join("kiln_test_noop.wasm")
    });
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let rt = Runtime::new(CompileCache::disabled()).map_err(|e| format!("{e:#}"))?;
    let plugin = rt
        .load(&path.display().to_string(), &bytes)
        .await
        .map_err(|e| e.to_string())?;
    let build = BuildInfo {
        project: "bench".into(),
        attr: "x86_64-linux.noop".into(),
        system: "x86_64-linux".into(),
        drv_path: "/nix/store/00000000000000000000000000000000-noop.drv".into(),
        outputs: vec![Output {
            name: "out".into(),
            path: "/nix/store/00000000000000000000000000000000-noop".into(),
        }],
        branch: Some("main".into()),
        pull_request: None,
        is_default_branch: true,
        rev: None,
        cached: false,
        signatures: Vec::new(),
    };
    let grant = Arc::new(Grant::default());
    let secrets = Arc::new(StaticSecrets::default());
    let store = Arc::new(NoStore);
    let kv = Arc::new(KvStore::default());
    let limits = Limits::default();
    let config = Vec::new();
    // Every call gets a fresh context, as a build does.
    let context = || CallContext {
        plugin: plugin.info.name.clone(),
        project: "bench".into(),
        grant: grant.clone(),
        secrets: secrets.clone(),
        store: store.clone(),
        kv: kv.clone(),
        log: LogSink::new(1 << 20),
    };
    let mut times = Vec::with_capacity(args.calls);
    let warmup = (args.calls / 10).max(100);
    for i in 0..warmup + args.calls {
        let ctx = context();
        let start = Instant::now();
        let called = rt
            .run_post_build(&plugin, &build, &config, ctx, limits)
            .await;
        let elapsed = start.elapsed();
        called.result.map_err(|e| e.to_string())?;
        if i >= warmup {
            times.push(elapsed);
        }
    }
    times.sort();
    let total: Duration = times.iter().sum();
    let ctx = context();
    let mut live = rt
        .time_calls_on_live_instance(&plugin, &build, &config, ctx, args.calls)
        .await
        .map_err(|e| e.to_string())?;
    live.sort();
    println!(
        "plugin-call: {} calls of {} (fresh store + instantiate from InstancePre + call + drop)",
        args.calls, plugin.info.name
    );
    println!("  median {:.1} µs", micros(percentile(&times, 0.5)));
    println!("  p99    {:.1} µs", micros(percentile(&times, 0.99)));
    println!("  mean   {:.1} µs", micros(total / times.len() as u32));
    println!(
        "  baseline, same run: a call on one live instance, median {:.1} µs, p99 {:.1} µs",
        micros(percentile(&live, 0.5)),
        micros(percentile(&live, 0.99))
    );
    println!(
        "  fresh-instance / live-instance median ratio {:.1}; target ≤ 30 µs median (prototype ~44 µs)",
        percentile(&times, 0.5).as_secs_f64() / percentile(&live, 0.5).as_secs_f64()
    );
    Ok(())
}

async fn plugin_startup(args: PluginStartupArgs) -> Result<(), String> {
    let plugins = crate::builtin::BUILTIN;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..args.runs.max(1) {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cache_dir = dir.path().join("cache");
        for times in [&mut cold, &mut warm] {
            let start = Instant::now();
            let rt = Runtime::new(CompileCache::open(&cache_dir).map_err(|e| format!("{e:#}"))?)
                .map_err(|e| format!("{e:#}"))?;
            for (file, bytes) in plugins {
                rt.load(file, bytes).await.map_err(|e| e.to_string())?;
            }
            times.push(start.elapsed());
        }
    }
    cold.sort();
    warm.sort();
    let (c, w) = (percentile(&cold, 0.5), percentile(&warm, 0.5));
    println!(
        "plugin-startup: {} first-party plugin(s), engine + load + describe, median of {} runs",
        plugins.len(),
        args.runs
    );
    println!("  cold compile cache {:.1} ms", millis(c));
    println!("  warm compile cache {:.1} ms", millis(w));
    println!(
        "  warm/cold ratio    {:.3}",
        w.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}
