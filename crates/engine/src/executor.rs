//! The local executor: runs one batch of ready jobs as one Nix process and
//! reports, per job, when it started, how it ended and where its log is.
//!
//! It owns the batch's process group (killed on cancel, and on a per-job
//! timeout that Nix itself failed to enforce), the per-job capped log files,
//! mid-batch completion detection (Nix 2.8 only says "one more done", so a
//! validity check names which) and the classification of what is left when
//! the process dies: killed, transient (retry) or failed. It must not decide
//! retries, dependents or the report: the driver does, from [`ExecEvent`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_nix::Nix;
use kiln_nix::build::{BatchBuild, BuildEvent, FailureKind, is_transient};
use tokio::sync::{mpsc, watch};

use crate::job::JobStatus;
use crate::logfile::CappedLog;
use crate::scheduler::JobId;

/// Extra time Kiln grants beyond `--timeout`/`--max-silent-time` before it
/// kills a batch itself (Nix enforces the exact limits).
const GRACE: Duration = Duration::from_secs(5);
/// Minimum spacing of mid-batch validity checks.
const CHECK_SPACING: Duration = Duration::from_millis(300);

/// One job handed to a batch.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// Scheduler index.
    pub job: JobId,
    /// Its derivation.
    pub drv: String,
    /// Its output paths.
    pub outputs: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// Limits and places shared by every batch of a run.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// `--max-silent-time`.
    pub max_silent_time: Option<Duration>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// Where logs of derivations that are not jobs go.
    pub log_dir: PathBuf,
}

/// How a job of a batch ended.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Succeeded, Cached, Failed, TimedOut or DependencyFailed.
    pub status: JobStatus,
    /// Nix's message for failures.
    pub error: Option<String>,
    /// For `DependencyFailed`: derivations that failed in this batch, one of
    /// which is in the job's closure.
    pub failed_drvs: Vec<String>,
    /// When its build started, if it did.
    pub started: Option<Instant>,
    /// When it was seen to end.
    pub ended: Instant,
}

/// Why jobs came back from a batch without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// The batch was killed because another job of it overran; build again.
    Killed,
    /// Nix lost its daemon or similar; retry with backoff.
    Transient(String),
    /// The run was cancelled.
    Cancelled,
}

/// What a batch tells the driver.
#[derive(Debug)]
pub enum ExecEvent {
    /// A job's build started.
    Started {
        /// Batch number.
        batch: u64,
        /// The job.
        job: JobId,
    },
    /// A job ended.
    Finished {
        /// Batch number.
        batch: u64,
        /// The job.
        job: JobId,
        /// How.
        result: JobResult,
    },
    /// The batch now occupies this many build slots.
    Slots {
        /// Batch number.
        batch: u64,
        /// Slots in use.
        in_use: usize,
    },
    /// The batch is over; `leftover` jobs have no result.
    Done {
        /// Batch number.
        batch: u64,
        /// Jobs to put back (or cancel).
        leftover: Vec<JobId>,
        /// Why they are left over.
        reason: Leftover,
    },
}

struct Entry {
    job: BatchJob,
    log: Option<CappedLog>,
    started: Option<Instant>,
    last_output: Instant,
    done: bool,
}

struct Batch {
    id: u64,
    entries: Vec<Entry>,
    by_drv: HashMap<String, usize>,
    others: HashMap<String, CappedLog>,
    failed_drvs: Vec<String>,
    /// When Nix's "done" counter went up, one entry per build.
    done_times: Vec<Instant>,
    last_error: Option<String>,
    transient: Option<String>,
    tx: mpsc::UnboundedSender<ExecEvent>,
    cfg: Arc<ExecConfig>,
}

