//! The driver: the one loop of a run that owns the job table, the graph and
//! the scheduler, ingests evaluated jobs as they stream in, hands ready jobs
//! to executor batches within the `--max-jobs` budget, applies their results
//! (retries with backoff, failure propagation, the failed-build cache) and
//! stops everything on cancellation.
//!
//! It must not parse Nix output (the executor and `kiln-nix` do) or format
//! anything for the user beyond calling [`crate::progress`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_nix::Nix;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::eval::{EvalError, EvalSummary};
use crate::executor::{self, BatchJob, ExecConfig, ExecEvent, Leftover};
use crate::failed_cache::FailedCache;
use crate::graph::DrvGraph;
use crate::job::{CacheStatus, EvalJob, JobStatus};
use crate::logfile;
use crate::progress::Progress;
use crate::report::{JobReport, PostBuildResult, PostBuildStatus};
use crate::run::{PostBuildHook, RunObserver};
use crate::scheduler::{JobId, Scheduler, SystemId};
use crate::slots::SlotPool;

mod record;

use record::JobRec;

/// Attempts for a job whose batch died of a transient failure.
const MAX_ATTEMPTS: u32 = 3;
/// Largest batch handed to one Nix process.
const BATCH_CAP: usize = 256;
/// Below this, a batch takes what is ready rather than a share.
const MIN_BATCH: usize = 8;

/// Per-run settings the driver needs.
pub struct DriverConfig {
    /// Build slots.
    pub max_jobs: usize,
    /// Systems that can be built.
    pub systems: HashSet<String>,
    /// Executor limits and log directory.
    pub exec: Arc<ExecConfig>,
    /// Opt-in failed-build cache.
    pub failed_cache: Option<FailedCache>,
    /// Post-build hook.
    pub post_build: Option<Arc<dyn PostBuildHook>>,
    /// Told about each job as it changes.
    pub observer: Option<Arc<dyn RunObserver>>,
    /// Build slots shared with other runs, taken per batch on top of
    /// `max_jobs`.
    pub slots: Option<Arc<SlotPool>>,
}

/// Resolves when `pool` has slots given back; never without a pool.
async fn slots_freed(pool: Option<&SlotPool>) {
    match pool {
        Some(pool) => pool.freed().await,
        None => std::future::pending().await,
    }
}

/// What a finished (or cancelled) drive produced.
pub struct DriveResult {
    /// Every job, in evaluation order.
    pub jobs: Vec<JobReport>,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// The evaluation's own outcome.
    pub eval: Option<Result<EvalSummary, EvalError>>,
    /// The progress display, for the final summary.
    pub progress: Progress,
}

/// The driver's state.
pub struct Driver {
    nix: Nix,
    cfg: DriverConfig,
    jobs: Vec<JobRec>,
    sched: Scheduler,
    graph: DrvGraph,
    systems: Vec<String>,
    /// Running batches: (slots in use, jobs without a result yet).
    batches: HashMap<u64, (usize, usize)>,
    next_batch: u64,
    retries: Vec<(Instant, JobId)>,
    eval_running: bool,
    held: Vec<JobId>,
    next_system: SystemId,
    exec_tx: mpsc::UnboundedSender<ExecEvent>,
    exec_rx: mpsc::UnboundedReceiver<ExecEvent>,
    stop_tx: watch::Sender<bool>,
    hooks: JoinSet<(JobId, Vec<PostBuildResult>)>,
    progress: Progress,
}

impl Driver {
    /// A driver for one run.
    pub fn new(nix: Nix, cfg: DriverConfig, progress: Progress) -> Self {
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        let (stop_tx, _) = watch::channel(false);
        Driver {
            nix,
            cfg,
            jobs: Vec::new(),
            sched: Scheduler::new(),
            graph: DrvGraph::new(),
            systems: Vec::new(),
            batches: HashMap::new(),
            next_batch: 0,
            retries: Vec::new(),
            eval_running: true,
            held: Vec::new(),
            next_system: 0,
            exec_tx,
            exec_rx,
            stop_tx,
            hooks: JoinSet::new(),
            progress,
        }
    }

