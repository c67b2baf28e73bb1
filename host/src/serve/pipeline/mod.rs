//! The pipeline of `kiln serve`: from stored change events to runs, jobs and
//! forge statuses, every state change written to the database first so that
//! a killed service picks up where it stopped.
//!
//! - `intake`: each `new` event becomes a run target. It fetches into the
//!   project's bare mirror, merges a pull request's base into its head
//!   (`--no-ff`, no work tree), keys the run by the evaluated tree (a push
//!   and a pull request with the same content share one run), honours
//!   `[skip ci]`, holds untrusted pull requests for approval and
//!   supersedes older targets of the same branch or pull request.
//! - `runner`: starts queued runs within the global and per-project bounds
//!   and drives each through `kiln_engine::run::run` (the `kiln run`
//!   pipeline), recording jobs as they change. At start, runs left
//!   `running` by a killed service are queued again.
//! - `report`: turns run state into the statuses owed to each target (an
//!   outbox) and posts them through the forge plugin, coalescing updates and
//!   honouring `retry-after`.
//! - `reconcile`: discovery by topic, and branch heads compared with what
//!   was built, at start and periodically, so a webhook lost while Kiln was
//!   down is still built.
//!
//! Control actions (rebuild, cancel, approve) enter through
//! [`Pipeline::control`]. Access decisions are the API's, not this module's.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::db::Database;
use super::metrics::Metrics;
use crate::config::{ForgeInstance, KilnConfig};
use crate::plugins::PluginHost;

pub mod forge;
pub mod git;
pub mod intake;
pub mod reconcile;
pub mod report;
pub mod runner;
pub mod store;

/// The pipeline's settings, resolved from `[serve]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base of the links in statuses (`http://127.0.0.1:8010`).
    pub public_url: String,
    /// Runs at once over all projects.
    pub max_runs: usize,
    /// Runs at once per project.
    pub max_runs_per_project: usize,
    /// Build slots shared by all runs.
    pub max_jobs: usize,
    /// Reconciliation period; zero = only at start.
    pub poll_interval: Duration,
    /// Most per-attribute failure statuses per target.
    pub max_failure_statuses: usize,
    /// Systems to build; `None` = the host's and remote builders'.
    pub systems: Option<Vec<String>>,
    /// Mirrors, logs and checkouts live here.
    pub data_dir: PathBuf,
}

impl Settings {
    /// `[serve]` with its defaults; `listen` is the bound address.
    pub fn from_config(
        config: &KilnConfig,
        listen: std::net::SocketAddr,
        data_dir: PathBuf,
    ) -> Self {
        let s = &config.serve;
        Settings {
            public_url: s
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_owned(),
            max_runs: s.max_runs.unwrap_or(2).max(1),
            max_runs_per_project: s.max_runs_per_project.unwrap_or(1).max(1),
            max_jobs: s
                .max_jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
            poll_interval: Duration::from_secs(s.poll_interval_secs.unwrap_or(300)),
            max_failure_statuses: s.max_failure_statuses.unwrap_or(20),
            systems: s.systems.clone(),
            data_dir,
        }
    }
}

/// A control action on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Run it again (failed jobs are rebuilt, built ones come out cached and
    /// their post-build steps run again).
    Rebuild,
    /// Rebuild one job: the run is run again, the job's siblings come out
    /// cached. The job must belong to the run.
    RebuildJob(i64),
    /// Stop it; its targets get `cancelled` statuses.
    Cancel,
    /// Let a held pull request's run use secrets: run it again with them.
    Approve,
}

/// Why a control action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such run (or job in that run).
    #[error("{0}")]
    NotFound(String),
    /// The run's state does not allow it (cancel a finished run, approve a
    /// run not held).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Build slots, for `/api/v1/workers`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Slots {
    /// Runs that may run at once.
    pub runs_total: usize,
    /// Runs running now.
    pub runs_in_use: usize,
    /// Build slots shared by all runs.
    pub jobs_total: usize,
    /// Build slots in use now.
    pub jobs_in_use: usize,
}

/// The pipeline's shared state.
pub struct Pipeline {
    pub(crate) db: Database,
    pub(crate) plugins: Arc<PluginHost>,
    pub(crate) forges: BTreeMap<String, ForgeInstance>,
    pub(crate) settings: Settings,
    /// Wakes intake (a new event was stored).
    pub(crate) intake_wake: Notify,
    /// Wakes the runner (a run was queued, or one ended).
    pub(crate) runner_wake: Notify,
    /// Wakes the reporter (statuses are owed).
    pub(crate) report_wake: Notify,
    /// Cancel switches of the runs in progress.
    /// (start number, switch) by run: a start's cleanup removes only its own
    /// switch, never that of a later start of the same run.
    pub(crate) cancels: Mutex<HashMap<i64, (i64, watch::Sender<bool>)>>,
    pub(crate) running: AtomicUsize,
    /// Build slots shared by the runs in progress (`max_jobs`).
    pub(crate) build_slots: Arc<kiln_engine::slots::SlotPool>,
    /// Runs whose statuses must be recomputed.
    pub(crate) dirty: Mutex<std::collections::BTreeSet<i64>>,
    pub(crate) metrics: Metrics,
}