/// Build `jobs` in one Nix process with `slots` parallel builds, sending
/// [`ExecEvent`]s to `tx`; ends with exactly one [`ExecEvent::Done`].
pub async fn run_batch(
    nix: Nix,
    id: u64,
    jobs: Vec<BatchJob>,
    slots: usize,
    cfg: Arc<ExecConfig>,
    tx: mpsc::UnboundedSender<ExecEvent>,
    mut cancel: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let mut b = Batch {
        id,
        by_drv: jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.drv.clone(), i))
            .collect(),
        entries: jobs
            .into_iter()
            .map(|job| Entry {
                log: CappedLog::open(&job.log).ok(),
                job,
                started: None,
                last_output: now,
                done: false,
            })
            .collect(),
        others: HashMap::new(),
        failed_drvs: Vec::new(),
        done_times: Vec::new(),
        last_error: None,
        transient: None,
        tx,
        cfg,
    };
    let mut spec = BatchBuild::for_nix(
        &nix,
        b.entries.iter().map(|e| e.job.drv.clone()).collect(),
        slots,
    );
    spec.max_silent_time = b.cfg.max_silent_time.map(|d| d.as_secs().max(1));
    spec.timeout = b.cfg.timeout.map(|d| d.as_secs().max(1));
    let mut proc = match spec.spawn() {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            let transient = is_transient(&msg);
            b.finish_rest(
                &nix,
                false,
                if transient { Some(msg) } else { None },
                Some(e.to_string()),
            )
            .await;
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut done_seen = 0u64;
    let mut check_due: Option<Instant> = None;
    let mut last_check = Instant::now() - CHECK_SPACING;
    let mut in_use = slots;
    loop {
        tokio::select! {
            events = proc.next_events() => {
                let Some(events) = events else { break };
                for ev in events {
                    if let BuildEvent::Progress(p) = &ev {
                        if p.done > done_seen {
                            let now = Instant::now();
                            b.done_times.extend((done_seen..p.done).map(|_| now));
                            done_seen = p.done;
                            check_due.get_or_insert_with(Instant::now);
                        }
                        if p.expected > 0 {
                            let left = p.expected.saturating_sub(p.done + p.failed) as usize;
                            let now_in_use = left.min(slots);
                            if now_in_use != in_use {
                                in_use = now_in_use;
                                b.send(ExecEvent::Slots { batch: id, in_use });
                            }
                        }
                    }
                    b.handle(ev);
                }
            }
            _ = tick.tick() => {
                b.flush_logs();
                if let Some(overrun) = b.overrun() {
                    proc.kill_group(Duration::from_secs(2)).await;
                    b.resolve(overrun, JobStatus::TimedOut, Some(b.overrun_message()), Instant::now());
                    b.finish_rest(&nix, true, None, None).await;
                    return;
                }
            }
            _ = cancel.changed() => {
                proc.kill_group(Duration::from_secs(2)).await;
                b.close_logs();
                let leftover = b.unresolved();
                b.send(ExecEvent::Done { batch: id, leftover, reason: Leftover::Cancelled });
                return;
            }
        }
        if let Some(due) = check_due
            && last_check.elapsed() >= CHECK_SPACING
        {
            check_due = None;
            last_check = Instant::now();
            b.check_valid(&nix, due).await;
        }
    }
    let status = proc.wait().await.ok();
    b.finish_rest(
        &nix,
        false,
        b.transient.clone(),
        status.map(|s| format!("nix-store exited with {s}")),
    )
    .await;
}

impl Batch {
    fn send(&self, ev: ExecEvent) {
        let _ = self.tx.send(ev);
    }

    fn handle(&mut self, ev: BuildEvent) {
        match ev {
            BuildEvent::Started { drv } => {
                if let Some(&i) = self.by_drv.get(&drv) {
                    let e = &mut self.entries[i];
                    e.started = Some(Instant::now());
                    e.last_output = Instant::now();
                    let job = e.job.job;
                    self.send(ExecEvent::Started {
                        batch: self.id,
                        job,
                    });
                }
            }
            BuildEvent::Log { drv, line } => self.log(&drv, &line),
            BuildEvent::Phase { drv, phase } => self.log(&drv, &format!("[kiln] phase: {phase}")),
            BuildEvent::Stopped { .. } | BuildEvent::Progress(_) => {}
            BuildEvent::Failed { drv, kind, message } => {
                let status = match kind {
                    FailureKind::Builder => JobStatus::Failed,
                    FailureKind::TimedOut => JobStatus::TimedOut,
                    FailureKind::DependencyFailed => JobStatus::DependencyFailed,
                };
                if kind != FailureKind::DependencyFailed {
                    self.failed_drvs.push(drv.clone());
                }
                self.log(&drv, &format!("[kiln] {message}"));
                if let Some(&i) = self.by_drv.get(&drv) {
                    self.resolve(i, status, Some(message), Instant::now());
                }
            }
            BuildEvent::Message { level, text } => {
                if level == 0 {
                    if is_transient(&text) {
                        self.transient = Some(text.clone());
                    }
                    self.last_error = Some(text);
                }
            }
        }
    }

    fn log(&mut self, drv: &str, line: &str) {
        if let Some(&i) = self.by_drv.get(drv) {
            let e = &mut self.entries[i];
            e.last_output = Instant::now();
            if let Some(log) = &mut e.log {
                log.line(line);
            }
            return;
        }
        let log = self
            .others
            .entry(drv.to_string())
            .or_insert_with_key(|drv| {
                let name = drv.rsplit('/').next().unwrap_or("drv");
                let path = self.cfg.log_dir.join("drvs").join(format!("{name}.log"));
                CappedLog::open(&path).unwrap_or_else(|_| {
                    CappedLog::open(&std::env::temp_dir().join("kiln-orphan.log"))
                        .expect("a temporary log file can be opened")
                })
            });
        log.line(line);
    }

