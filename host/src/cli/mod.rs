//! Command-line parsing and dispatch. Each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_upload;
mod plugin;
pub(crate) mod token;

/// Kiln: CI for Nix flakes.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the larger variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate and build one flake's checks locally, as CI would, and exit.
    Run(Box<kiln_engine::cli::RunArgs>),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect, test and scaffold plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run the CI service: receive forge webhooks and store them durably.
    Serve(crate::serve::ServeArgs),
    /// Create, revoke and list API tokens for `kiln serve`.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// Entry point of the `kiln` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Plugin(cmd) => plugin::main(cmd),
        Command::Bench(cmd) => bench::main(cmd),
        Command::Serve(args) => crate::serve::main(args),
        Command::Token(cmd) => token::main(cmd),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `kiln run` with post-build steps (the operator's defaults and the
/// repository's) run by the plugin host, under the grants of `--config`
/// (or none). A `default_branch` in `[projects."FLAKE"]` stands in for
/// `--default-branch`.
fn run(mut args: kiln_engine::cli::RunArgs) -> ExitCode {
    let config = match &args.config {
        // A missing file is reported by the engine's own check.
        Some(path) if path.is_file() => match crate::config::KilnConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kiln run: {e}");
                return ExitCode::from(2);
            }
        },
        _ => crate::config::KilnConfig::default(),
    };
    if args.default_branch.is_none() {
        args.default_branch = config.project(&args.flake).default_branch;
    }
    match post_build_hook(config) {
        Ok(hook) => kiln_engine::cli::main_with(args, Some(hook)),
        Err(e) => {
            eprintln!("kiln run: {e}");
            ExitCode::from(2)
        }
    }
}

fn post_build_hook(
    config: crate::config::KilnConfig,
) -> Result<std::sync::Arc<dyn kiln_engine::run::PostBuildHook>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let host = rt.block_on(async {
        // A missing `nix` is reported by the run itself, with exit 2.
        let nix = kiln_nix::Nix::detect().await.ok();
        crate::plugins::PluginHost::start(config, nix).await
    });
    let host = host.map_err(|e| format!("{e:#}"))?;
    Ok(std::sync::Arc::new(crate::post_build::PluginSteps::new(
        std::sync::Arc::new(host),
    )))
}