    /// Drive the run until every job is final, or until `cancel` turns true.
    pub async fn drive(
        mut self,
        mut eval_rx: mpsc::Receiver<EvalJob>,
        mut eval_task: tokio::task::JoinHandle<Result<EvalSummary, EvalError>>,
        mut cancel: watch::Receiver<bool>,
    ) -> DriveResult {
        let mut eval_result: Option<Result<EvalSummary, EvalError>> = None;
        let mut eval_open = true;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut cancelled = *cancel.borrow();
        let pool = self.cfg.slots.clone();
        while !cancelled {
            if !eval_open && eval_result.is_some() && self.idle() {
                break;
            }
            // Ready work held back by the shared pool: wake when another run
            // gives slots back.
            let starved = pool.is_some() && self.sched.ready() > 0;
            tokio::select! {
                () = slots_freed(pool.as_deref()), if starved => {}
                job = eval_rx.recv(), if eval_open => match job {
                    Some(job) => {
                        let mut batch = vec![job];
                        while let Ok(j) = eval_rx.try_recv() {
                            batch.push(j);
                        }
                        self.ingest(batch).await;
                    }
                    None => eval_open = false,
                },
                res = &mut eval_task, if eval_result.is_none() => {
                    let res = res.unwrap_or(Err(EvalError::Cancelled));
                    let failed = res.is_err();
                    if let Some(o) = &self.cfg.observer {
                        o.evaluated(res.as_ref());
                    }
                    eval_result = Some(res);
                    // Drain jobs still buffered, then stop holding any back.
                    let mut rest = Vec::new();
                    while let Ok(j) = eval_rx.try_recv() {
                        rest.push(j);
                    }
                    if !rest.is_empty() {
                        self.ingest(rest).await;
                    }
                    self.eval_running = false;
                    for id in std::mem::take(&mut self.held) {
                        self.sched.release(id);
                    }
                    self.sched.finish_graph();
                    if failed {
                        // A whole-flake failure: stop building, report it.
                        self.stop_batches().await;
                        break;
                    }
                }
                Some(ev) = self.exec_rx.recv() => self.on_exec(ev),
                Some(done) = self.hooks.join_next(), if !self.hooks.is_empty() => {
                    if let Ok((id, results)) = done {
                        self.record_post_build(id, results);
                    }
                }
                _ = tick.tick() => {
                    self.progress.tick(self.counts());
                }
                _ = cancel.changed() => cancelled = *cancel.borrow(),
            }
            self.promote_retries();
            self.dispatch();
        }
        if cancelled {
            eval_task.abort();
            self.stop_batches().await;
        }
        while let Some(done) = self.hooks.join_next().await {
            if let Ok((id, results)) = done {
                self.record_post_build(id, results);
            }
        }
        for id in self.sched.cancel_all() {
            self.jobs[id as usize].status = JobStatus::Cancelled;
            self.notify(id);
        }
        let jobs = self.jobs.iter().map(JobRec::to_report).collect();
        DriveResult {
            jobs,
            cancelled,
            eval: eval_result,
            progress: self.progress,
        }
    }

    /// Tell the observer, if any, how job `id` stands now.
    fn notify(&self, id: JobId) {
        if let Some(o) = &self.cfg.observer {
            o.job(id, &self.jobs[id as usize].to_live_report());
        }
    }

    /// Forget batch `batch`, giving its shared slots back.
    fn end_batch(&mut self, batch: u64) {
        if let Some((slots, _)) = self.batches.remove(&batch) {
            self.give_slots(slots);
        }
    }

    /// Give `n` slots back to the shared pool, if there is one.
    fn give_slots(&self, n: usize) {
        if let Some(pool) = &self.cfg.slots {
            pool.give(n);
        }
    }

    /// Tell the observer, if any, that job `job` depends on job `on`.
    fn notify_edge(&self, job: JobId, on: JobId) {
        if let Some(o) = &self.cfg.observer {
            o.depends(job, on);
        }
    }

