//! A small binary over the engine library, without the Wasmtime-heavy host:
//! `run` behaves as `kiln run`, `bench-scheduler` and `bench-run` run the
//! benchmarks (build with `--release` for figures).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// As `kiln run`.
    Run(Box<kiln_engine::cli::RunArgs>),
    /// The scheduler benchmark.
    BenchScheduler(kiln_engine::bench::SchedulerBenchArgs),
    /// The end-to-end build benchmark.
    BenchRun(kiln_engine::bench::RunBenchArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => kiln_engine::cli::main(*args),
        Command::BenchScheduler(args) => kiln_engine::bench::scheduler_bench(args),
        Command::BenchRun(args) => kiln_engine::bench::run_bench(args),
    }
}
