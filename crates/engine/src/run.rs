//! One `kiln run`, as a library call: source → repository config →
//! evaluation (streaming) → job graph → scheduling and batched builds →
//! report. [`run`] is what the CLI, the tests and the benchmarks call.
//!
//! It owns the order of those steps, the choice of systems and the
//! post-build hook point. It must not print (progress does, the CLI writes
//! reports) or pick exit codes (the CLI does, from [`RunOutcome`]).

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kiln_nix::{Nix, NixError};
use tokio::sync::{mpsc, watch};

use crate::driver::{Driver, DriverConfig};
use crate::eval::{self, EvalError, EvalRequest, EvalSummary};
use crate::executor::ExecConfig;
use crate::failed_cache::FailedCache;
use crate::progress::{Mode, Progress};
use crate::report::{JobReport, PostBuildResult, Report};
use crate::source::{self, Change, ChangeOptions, RepoSteps, SourceError};

/// A boxed future, as [`PostBuildHook::run`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Steps run on every job that built (or was cached): signing, uploads, …
/// The report's `post_build` list of each job is what this returns.
pub trait PostBuildHook: Send + Sync {
    /// Called once the source is prepared, before any job runs: the
    /// repository's configuration (its `[[post_build]]` steps) and revision.
    fn prepare(&self, _run: &PreparedRun<'_>) {}

    /// Run the post-build steps for one job. A result with status `failed`
    /// fails the job.
    fn run<'a>(&'a self, job: &'a JobReport) -> BoxFuture<'a, Vec<PostBuildResult>>;
}

/// Told about every change of a job as the run goes, for a service that
/// records runs while they happen (`kiln serve`); `kiln run` has none.
/// Calls come from the driver's loop: they must return quickly (queue the
/// update, do not write it inline).
pub trait RunObserver: Send + Sync {
    /// A job was added, started, reached a final status or got its
    /// post-build results. `index` is its position in evaluation order,
    /// stable for the run; `job.status` is live (`queued`, `running`, …).
    fn job(&self, index: u32, job: &JobReport);

    /// Job `job` depends on job `on` (the nearest job below it in the
    /// derivation graph). Both were announced through [`Self::job`] first.
    fn depends(&self, _job: u32, _on: u32) {}

    /// Evaluation ended: the totals, or why the whole flake failed.
    fn evaluated(&self, _result: Result<&EvalSummary, &EvalError>) {}
}

/// What [`PostBuildHook::prepare`] learns about the run.
#[derive(Debug, Clone, Copy)]
pub struct PreparedRun<'a> {
    /// FLAKE as given (the project name for a local run).
    pub flake: &'a str,
    /// The evaluated revision, when known.
    pub rev: Option<&'a str>,
    /// The checked-out `buildbot-nix.toml`. Its `post_build` is the
    /// checkout's own: run [`PreparedRun::steps`] instead.
    pub config: &'a crate::repo_config::RepoConfig,
    /// The change built: branch, default branch, pull request, fork.
    pub change: &'a Change,
    /// The repository's post-build steps under the default-branch rule, and
    /// where they were read from.
    pub steps: &'a RepoSteps,
}

/// Everything a run needs to know.
#[derive(Clone)]
pub struct RunOptions {
    /// FLAKE as given: a directory or a git URL.
    pub flake: String,
    /// Revision to check out.
    pub rev: Option<String>,
    /// Attribute to evaluate; `None` = the repository config's (`checks`).
    pub attribute: Option<String>,
    /// Systems to build; `None` = host system plus remote builders'.
    pub systems: Option<Vec<String>>,
    /// Build slots.
    pub max_jobs: usize,
    /// Evaluator processes; `None` = the evaluator's default.
    pub eval_workers: Option<usize>,
    /// Memory cap per evaluator in MiB; `None` = the evaluator's default.
    pub eval_max_memory_mib: Option<u64>,
    /// `--max-silent-time`; zero means no limit, as for Nix.
    pub max_silent_time: Option<Duration>,
    /// `--timeout`; zero means no limit, as for Nix.
    pub timeout: Option<Duration>,
    /// Directory for per-job logs.
    pub log_dir: PathBuf,
    /// Failed-build cache, when enabled.
    pub failed_cache: Option<FailedCache>,
    /// Post-build hook; `None` leaves every `post_build` list empty.
    pub post_build: Option<Arc<dyn PostBuildHook>>,
    /// Told about each job as it changes; `None` for `kiln run`.
    pub observer: Option<Arc<dyn RunObserver>>,
    /// Build slots shared with other runs (`kiln serve`); `None` for `kiln
    /// run`, whose `max_jobs` alone bounds it.
    pub slots: Option<Arc<crate::slots::SlotPool>>,
    /// The change built (branch, default branch, pull request, fork): which
    /// `buildbot-nix.toml` selects the post-build steps, and what they see.
    pub change: ChangeOptions,
    /// Progress display on stderr.
    pub progress: Mode,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("flake", &self.flake)
            .field("rev", &self.rev)
            .field("attribute", &self.attribute)
            .field("systems", &self.systems)
            .field("max_jobs", &self.max_jobs)
            .field("log_dir", &self.log_dir)
            .field("post_build", &self.post_build.is_some())
            .field("change", &self.change)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// Options with the defaults for `flake`, logging into `log_dir`.
    pub fn new(flake: impl Into<String>, log_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            flake: flake.into(),
            rev: None,
            attribute: None,
            systems: None,
            max_jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            eval_workers: None,
            eval_max_memory_mib: None,
            max_silent_time: None,
            timeout: None,
            log_dir: log_dir.into(),
            failed_cache: None,
            post_build: None,
            observer: None,
            slots: None,
            change: ChangeOptions::default(),
            progress: Mode::Quiet,
        }
    }
}