    fn idle(&self) -> bool {
        self.batches.is_empty() && self.retries.is_empty() && self.sched.ready() == 0
    }

    fn counts(&self) -> crate::progress::Counts {
        let mut c = crate::progress::Counts {
            total: self.jobs.len(),
            ..Default::default()
        };
        for j in &self.jobs {
            match j.status {
                JobStatus::Queued => c.queued += 1,
                // Dispatched but not yet started by Nix counts as queued.
                JobStatus::Running if j.started.is_none() => c.queued += 1,
                JobStatus::Running => c.running += 1,
                s if s.is_failure() => c.failed += 1,
                _ => c.done += 1,
            }
        }
        c
    }

    fn system_id(&mut self, system: &str) -> SystemId {
        match self.systems.iter().position(|s| s == system) {
            Some(i) => i as SystemId,
            None => {
                self.systems.push(system.to_string());
                (self.systems.len() - 1) as SystemId
            }
        }
    }

    /// Add freshly evaluated jobs: final ones at once, buildable ones with
    /// their dependencies from the derivation graph.
    async fn ingest(&mut self, batch: Vec<EvalJob>) {
        let to_load: Vec<String> = batch
            .iter()
            .filter(|j| j.error.is_none() && self.cfg.systems.contains(&j.system))
            .filter(|j| !matches!(j.cache_status, CacheStatus::Local | CacheStatus::Cached))
            .filter_map(|j| j.drv_path.clone())
            .filter(|d| !self.graph.is_loaded(d))
            .collect();
        if !to_load.is_empty() {
            match self.nix.show_derivations_recursive(&to_load).await {
                Ok(drvs) => {
                    for (path, d) in &drvs {
                        self.graph
                            .add_derivation(path, d.input_drvs.keys().map(String::as_str));
                    }
                    self.mark_built(&drvs).await;
                }
                Err(e) => tracing::warn!("reading the derivation graph failed: {e}"),
            }
        }
        let unknown: Vec<String> = batch
            .iter()
            .filter(|j| j.cache_status == CacheStatus::Unknown && j.error.is_none())
            .flat_map(|j| j.outputs.values().cloned())
            .collect();
        let valid = if unknown.is_empty() {
            HashSet::new()
        } else {
            self.nix.valid_paths(&unknown).await.unwrap_or_default()
        };
        for job in batch {
            self.add(job, &valid);
        }
    }

    /// Note which derivations of a closure are already built, so that jobs
    /// waiting for nothing but not-yet-evaluated jobs can be told apart.
    async fn mark_built(&mut self, drvs: &HashMap<String, kiln_nix::Derivation>) {
        let outputs: Vec<String> = drvs
            .values()
            .flat_map(|d| d.outputs.values().flatten().cloned())
            .collect();
        let Ok(valid) = self.nix.valid_paths(&outputs).await else {
            return;
        };
        for (path, d) in drvs {
            let outs: Vec<&String> = d.outputs.values().flatten().collect();
            if !outs.is_empty() && outs.iter().all(|o| valid.contains(*o)) {
                self.graph.mark_built(path);
            }
        }
    }