impl Pipeline {
    /// The pipeline; nothing runs until [`Pipeline::start`].
    pub fn new(
        db: Database,
        plugins: Arc<PluginHost>,
        forges: BTreeMap<String, ForgeInstance>,
        settings: Settings,
    ) -> Arc<Self> {
        let build_slots = Arc::new(kiln_engine::slots::SlotPool::new(settings.max_jobs));
        Arc::new(Pipeline {
            db,
            plugins,
            forges,
            settings,
            intake_wake: Notify::new(),
            runner_wake: Notify::new(),
            report_wake: Notify::new(),
            cancels: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            build_slots,
            dirty: Mutex::new(Default::default()),
            metrics: Metrics::default(),
        })
    }

    /// Start intake, runner, reporter and reconciliation. Runs a killed
    /// service left `running` are queued again first.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let requeued = store::requeue_interrupted(&self.db).await?;
        if requeued > 0 {
            tracing::info!("{requeued} runs interrupted by a restart are queued again");
        }
        tokio::spawn(intake::run(self.clone()));
        tokio::spawn(runner::run(self.clone()));
        tokio::spawn(report::run(self.clone()));
        tokio::spawn(reconcile::run(self.clone()));
        Ok(())
    }

    /// A webhook stored new events.
    pub fn events_stored(&self) {
        self.intake_wake.notify_one();
    }

    /// The build slots now.
    pub fn slots(&self) -> Slots {
        Slots {
            runs_total: self.settings.max_runs,
            runs_in_use: self.running.load(Ordering::Relaxed),
            jobs_total: self.build_slots.limit(),
            jobs_in_use: self.build_slots.in_use(),
        }
    }

    /// The service's metrics (shared with the webhook handler).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Read the gauges kept in the database into the metrics.
    pub async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let (runs, queued, running) = store::gauges(&self.db).await?;
        self.metrics.set_gauges(&runs, &queued, running);
        Ok(())
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Apply a control action on run `run` on behalf of `by`; returns the
    /// run's state afterwards.
    pub async fn control(
        &self,
        run: i64,
        action: Control,
        by: &str,
    ) -> Result<String, ControlError> {
        let Some(current) = store::run_state(&self.db, run).await? else {
            return Err(ControlError::NotFound(format!("no run {run}")));
        };
        let state = match action {
            Control::Cancel => {
                if !matches!(current.state.as_str(), "queued" | "running") {
                    return Err(ControlError::Conflict(format!(
                        "run {run} is {} and cannot be cancelled",
                        current.state
                    )));
                }
                store::cancel_run(&self.db, run, &format!("cancelled by {by}")).await?;
                self.stop(run);
                "cancelled"
            }
            Control::Rebuild | Control::RebuildJob(_) => {
                if let Control::RebuildJob(job) = action
                    && !store::job_in_run(&self.db, run, job).await?
                {
                    return Err(ControlError::NotFound(format!(
                        "run {run} has no job {job}"
                    )));
                }
                if current.state == "running" {
                    return Err(ControlError::Conflict(format!(
                        "run {run} is running; cancel it first or wait for it"
                    )));
                }
                store::requeue_run(&self.db, run, false, None).await?;
                "queued"
            }
            Control::Approve => {
                if !current.needs_approval {
                    return Err(ControlError::Conflict(format!(
                        "run {run} is not waiting for approval"
                    )));
                }
                // A run in progress is stopped and queued again with secrets.
                self.stop(run);
                store::requeue_run(&self.db, run, true, Some(by)).await?;
                "queued"
            }
        };
        tracing::info!(run, by, ?action, "control action");
        self.mark_dirty(run);
        self.runner_wake.notify_one();
        self.report_wake.notify_one();
        Ok(state.to_owned())
    }

    /// Run `run` changed in a way statuses show: recompute and post them.
    pub(crate) fn mark_dirty(&self, run: i64) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run);
        self.report_wake.notify_one();
    }

    /// Flip the cancel switch of a run in progress, if it is.
    pub(crate) fn stop(&self, run: i64) {
        if let Some(tx) = self
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
        {
            let _ = tx.1.send(true);
        }
    }

    /// Remove the cancel switch of run `run`'s start number `attempt`.
    pub(crate) fn forget_cancel(&self, run: i64, attempt: i64) {
        let mut cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        if cancels.get(&run).is_some_and(|(a, _)| *a == attempt) {
            cancels.remove(&run);
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