/// A run that got as far as a report.
#[derive(Debug)]
pub struct RunOutcome {
    /// The report (unfinished jobs `cancelled` when interrupted).
    pub report: Report,
    /// Whether the run was cancelled.
    pub interrupted: bool,
    /// Evaluation totals, when evaluation finished.
    pub eval: Option<EvalSummary>,
}

/// Why a run could not produce a report: bad usage, bad configuration or a
/// missing prerequisite (`kiln run` exits 2 with this one line).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Nix is missing or broken.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// FLAKE, `--rev` or `buildbot-nix.toml` is wrong.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The flake or the attribute could not be evaluated at all.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A local file problem (log directory, report file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An option is invalid.
    #[error("{0}")]
    Usage(String),
}

/// Evaluate and build one flake; cancel by sending `true` on `cancel`.
pub async fn run(opts: RunOptions, cancel: watch::Receiver<bool>) -> Result<RunOutcome, RunError> {
    if opts.max_jobs == 0 {
        return Err(RunError::Usage("--max-jobs must be at least 1".into()));
    }
    if let Some(s) = &opts.systems {
        check_systems(s).map_err(RunError::Usage)?;
    }
    let nix = Nix::detect().await?;
    let source = source::prepare(&nix, &opts.flake, opts.rev.as_deref()).await?;
    if let Some(hook) = &opts.post_build {
        let (change, steps) = source::resolve_change(&source, &opts.change).await?;
        hook.prepare(&PreparedRun {
            flake: &opts.flake,
            rev: source.rev.as_deref(),
            config: &source.config,
            change: &change,
            steps: &steps,
        });
    }
    let attribute = opts
        .attribute
        .clone()
        .unwrap_or_else(|| source.config.attribute.clone());
    let systems: HashSet<String> = match &opts.systems {
        Some(s) => s.iter().cloned().collect(),
        None => {
            let mut s: HashSet<String> = nix.remote_builder_systems().await?.into_iter().collect();
            s.insert(nix.current_system().await?);
            s
        }
    };
    std::fs::create_dir_all(&opts.log_dir).map_err(|source| RunError::Io {
        what: format!("creating log directory {}", opts.log_dir.display()),
        source,
    })?;
    let mut req = EvalRequest::new(source.flake_dir.clone(), attribute.clone());
    if let Some(w) = opts.eval_workers {
        req.workers = w.max(1);
    }
    if let Some(m) = opts.eval_max_memory_mib {
        req.max_memory_mib = m;
    }
    req.reference_lock_file = source.reference_lock_file.clone();
    let (tx, rx) = mpsc::channel(1024);
    let eval_nix = nix.clone();
    let eval_task = tokio::spawn(async move { eval::evaluate(&eval_nix, &req, tx).await });
    let cfg = DriverConfig {
        max_jobs: opts.max_jobs,
        systems: systems.clone(),
        exec: Arc::new(ExecConfig {
            max_silent_time: opts.max_silent_time.filter(|d| !d.is_zero()),
            timeout: opts.timeout.filter(|d| !d.is_zero()),
            log_dir: opts.log_dir.clone(),
        }),
        failed_cache: opts.failed_cache.clone(),
        post_build: opts.post_build.clone(),
        observer: opts.observer.clone(),
        slots: opts.slots.clone(),
    };
    let driven = Driver::new(nix, cfg, Progress::new(opts.progress))
        .drive(rx, eval_task, cancel)
        .await;
    let eval = match driven.eval {
        Some(Err(e)) if !driven.cancelled => return Err(e.into()),
        Some(Ok(s)) => Some(s),
        _ => None,
    };
    let report = Report::new(
        opts.flake.clone(),
        source.rev.clone(),
        attribute,
        driven.jobs,
    );
    if let Some(w) = no_system_built_warning(&report, &systems) {
        eprintln!("{w}");
    }
    let mut progress = driven.progress;
    progress.finish(&report, driven.cancelled);
    Ok(RunOutcome {
        report,
        interrupted: driven.cancelled,
        eval,
    })
}

/// Reject a `--systems` list with an empty entry (`--systems ''`, a stray
/// comma): it would build nothing and still succeed.
pub fn check_systems(systems: &[String]) -> Result<(), String> {
    if systems.is_empty() || systems.iter().any(|s| s.trim().is_empty()) {
        return Err(format!(
            "--systems has an empty entry ({:?}); give comma-separated systems such as x86_64-linux",
            systems.join(",")
        ));
    }
    Ok(())
}

/// A one-line warning when jobs were evaluated but none is for a system
/// being built (so nothing was built, yet the run succeeds).
pub fn no_system_built_warning(report: &Report, building: &HashSet<String>) -> Option<String> {
    let found: std::collections::BTreeSet<&str> = report
        .jobs
        .iter()
        .map(|j| j.system.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    if found.is_empty() || found.iter().any(|s| building.contains(*s)) {
        return None;
    }
    let mut built: Vec<&str> = building.iter().map(String::as_str).collect();
    built.sort_unstable();
    Some(format!(
        "kiln run: warning: no job is for a system being built (jobs are for: {}; building for: {}); pass --systems to change",
        found.into_iter().collect::<Vec<_>>().join(", "),
        built.join(", ")
    ))
}