    fn add(&mut self, job: EvalJob, valid: &HashSet<String>) {
        let system = self.system_id(&job.system);
        let mut rec = JobRec::new(job);
        let cached = matches!(
            rec.eval.cache_status,
            CacheStatus::Local | CacheStatus::Cached
        ) || (!rec.eval.outputs.is_empty()
            && rec.eval.outputs.values().all(|o| valid.contains(o)));
        let earlier_failure = rec
            .eval
            .drv_path
            .as_deref()
            .and_then(|d| self.cfg.failed_cache.as_ref().and_then(|c| c.lookup(d)));
        let final_status = if let Some(e) = &rec.eval.error {
            rec.error = Some(e.clone());
            Some(JobStatus::EvalError)
        } else if rec.eval.drv_path.is_none() {
            rec.error = Some("evaluation produced no derivation".into());
            Some(JobStatus::EvalError)
        } else if !self.cfg.systems.contains(&rec.eval.system) {
            let mut offered: Vec<&String> = self.cfg.systems.iter().collect();
            offered.sort();
            rec.error = Some(format!(
                "no builder for system {} (building for: {}); pass --systems to change",
                rec.eval.system,
                offered
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Some(JobStatus::UnsupportedSystem)
        } else if cached {
            Some(JobStatus::Cached)
        } else if let Some(log) = earlier_failure {
            rec.error = Some(format!(
                "failed in an earlier run (failed-build cache); see {log}, or pass --rebuild-failed"
            ));
            rec.log_path = Some(PathBuf::from(log));
            Some(JobStatus::Failed)
        } else {
            None
        };
        let expected = self.jobs.len() as JobId;
        let id = match final_status {
            Some(status) => {
                rec.status = status;
                self.sched.add_final(system, status)
            }
            None => self.sched.add_job(system, &[]),
        };
        debug_assert_eq!(id, expected);
        rec.log_path = rec.log_path.or_else(|| {
            (final_status.is_none()).then(|| {
                self.cfg
                    .exec
                    .log_dir
                    .join(logfile::file_name(&rec.eval.attr))
            })
        });
        let drv = rec.eval.drv_path.clone();
        self.jobs.push(rec);
        self.notify(id);
        if let Some(drv) = drv {
            let (deps, above) = self.graph.attach_job(&drv, id);
            let mut failed = Vec::new();
            for d in deps {
                self.sched.add_dependency(id, d, &mut failed);
                self.notify_edge(id, d);
            }
            for a in above {
                self.sched.add_dependency(a, id, &mut failed);
                self.notify_edge(a, id);
            }
            self.collect_dependency_failures(&mut failed);
            // Something it needs is unbuilt and not a job: while evaluation
            // runs, that may be a job still to come; wait rather than build
            // it anonymously inside this job's batch.
            if self.eval_running
                && final_status.is_none()
                && self.graph.has_unbuilt_input(&drv)
                && self.sched.hold(id)
            {
                self.held.push(id);
            }
        }
        if let Some(status) = final_status {
            self.progress
                .finished(&self.jobs[id as usize].eval.attr, status, 0);
            self.after_final(id);
        }
    }

    fn collect_dependency_failures(&mut self, ids: &mut Vec<JobId>) {
        for id in ids.drain(..) {
            let root = self.sched.failed_dependency(id);
            let rec = &mut self.jobs[id as usize];
            if rec.status.is_final() {
                continue;
            }
            rec.status = JobStatus::DependencyFailed;
            let (name, error) = match root {
                Some(r) => {
                    let root = &self.jobs[r as usize];
                    let attr = root.eval.attr.clone();
                    match root.status {
                        // It did not fail itself: name what it was waiting
                        // for (the job or non-job derivation that failed).
                        JobStatus::DependencyFailed => {
                            let name = root.failed_dependency.clone().unwrap_or(attr);
                            let error = root
                                .error
                                .clone()
                                .unwrap_or_else(|| format!("dependency {name} failed"));
                            (Some(name), Some(error))
                        }
                        JobStatus::UnsupportedSystem => {
                            let error = format!(
                                "depends on {attr}, whose system is not built here (see --systems)"
                            );
                            (Some(attr), Some(error))
                        }
                        _ => {
                            let error = format!("dependency {attr} failed");
                            (Some(attr), Some(error))
                        }
                    }
                }
                None => (None, None),
            };
            let rec = &mut self.jobs[id as usize];
            rec.error = error;
            rec.failed_dependency = name;
            let attr = rec.eval.attr.clone();
            self.progress
                .finished(&attr, JobStatus::DependencyFailed, 0);
            self.notify(id);
        }
    }

    fn dispatch(&mut self) {
        loop {
            let used: usize = self.batches.values().map(|b| b.0).sum();
            let own = self.cfg.max_jobs.saturating_sub(used);
            if own == 0 || self.sched.ready() == 0 {
                return;
            }
            // Slots shared with other runs: take what this run may use; what
            // the batch does not need goes back below.
            let free = match &self.cfg.slots {
                Some(pool) => pool.take(own),
                None => own,
            };
            if free == 0 {
                return;
            }
            // Round-robin over systems with ready work, so that one system's
            // long queue does not starve another's.
            let ready: Vec<SystemId> = self.sched.systems_with_ready_jobs().collect();
            let Some(&system) = ready
                .iter()
                .find(|&&s| s >= self.next_system)
                .or(ready.first())
            else {
                self.give_slots(free);
                return;
            };
            self.next_system = system.wrapping_add(1);
            // Take the free slots' share of all outstanding work (ready jobs
            // plus those still in running batches), not everything: a batch
            // builds at most `slots` jobs at a time, so one holding all the
            // work would leave slots freed elsewhere idle. Small remainders
            // go whole, a batch costs a Nix start-up.
            let running: usize = self.batches.values().map(|b| b.1).sum();
            let outstanding = self.sched.ready() + running;
            let share = (outstanding * free).div_ceil(self.cfg.max_jobs);
            let take = share.max(MIN_BATCH).clamp(1, BATCH_CAP);
            let mut ids = Vec::new();
            self.sched.pop_batch(system, take, &mut ids);
            if ids.is_empty() {
                // Only stale heap entries were left for this system (now
                // dropped); look again.
                self.give_slots(free);
                continue;
            }
            let slots = free.min(ids.len());
            self.give_slots(free - slots);
            tracing::debug!(
                batch = self.next_batch,
                jobs = ids.len(),
                slots,
                ready = self.sched.ready(),
                "dispatching a batch"
            );
            let batch = self.next_batch;
            self.next_batch += 1;
            let jobs: Vec<BatchJob> = ids
                .iter()
                .map(|&id| {
                    let rec = &mut self.jobs[id as usize];
                    rec.status = JobStatus::Running;
                    rec.started = None;
                    rec.attempts += 1;
                    BatchJob {
                        job: id,
                        drv: rec.eval.drv_path.clone().unwrap_or_default(),
                        outputs: rec.eval.outputs.values().cloned().collect(),
                        log: rec.log_path.clone().unwrap_or_default(),
                    }
                })
                .collect();
            self.batches.insert(batch, (slots, ids.len()));
            tokio::spawn(executor::run_batch(
                self.nix.clone(),
                batch,
                jobs,
                slots,
                self.cfg.exec.clone(),
                self.exec_tx.clone(),
                self.stop_tx.subscribe(),
            ));
        }
    }

    fn on_exec(&mut self, ev: ExecEvent) {
        match ev {
            ExecEvent::Started { job, .. } => {
                let rec = &mut self.jobs[job as usize];
                rec.started = Some(Instant::now());
                self.progress.started(&rec.eval.attr);
                self.notify(job);
            }
            ExecEvent::Slots { batch, in_use } => {
                let Some(held) = self.batches.get(&batch).map(|b| b.0) else {
                    return;
                };
                // The shared pool follows the batch: slots its tail no longer
                // needs go back at once, and a batch whose work grew takes
                // what the pool can spare.
                let now = match &self.cfg.slots {
                    Some(pool) if in_use < held => {
                        pool.give(held - in_use);
                        in_use
                    }
                    Some(pool) => held + pool.take(in_use - held),
                    None => in_use,
                };
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.0 = now;
                }
            }
            ExecEvent::Finished { batch, job, result } => {
                if let Some(b) = self.batches.get_mut(&batch) {
                    b.1 = b.1.saturating_sub(1);
                }
                let rec = &mut self.jobs[job as usize];
                rec.duration_ms = result.started.map_or(0, |s| {
                    result.ended.saturating_duration_since(s).as_millis() as u64
                });
                rec.status = result.status;
                rec.error = result.error;
                if result.status == JobStatus::DependencyFailed {
                    let drv = rec.eval.drv_path.clone().unwrap_or_default();
                    let input = self.graph.failed_input(&drv, &result.failed_drvs);
                    let name = input.map(|d| match self.graph.job_of(&d) {
                        Some(j) => self.jobs[j as usize].eval.attr.clone(),
                        None => d,
                    });
                    let rec = &mut self.jobs[job as usize];
                    if let Some(n) = &name {
                        rec.error = Some(format!("dependency {n} failed"));
                    }
                    rec.failed_dependency = name;
                }
                let mut failed = Vec::new();
                self.sched.complete(job, result.status, &mut failed);
                self.collect_dependency_failures(&mut failed);
                let rec = &self.jobs[job as usize];
                self.progress
                    .finished(&rec.eval.attr, rec.status, rec.duration_ms);
                self.notify(job);
                self.after_final(job);
            }
            ExecEvent::Done {
                batch,
                leftover,
                reason,
            } => {
                self.end_batch(batch);
                for id in leftover {
                    self.leftover(id, &reason);
                }
            }
        }
    }

    fn leftover(&mut self, id: JobId, reason: &Leftover) {
        let rec = &mut self.jobs[id as usize];
        match reason {
            Leftover::Killed => {
                rec.status = JobStatus::Queued;
                self.sched.requeue(id);
            }
            Leftover::Transient(msg) if rec.attempts < MAX_ATTEMPTS => {
                let backoff = Duration::from_secs(1 << (rec.attempts - 1).min(5));
                tracing::warn!(attr = %rec.eval.attr, "transient Nix failure, retrying in {backoff:?}: {msg}");
                rec.status = JobStatus::Queued;
                self.retries.push((Instant::now() + backoff, id));
            }
            Leftover::Transient(msg) => {
                rec.status = JobStatus::Failed;
                rec.error = Some(format!("{msg} (after {} attempts)", rec.attempts));
                let mut failed = Vec::new();
                self.sched.complete(id, JobStatus::Failed, &mut failed);
                self.collect_dependency_failures(&mut failed);
            }
            Leftover::Cancelled => {}
        }
        self.notify(id);
    }

    fn promote_retries(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(t, _)| *t <= now);
        self.retries = later;
        for (_, id) in due {
            self.sched.requeue(id);
        }
    }

