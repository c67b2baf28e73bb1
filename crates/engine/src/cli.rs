//! `kiln run`'s command line: the clap arguments and the entry point that
//! builds a runtime, wires Ctrl-C to cancellation, writes `--report`,
//! `--json` and `--junit`, and maps the outcome to DESIGN.md's exit codes
//! (0 ok, 1 some job failed, 2 bad usage/config/prerequisite, 130
//! interrupted).
//!
//! It must not contain pipeline logic: that is [`crate::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use crate::failed_cache::{FailedCache, cache_home};
use crate::progress::Mode;
use crate::run::{RunOptions, run};

/// Evaluate a flake's checks and build them in dependency order, as CI would.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The flake: a directory or a git URL (`git+file://…`, `https://…`).
    #[arg(default_value = ".")]
    pub flake: String,
    /// Git revision to check out before evaluating.
    #[arg(long)]
    pub rev: Option<String>,
    /// Flake output attribute to build (default: buildbot-nix.toml's
    /// `attribute`, else `checks`).
    #[arg(long)]
    pub attribute: Option<String>,
    /// Systems to build, comma-separated (default: the host's system plus
    /// those of Nix's remote builders); jobs of other systems are reported
    /// `unsupported_system`.
    #[arg(long, value_delimiter = ',')]
    pub systems: Option<Vec<String>>,
    /// Parallel builds (default: number of cores).
    #[arg(long, short = 'j')]
    pub max_jobs: Option<usize>,
    /// Parallel evaluator processes.
    #[arg(long)]
    pub eval_workers: Option<usize>,
    /// Memory cap per evaluator process, in MiB.
    #[arg(long, value_name = "MIB")]
    pub eval_max_memory_size: Option<u64>,
    /// Fail a build that prints nothing for this many seconds (`timed_out`);
    /// 0 means no limit, as for Nix.
    #[arg(long, value_name = "SECONDS")]
    pub max_silent_time: Option<u64>,
    /// Fail a build that runs longer than this many seconds (`timed_out`);
    /// 0 means no limit, as for Nix.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Directory for per-job logs (default: ~/.cache/kiln/logs/<run>).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Remember failed builds and report them failed again without
    /// rebuilding (buildbot-nix's cacheFailedBuilds).
    #[arg(long)]
    pub cache_failed_builds: bool,
    /// Rebuild derivations that failed before (with --cache-failed-builds,
    /// failures are still recorded).
    #[arg(long)]
    pub rebuild_failed: bool,
    /// Operator configuration (kiln.toml): post-build grants, default steps
    /// and per-project settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The branch being built (for a pull request, its head branch).
    /// Default: the checked-out branch, or `?ref=` of a git URL.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// The repository's default branch. Other branches and pull requests
    /// run the post-build steps of its committed buildbot-nix.toml, never
    /// their own. Default: `default_branch` in kiln.toml's
    /// [projects."FLAKE"], else origin/HEAD (a git URL's HEAD), else `main`
    /// or `master` when that branch exists, else the checked-out branch.
    #[arg(long, value_name = "NAME")]
    pub default_branch: Option<String>,
    /// Build pull request N: post-build steps come from the default
    /// branch's buildbot-nix.toml, and plugins are told the number.
    #[arg(long, value_name = "N")]
    pub pull_request: Option<u64>,
    /// The pull request comes from a fork: steps whose plugin asks for or is
    /// granted a secret are skipped, unless kiln.toml sets
    /// `secrets_on_fork_pull_requests = true` for the project.
    #[arg(long, requires = "pull_request")]
    pub fork: bool,
}

impl RunArgs {
    /// The library options these arguments mean.
    pub fn options(&self) -> Result<RunOptions, String> {
        if let Some(c) = &self.config
            && !c.is_file()
        {
            return Err(format!(
                "--config {}: no such file; give the path of an existing kiln.toml",
                c.display()
            ));
        }
        for (flag, name) in [
            ("--branch", &self.branch),
            ("--default-branch", &self.default_branch),
        ] {
            if let Some(name) = name {
                crate::source::check_branch_name(flag, name)?;
            }
        }
        if self.max_jobs == Some(0) {
            return Err("--max-jobs must be at least 1".into());
        }
        if let Some(systems) = &self.systems {
            crate::run::check_systems(systems)?;
        }
        let log_dir = self.log_dir.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            cache_home()
                .join("kiln")
                .join("logs")
                .join(format!("{secs}-{}", std::process::id()))
        });
        let mut o = RunOptions::new(self.flake.clone(), log_dir);
        o.rev = self.rev.clone();
        o.attribute = self.attribute.clone();
        o.systems = self.systems.clone();
        if let Some(j) = self.max_jobs {
            o.max_jobs = j;
        }
        o.eval_workers = self.eval_workers;
        o.eval_max_memory_mib = self.eval_max_memory_size;
        o.max_silent_time = limit(self.max_silent_time);
        o.timeout = limit(self.timeout);
        o.failed_cache = if self.cache_failed_builds && !self.rebuild_failed {
            Some(FailedCache::new(FailedCache::default_dir()))
        } else if self.cache_failed_builds {
            // Still record failures, but never skip a build.
            Some(FailedCache::new(FailedCache::default_dir()).rebuilding())
        } else {
            None
        };
        o.change = crate::source::ChangeOptions {
            branch: self.branch.clone(),
            default_branch: self.default_branch.clone(),
            pull_request: self.pull_request,
            fork: self.fork,
        };
        o.progress = Mode::detect();
        Ok(o)
    }
}

