//! One job's record inside the driver: its evaluation line, status and
//! build facts, and its conversion into a report entry (unfinished jobs
//! become `cancelled`). It must not change state on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::job::{EvalJob, JobStatus};
use crate::report::{JobReport, PostBuildResult};

/// A job as the driver tracks it.
pub(super) struct JobRec {
    pub(super) eval: EvalJob,
    pub(super) status: JobStatus,
    pub(super) error: Option<String>,
    pub(super) failed_dependency: Option<String>,
    pub(super) attempts: u32,
    pub(super) started: Option<Instant>,
    pub(super) duration_ms: u64,
    pub(super) log_path: Option<PathBuf>,
    pub(super) post_build: Vec<PostBuildResult>,
}

impl JobRec {
    pub(super) fn new(eval: EvalJob) -> Self {
        JobRec {
            eval,
            status: JobStatus::Queued,
            error: None,
            failed_dependency: None,
            attempts: 0,
            started: None,
            duration_ms: 0,
            log_path: None,
            post_build: Vec::new(),
        }
    }

    pub(super) fn to_report(&self) -> JobReport {
        let status = match self.status {
            JobStatus::Queued | JobStatus::Running => JobStatus::Cancelled,
            s => s,
        };
        self.report_with(status)
    }

    /// The job as it stands, for a [`crate::run::RunObserver`]: `running`
    /// once Nix started it, `queued` before that.
    pub(super) fn to_live_report(&self) -> JobReport {
        let status = match self.status {
            JobStatus::Running if self.started.is_none() => JobStatus::Queued,
            s => s,
        };
        self.report_with(status)
    }

    fn report_with(&self, status: JobStatus) -> JobReport {
        let log_path = self
            .log_path
            .as_ref()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string());
        JobReport {
            attr: self.eval.attr.clone(),
            system: self.eval.system.clone(),
            drv_path: self.eval.drv_path.clone(),
            outputs: self
                .eval
                .outputs
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            status,
            error: self.error.clone(),
            failed_dependency: self.failed_dependency.clone(),
            attempts: self.attempts,
            duration_ms: self.duration_ms,
            log_path,
            post_build: self.post_build.clone(),
        }
    }
}
