//! The runner: starts queued runs within the global bound (`max_runs`) and
//! the per-project bound (`max_runs_per_project`), oldest first, and drives
//! each through `kiln_engine::run::run` — the `kiln run` pipeline — on the
//! project's mirror at the run's commit. Jobs are recorded as they change
//! (batched into one transaction per burst); the run's final state is
//! written only if nobody changed it meanwhile (a cancel or an approval).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::eval::{EvalError, EvalSummary};
use kiln_engine::report::{JobReport, Summary};
use kiln_engine::run::{RunObserver, RunOptions};
use kiln_engine::source::ChangeOptions;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::store::{self, JobWrite, RunRow};
use super::{Pipeline, git, now_ms};
use crate::post_build::PluginSteps;

/// The runner loop.
pub async fn run(p: Arc<Pipeline>) {
    let mut tasks: JoinSet<i64> = JoinSet::new();
    let mut per_project: HashMap<i64, usize> = HashMap::new();
    let mut project_of: HashMap<i64, i64> = HashMap::new();
    loop {
        while let Some(done) = tasks.try_join_next() {
            finished(done, &mut per_project, &mut project_of, &p);
        }
        if tasks.len() < p.settings.max_runs {
            match store::queued_runs(&p.db, 64).await {
                Ok(queued) => {
                    for (run, project) in queued {
                        if tasks.len() >= p.settings.max_runs {
                            break;
                        }
                        let busy = per_project.get(&project).copied().unwrap_or(0);
                        if busy >= p.settings.max_runs_per_project {
                            continue;
                        }
                        match store::claim_run(&p.db, run).await {
                            Ok(Some(row)) => {
                                *per_project.entry(project).or_default() += 1;
                                project_of.insert(run, project);
                                p.running.store(tasks.len() + 1, Ordering::Relaxed);
                                let pipeline = p.clone();
                                tasks.spawn(async move {
                                    guarded(pipeline, row).await;
                                    run
                                });
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!(run, "cannot start a run: {e}"),
                        }
                    }
                }
                Err(e) => tracing::error!("cannot read queued runs: {e}"),
            }
        }
        tokio::select! {
            _ = p.runner_wake.notified() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                finished(done, &mut per_project, &mut project_of, &p);
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        p.running.store(tasks.len(), Ordering::Relaxed);
    }
}

fn finished(
    done: Result<i64, tokio::task::JoinError>,
    per_project: &mut HashMap<i64, usize>,
    project_of: &mut HashMap<i64, i64>,
    p: &Pipeline,
) {
    match done {
        Ok(run) => {
            if let Some(project) = project_of.remove(&run)
                && let Some(n) = per_project.get_mut(&project)
            {
                *n = n.saturating_sub(1);
            }
        }
        Err(e) => {
            // `guarded` catches a run's panic; this would be a panic in the
            // guard itself. Its row is re-run at the next start.
            tracing::error!("a run task failed: {e}");
        }
    }
    p.running
        .store(project_of.len(), std::sync::atomic::Ordering::Relaxed);
}

/// What the engine tells the recorder.
enum Update {
    Job(u32, Box<JobReport>),
    /// Job `.0` depends on job `.1`.
    Edge(u32, u32),
    Evaluated(Result<usize, String>),
}

/// The run's [`RunObserver`]: queues updates for the writer task.
struct Recorder {
    tx: Mutex<Option<mpsc::UnboundedSender<Update>>>,
}

impl Recorder {
    fn send(&self, update: Update) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(update);
        }
    }

    fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl RunObserver for Recorder {
    fn job(&self, index: u32, job: &JobReport) {
        self.send(Update::Job(index, Box::new(job.clone())));
    }

    fn depends(&self, job: u32, on: u32) {
        self.send(Update::Edge(job, on));
    }

    fn evaluated(&self, result: Result<&EvalSummary, &EvalError>) {
        self.send(Update::Evaluated(
            result.map(|s| s.jobs).map_err(|e| e.to_string()),
        ));
    }
}

/// Write job updates in bursts until the channel closes.
async fn writer(p: Arc<Pipeline>, run: i64, mut rx: mpsc::UnboundedReceiver<Update>) {
    let mut started: HashMap<u32, i64> = HashMap::new();
    let mut finished: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let run_started = std::time::Instant::now();
    // Edges are stored by attribute: indices may differ when a run re-runs.
    let mut attrs: HashMap<u32, String> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut burst = vec![first];
        while let Ok(u) = rx.try_recv() {
            burst.push(u);
        }
        let now = now_ms();
        let mut latest: BTreeMap<u32, JobReport> = BTreeMap::new();
        let mut dirty = false;
        let mut edges: Vec<(u32, u32)> = Vec::new();
        for u in burst {
            match u {
                Update::Job(idx, job) => {
                    if job.status.is_failure() {
                        dirty = true;
                    }
                    attrs.entry(idx).or_insert_with(|| job.attr.clone());
                    // Seen running, even if a later update in this burst
                    // already finished it: it was dispatched.
                    if job.status == kiln_engine::job::JobStatus::Running
                        && let std::collections::hash_map::Entry::Vacant(e) = started.entry(idx)
                    {
                        e.insert(now);
                        p.metrics.dispatched("build", "localhost");
                    }
                    latest.insert(idx, *job);
                }
                Update::Edge(job, on) => edges.push((job, on)),
                Update::Evaluated(result) => {
                    dirty = true;
                    p.metrics.evaluated(run_started.elapsed());
                    if let Err(e) = store::set_evaluated(&p.db, run, result.err().as_deref()).await
                    {
                        tracing::error!(run, "cannot record the evaluation: {e}");
                    }
                }
            }
        }
        let writes: Vec<JobWrite> = latest
            .into_iter()
            .map(|(idx, job)| {
                let status = job.status;
                let started_at = started.get(&idx).copied();
                if status.is_final() && finished.insert(idx) {
                    p.metrics
                        .job_finished(&status_name(status), Duration::from_millis(job.duration_ms));
                }
                JobWrite {
                    idx,
                    finished_at: status.is_final().then_some(now),
                    started_at,
                    job,
                }
            })
            .collect();
        if !writes.is_empty()
            && let Err(e) = store::write_jobs(&p.db, run, &writes).await
        {
            tracing::error!(run, "cannot record {} job updates: {e}", writes.len());
        }
        let edges: Vec<(&str, &str)> = edges
            .iter()
            .filter_map(|(job, on)| Some((attrs.get(job)?.as_str(), attrs.get(on)?.as_str())))
            .collect();
        if !edges.is_empty()
            && let Err(e) = store::write_edges(&p.db, run, &edges).await
        {
            tracing::error!(run, "cannot record {} job dependencies: {e}", edges.len());
        }
        if dirty {
            p.mark_dirty(run);
        }
    }
}