/// `kiln run`: run, write the reports, return the contract's exit code.
pub fn main(args: RunArgs) -> ExitCode {
    main_with(args, None)
}

/// [`main`] with post-build steps run by `hook` on each job that built.
pub fn main_with(
    args: RunArgs,
    hook: Option<std::sync::Arc<dyn crate::run::PostBuildHook>>,
) -> ExitCode {
    let mut opts = match args.options() {
        Ok(o) => o,
        Err(e) => return usage_error(&e),
    };
    opts.post_build = hook;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage_error(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "kiln: interrupted; stopping builds and writing the report (Ctrl-C again to quit at once)"
                );
                let _ = cancel_tx.send(true);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                // Exiting at once skips `kill_on_drop`, and the batches run
                // in process groups of their own: kill them first.
                kiln_nix::build::kill_live_groups();
                std::process::exit(130);
            }
        });
        let outcome = match run(opts, cancel_rx).await {
            Ok(o) => o,
            Err(e) => return usage_error(&e.to_string()),
        };
        let report = &outcome.report;
        if let Some(path) = &args.report
            && let Err(e) = report.write(path)
        {
            return usage_error(&format!("cannot write --report {}: {e}", path.display()));
        }
        if let Some(path) = &args.junit
            && let Err(e) = crate::junit::write(report, path)
        {
            return usage_error(&format!("cannot write --junit {}: {e}", path.display()));
        }
        if args.json {
            println!("{}", report.to_json());
        }
        if outcome.interrupted {
            ExitCode::from(130)
        } else if report.has_failures() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// A `--timeout`/`--max-silent-time` value: 0 means no limit, as it does
/// for Nix.
fn limit(secs: Option<u64>) -> Option<Duration> {
    secs.filter(|&s| s > 0).map(Duration::from_secs)
}

fn usage_error(message: &str) -> ExitCode {
    let one_line = message.lines().next().unwrap_or(message);
    eprintln!("kiln run: {one_line}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("kiln-run").chain(args.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn defaults_and_lists() {
        let a = parse(&[]);
        assert_eq!(a.flake, ".");
        assert!(!a.json && a.report.is_none() && a.systems.is_none());
        let a = parse(&[
            "./f",
            "--systems",
            "x86_64-linux,aarch64-linux",
            "-j",
            "3",
            "--max-silent-time",
            "7",
            "--eval-max-memory-size",
            "512",
            "--log-dir",
            "/tmp/l",
        ]);
        let o = a.options().unwrap();
        assert_eq!(o.flake, "./f");
        assert_eq!(
            o.systems.as_deref(),
            Some(&["x86_64-linux".to_string(), "aarch64-linux".to_string()][..])
        );
        assert_eq!(o.max_jobs, 3);
        assert_eq!(o.max_silent_time, Some(Duration::from_secs(7)));
        assert_eq!(o.eval_max_memory_mib, Some(512));
        assert_eq!(o.log_dir, PathBuf::from("/tmp/l"));
        assert!(o.failed_cache.is_none());
    }

    #[test]
    fn zero_time_limits_mean_no_limit() {
        assert_eq!(limit(None), None);
        assert_eq!(limit(Some(0)), None);
        assert_eq!(limit(Some(1)), Some(Duration::from_secs(1)));
        let o = parse(&["--timeout", "0", "--max-silent-time", "0"])
            .options()
            .unwrap();
        assert_eq!(o.timeout, None);
        assert_eq!(o.max_silent_time, None);
        let o = parse(&["--timeout", "30", "--max-silent-time", "0"])
            .options()
            .unwrap();
        assert_eq!(o.timeout, Some(Duration::from_secs(30)));
        assert_eq!(o.max_silent_time, None);
    }

    #[test]
    fn rejects_empty_systems() {
        for bad in [
            &["--systems", ""][..],
            &["--systems", "x86_64-linux,"],
            &["--systems", "a,,b"],
        ] {
            let e = parse(bad).options().unwrap_err();
            assert!(
                e.contains("--systems") && e.contains("empty"),
                "{bad:?}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let o = parse(&["--systems", "x86_64-linux"]).options().unwrap();
        assert_eq!(o.systems, Some(vec!["x86_64-linux".to_string()]));
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        let e = parse(&["--config", "/nonexistent/kiln.toml"])
            .options()
            .unwrap_err();
        assert!(e.contains("/nonexistent/kiln.toml"), "{e}");
        let e = parse(&["--max-jobs", "0"]).options().unwrap_err();
        assert!(e.contains("--max-jobs"), "{e}");
        assert!(Cli::try_parse_from(["kiln-run", "--timeout", "soon"]).is_err());
        let e = parse(&["--default-branch=a..b"]).options().unwrap_err();
        assert!(e.contains("--default-branch"), "{e}");
    }

    #[test]
    fn change_flags() {
        let o = parse(&[]).options().unwrap();
        assert_eq!(o.change, crate::source::ChangeOptions::default());
        let o = parse(&[
            "--branch",
            "feature",
            "--default-branch",
            "trunk",
            "--pull-request",
            "12",
            "--fork",
        ])
        .options()
        .unwrap();
        assert_eq!(o.change.branch.as_deref(), Some("feature"));
        assert_eq!(o.change.default_branch.as_deref(), Some("trunk"));
        assert_eq!(o.change.pull_request, Some(12));
        assert!(o.change.fork);
        // A fork only makes sense for a pull request.
        assert!(Cli::try_parse_from(["kiln-run", "--fork"]).is_err());
    }
}