    /// Record a job's post-build results; a failed step (not `warn_only`)
    /// fails the job, naming the step.
    fn record_post_build(&mut self, id: JobId, results: Vec<PostBuildResult>) {
        let rec = &mut self.jobs[id as usize];
        if let Some(failed) = results.iter().find(|r| r.status == PostBuildStatus::Failed) {
            rec.status = JobStatus::Failed;
            rec.error = Some(format!(
                "post-build step `{}` failed: {}",
                failed.step, failed.message
            ));
        }
        rec.post_build = results;
        self.notify(id);
    }

    /// Failed-build cache and post-build hook for a job that just ended.
    fn after_final(&mut self, id: JobId) {
        let rec = &self.jobs[id as usize];
        if let (Some(cache), Some(drv)) = (&self.cfg.failed_cache, &rec.eval.drv_path) {
            match rec.status {
                JobStatus::Failed if rec.attempts > 0 => {
                    let log = rec.log_path.as_ref().map(|p| p.display().to_string());
                    cache.record(drv, log.as_deref().unwrap_or("(no log)"));
                }
                JobStatus::Succeeded => cache.forget(drv),
                _ => {}
            }
        }
        if let Some(hook) = &self.cfg.post_build
            && matches!(rec.status, JobStatus::Succeeded | JobStatus::Cached)
        {
            let hook = hook.clone();
            let report = self.jobs[id as usize].to_report();
            self.hooks
                .spawn(async move { (id, hook.run(&report).await) });
        }
    }

    async fn stop_batches(&mut self) {
        let _ = self.stop_tx.send(true);
        while !self.batches.is_empty() {
            match self.exec_rx.recv().await {
                Some(ExecEvent::Done { batch, .. }) => {
                    self.end_batch(batch);
                }
                Some(ev @ ExecEvent::Finished { .. }) => self.on_exec(ev),
                Some(_) => {}
                None => break,
            }
        }
    }
}