    fn resolve(&mut self, i: usize, status: JobStatus, error: Option<String>, ended: Instant) {
        let e = &mut self.entries[i];
        if e.done {
            return;
        }
        e.done = true;
        if let Some(log) = e.log.take() {
            let _ = log.finish();
        }
        let result = JobResult {
            status,
            error,
            failed_drvs: if status == JobStatus::DependencyFailed {
                self.failed_drvs.clone()
            } else {
                vec![]
            },
            started: e.started,
            ended,
        };
        let job = e.job.job;
        self.send(ExecEvent::Finished {
            batch: self.id,
            job,
            result,
        });
    }

    fn unresolved(&self) -> Vec<JobId> {
        self.entries
            .iter()
            .filter(|e| !e.done)
            .map(|e| e.job.job)
            .collect()
    }

    /// A started job past `--timeout` or `--max-silent-time` plus grace.
    fn overrun(&self) -> Option<usize> {
        let now = Instant::now();
        self.entries.iter().position(|e| {
            let Some(started) = e.started.filter(|_| !e.done) else {
                return false;
            };
            self.cfg.timeout.is_some_and(|t| now - started > t + GRACE)
                || self
                    .cfg
                    .max_silent_time
                    .is_some_and(|t| now - e.last_output > t + GRACE)
        })
    }

    fn overrun_message(&self) -> String {
        "killed by kiln: exceeded --timeout or --max-silent-time (Nix did not stop it)".into()
    }

    /// Mark started jobs whose outputs are now valid as succeeded.
    async fn check_valid(&mut self, nix: &Nix, ended: Instant) {
        let candidates: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.entries[i].done && self.entries[i].started.is_some())
            .collect();
        self.resolve_valid(nix, &candidates, ended).await;
    }

    async fn resolve_valid(&mut self, nix: &Nix, candidates: &[usize], ended: Instant) {
        let paths: Vec<String> = candidates
            .iter()
            .flat_map(|&i| self.entries[i].job.outputs.iter().cloned())
            .collect();
        if paths.is_empty() {
            return;
        }
        let Ok(valid) = nix.valid_paths(&paths).await else {
            return;
        };
        for &i in candidates {
            let e = &self.entries[i];
            if !e.job.outputs.is_empty() && e.job.outputs.iter().all(|o| valid.contains(o)) {
                let (status, end) = match e.started {
                    // It ended at the first "one more done" after its start.
                    Some(started) => (
                        JobStatus::Succeeded,
                        self.done_times
                            .iter()
                            .copied()
                            .find(|&t| t >= started)
                            .unwrap_or(ended),
                    ),
                    None => (JobStatus::Cached, ended),
                };
                self.resolve(i, status, None, end);
            }
        }
    }

    fn flush_logs(&mut self) {
        for log in self.entries.iter_mut().filter_map(|e| e.log.as_mut()) {
            log.flush();
        }
        for log in self.others.values_mut() {
            log.flush();
        }
    }

    fn close_logs(&mut self) {
        for e in &mut self.entries {
            if let Some(log) = e.log.take() {
                let _ = log.finish();
            }
        }
        for (_, log) in self.others.drain() {
            let _ = log.finish();
        }
    }

    /// Resolve every job still open after the process ended: valid outputs
    /// succeeded; the rest are left over (killed, transient) or failed.
    async fn finish_rest(
        &mut self,
        nix: &Nix,
        killed: bool,
        transient: Option<String>,
        exit: Option<String>,
    ) {
        let open: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.entries[i].done)
            .collect();
        self.resolve_valid(nix, &open, Instant::now()).await;
        let reason = if killed {
            Some(Leftover::Killed)
        } else {
            transient.map(Leftover::Transient)
        };
        let leftover = match reason {
            Some(reason) => {
                let leftover = self.unresolved();
                self.close_logs();
                Some((leftover, reason))
            }
            None => {
                let error = self
                    .last_error
                    .clone()
                    .or(exit)
                    .unwrap_or_else(|| "Nix did not build it and gave no reason".into());
                for i in 0..self.entries.len() {
                    self.resolve(i, JobStatus::Failed, Some(error.clone()), Instant::now());
                }
                self.close_logs();
                None
            }
        };
        let (leftover, reason) = leftover.unwrap_or((vec![], Leftover::Killed));
        self.send(ExecEvent::Done {
            batch: self.id,
            leftover,
            reason,
        });
    }
}
