//! The `kiln run` report, `version` 1, exactly as DESIGN.md's contract fixes
//! it: what `--report FILE` and `--json` write.
//!
//! Owns the wire shape (field names, order, nulls) and the summary counts. It
//! must not decide statuses or exit codes beyond counting them; adding a field
//! here changes a contract checked from outside.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::job::JobStatus;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Always 1.
    pub version: u32,
    /// FLAKE as given.
    pub flake: String,
    /// Git revision built, or null outside git.
    pub rev: Option<String>,
    /// The attribute evaluated (`checks` unless configured).
    pub attribute: String,
    /// Counts per status.
    pub summary: Summary,
    /// One entry per job, in evaluation order.
    pub jobs: Vec<JobReport>,
}

/// Counts per final status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// All jobs.
    pub total: usize,
    /// Built now.
    pub succeeded: usize,
    /// Already valid or substitutable.
    pub cached: usize,
    /// Build failed.
    pub failed: usize,
    /// A dependency failed.
    pub dependency_failed: usize,
    /// Attribute failed to evaluate.
    pub eval_error: usize,
    /// System not offered.
    pub unsupported_system: usize,
    /// Timeout or max-silent-time.
    pub timed_out: usize,
    /// Interrupted.
    pub cancelled: usize,
}

/// One job of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// Attribute relative to the selected attribute.
    pub attr: String,
    /// The derivation's system (empty when evaluation failed).
    pub system: String,
    /// `.drv` path, null when evaluation failed.
    pub drv_path: Option<String>,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// Final status.
    pub status: JobStatus,
    /// What went wrong, for failures.
    pub error: Option<String>,
    /// The failing job's attr, or a derivation path when it is not a job.
    pub failed_dependency: Option<String>,
    /// Build attempts (0 when nothing was built).
    pub attempts: u32,
    /// Build time in milliseconds (0 when nothing was built).
    pub duration_ms: u64,
    /// The job's log file, if one was written.
    pub log_path: Option<String>,
    /// Results of post-build steps, empty when none ran.
    pub post_build: Vec<PostBuildResult>,
}

/// Result of one post-build step on one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostBuildResult {
    /// Step name (the plugin).
    pub step: String,
    /// How it went.
    pub status: PostBuildStatus,
    /// Human-readable detail.
    pub message: String,
}

/// Status of a post-build step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostBuildStatus {
    /// Done.
    Succeeded,
    /// Failed (the job still counts as built).
    Failed,
    /// Failed but configured `warn_only`.
    Warning,
    /// Not applicable (branch, cached, …).
    Skipped,
}

impl Summary {
    /// Count the jobs' statuses.
    pub fn of(jobs: &[JobReport]) -> Summary {
        let mut s = Summary {
            total: jobs.len(),
            ..Summary::default()
        };
        for j in jobs {
            let slot = match j.status {
                JobStatus::Succeeded => &mut s.succeeded,
                JobStatus::Cached => &mut s.cached,
                JobStatus::Failed => &mut s.failed,
                JobStatus::DependencyFailed => &mut s.dependency_failed,
                JobStatus::EvalError => &mut s.eval_error,
                JobStatus::UnsupportedSystem => &mut s.unsupported_system,
                JobStatus::TimedOut => &mut s.timed_out,
                // Unfinished jobs are reported cancelled; count them so.
                JobStatus::Cancelled | JobStatus::Queued | JobStatus::Running => &mut s.cancelled,
            };
            *slot += 1;
        }
        s
    }
}

impl Report {
    /// Assemble a report; the summary is computed from `jobs`.
    pub fn new(
        flake: String,
        rev: Option<String>,
        attribute: String,
        jobs: Vec<JobReport>,
    ) -> Self {
        Report {
            version: 1,
            flake,
            rev,
            attribute,
            summary: Summary::of(&jobs),
            jobs,
        }
    }

    /// Whether any job makes `kiln run` exit 1.
    pub fn has_failures(&self) -> bool {
        self.jobs.iter().any(|j| j.status.is_failure())
    }

    /// Pretty JSON, as written to `--report` and `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Write the report to `path` (atomically: a temporary file renamed).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json() + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attr: &str, status: JobStatus) -> JobReport {
        JobReport {
            attr: attr.into(),
            system: "x86_64-linux".into(),
            drv_path: None,
            outputs: BTreeMap::new(),
            status,
            error: None,
            failed_dependency: None,
            attempts: 0,
            duration_ms: 0,
            log_path: None,
            post_build: vec![],
        }
    }

    #[test]
    fn serialises_exactly_the_contract_fields() {
        let r = Report::new(
            "./f".into(),
            None,
            "checks".into(),
            vec![job("x86_64-linux.a", JobStatus::DependencyFailed)],
        );
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        // Field order as in DESIGN.md (serde writes struct order).
        let in_order = |keys: &[&str]| {
            let pos: Vec<usize> = keys
                .iter()
                .map(|k| {
                    json.find(&format!("\"{k}\":"))
                        .unwrap_or_else(|| panic!("{k} missing"))
                })
                .collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{keys:?} out of order");
        };
        let count = |v: &serde_json::Value| v.as_object().unwrap().len();
        in_order(&["version", "flake", "rev", "attribute", "summary", "jobs"]);
        assert_eq!(count(&v), 6);
        in_order(&[
            "total",
            "succeeded",
            "cached",
            "failed",
            "dependency_failed",
            "eval_error",
            "unsupported_system",
            "timed_out",
            "cancelled",
        ]);
        assert_eq!(count(&v["summary"]), 9);
        in_order(&[
            "attr",
            "system",
            "drv_path",
            "outputs",
            "status",
            "error",
            "failed_dependency",
            "attempts",
            "duration_ms",
            "log_path",
            "post_build",
        ]);
        assert_eq!(count(&v["jobs"][0]), 11);
        assert_eq!(v["jobs"][0]["status"], "dependency_failed");
        assert_eq!(v["rev"], serde_json::Value::Null);
        assert_eq!(v["summary"]["dependency_failed"], 1);
        assert!(r.has_failures());
    }

    #[test]
    fn cached_and_unsupported_are_not_failures() {
        let r = Report::new(
            ".".into(),
            Some("abc".into()),
            "checks".into(),
            vec![
                job("a", JobStatus::Cached),
                job("b", JobStatus::UnsupportedSystem),
                job("c", JobStatus::Succeeded),
            ],
        );
        assert!(!r.has_failures());
        assert_eq!(r.summary.total, 3);
        assert_eq!(r.summary.cached, 1);
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