/// A job status as the report and the database name it.
fn status_name(status: kiln_engine::job::JobStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// [`execute`] in its own task, so that a panic in it (a bug) ends the run
/// in `error` with a reason instead of leaving it `running` until the next
/// start, and frees its slot.
async fn guarded(p: Arc<Pipeline>, run: RunRow) {
    let (id, attempts) = (run.id, run.attempts);
    let task = tokio::spawn({
        let p = p.clone();
        async move { execute(&p, run).await }
    });
    if let Err(e) = task.await {
        tracing::error!(run = id, "the run's task failed: {e}");
        p.forget_cancel(id, attempts);
        let reason =
            "Kiln failed while running it (see the service's log); rebuild to run it again";
        if let Err(e) = store::finish_run(&p.db, id, attempts, "error", Some(reason), None).await {
            tracing::error!(run = id, "cannot record the end of the run: {e}");
        }
        p.mark_dirty(id);
        p.runner_wake.notify_one();
    }
}

/// Drive one claimed run to a final state.
async fn execute(p: &Arc<Pipeline>, run: RunRow) {
    let id = run.id;
    p.metrics.dispatched("evaluation", "localhost");
    p.mark_dirty(id);
    let (state, error, summary) = match drive(p, &run).await {
        Ok(Some(summary)) => {
            let failed =
                summary.failed + summary.dependency_failed + summary.eval_error + summary.timed_out
                    > 0;
            let state = if failed { "failed" } else { "succeeded" };
            (state, None, Some(summary))
        }
        // Cancelled: the canceller already wrote the state.
        Ok(None) => {
            p.forget_cancel(id, run.attempts);
            p.mark_dirty(id);
            p.runner_wake.notify_one();
            return;
        }
        Err(e) => ("error", Some(e), None),
    };
    p.forget_cancel(id, run.attempts);
    let summary_json = summary.map(|s| serde_json::to_string(&s).unwrap_or_default());
    match store::finish_run(
        &p.db,
        id,
        run.attempts,
        state,
        error.as_deref(),
        summary_json.as_deref(),
    )
    .await
    {
        Ok(true) => tracing::info!(run = id, state, "run finished"),
        Ok(false) => tracing::info!(
            run = id,
            "run changed meanwhile; its result is not recorded"
        ),
        Err(e) => tracing::error!(run = id, "cannot record the end of the run: {e}"),
    }
    p.mark_dirty(id);
    p.runner_wake.notify_one();
}

/// Evaluate and build; `Ok(None)` when cancelled.
async fn drive(p: &Arc<Pipeline>, run: &RunRow) -> Result<Option<Summary>, String> {
    let project = store::project_by_id(&p.db, run.project)
        .await
        .map_err(|e| format!("database: {e}"))?
        .ok_or_else(|| format!("project {} is gone", run.project))?;
    let mirror = git::mirror_path(&p.settings.data_dir, &project.forge, &project.name);
    let log_dir = p.settings.data_dir.join("logs").join(run.id.to_string());
    let mut opts = RunOptions::new(format!("git+file://{}", mirror.display()), log_dir);
    opts.rev = Some(run.rev.clone());
    opts.max_jobs = p.settings.max_jobs;
    opts.slots = Some(p.build_slots.clone());
    opts.systems = p.settings.systems.clone();
    opts.change = ChangeOptions {
        branch: run.branch.clone(),
        default_branch: Some(project.default_branch.clone()),
        pull_request: run.pull_request.and_then(|n| u64::try_from(n).ok()),
        fork: !run.trusted,
    };
    opts.post_build = Some(Arc::new(
        PluginSteps::for_service(p.plugins.clone(), project.name.clone(), run.rerun_steps)
            .with_metrics(Arc::new(p.metrics.clone())),
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder {
        tx: Mutex::new(Some(tx)),
    });
    opts.observer = Some(recorder.clone());
    let writing = tokio::spawn(writer(p.clone(), run.id, rx));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    p.cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run.id, (run.attempts, cancel_tx));
    let outcome = kiln_engine::run::run(opts, cancel_rx).await;
    recorder.close();
    drop(recorder);
    let _ = writing.await;
    match outcome {
        Ok(o) if o.interrupted => Ok(None),
        Ok(o) => Ok(Some(o.report.summary)),
        Err(e) => Err(e.to_string()),
    }
}
