//! The job: one evaluated attribute and its lifecycle status.
//!
//! These types are shared by the evaluator (which produces [`EvalJob`]s), the
//! job graph and scheduler (which turn them into [`JobStatus`]es) and the report
//! writer. They hold data only; no Nix invocation happens here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of evaluation output, normalised from nix-eval-jobs or from Kiln's
/// own evaluator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalJob {
    /// Attribute relative to the selected attribute, dot-joined
    /// (`x86_64-linux.hello` for `.#checks`).
    pub attr: String,
    /// The same attribute as path components.
    pub attr_path: Vec<String>,
    /// `system` of the derivation; empty when evaluation failed.
    pub system: String,
    /// `/nix/store/…drv`, or `None` when evaluation failed.
    pub drv_path: Option<String>,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// Whether outputs are already present.
    pub cache_status: CacheStatus,
    /// `requiredSystemFeatures` of the derivation.
    pub required_system_features: Vec<String>,
    /// Nix's error message when this attribute failed to evaluate.
    pub error: Option<String>,
}

/// nix-eval-jobs' `cacheStatus`, or what Kiln's evaluator found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// All outputs are valid in the local store.
    Local,
    /// All outputs can be fetched from a substituter.
    Cached,
    /// Something must be built.
    NotBuilt,
    /// Not checked.
    #[default]
    Unknown,
}

/// Final or intermediate status of a job, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for dependencies or a build slot.
    Queued,
    /// Being built.
    Running,
    /// Built now.
    Succeeded,
    /// Outputs were already valid or substitutable.
    Cached,
    /// The build failed.
    Failed,
    /// A dependency failed; see `failed_dependency`.
    DependencyFailed,
    /// The attribute failed to evaluate.
    EvalError,
    /// No executor offers the job's system.
    UnsupportedSystem,
    /// `--timeout` or `--max-silent-time` was exceeded.
    TimedOut,
    /// Interrupted before it finished.
    Cancelled,
}

impl JobStatus {
    /// Whether the status is final.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Whether this status makes `kiln run` exit 1.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            JobStatus::Failed
                | JobStatus::DependencyFailed
                | JobStatus::EvalError
                | JobStatus::TimedOut
        )
    }
}
