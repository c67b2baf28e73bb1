//! Post-build steps of `kiln run`: the operator's default `[[post_build]]`
//! steps from `kiln.toml`, then the repository's, run through the plugin
//! host on each job that built (or, with `on_cached`, was cached), in order.
//!
//! The repository's steps are the default branch's (the engine applies that
//! rule); a repository step for the same plugin as a default replaces the
//! default's settings in the default's place. The repository selects and
//! configures steps; only the operator's `kiln.toml` grants. A step whose
//! plugin asks for a secret, host, store operation or directory that the
//! grant for this project lacks fails before it runs, naming the step, what
//! is missing and the project; on a pull request from a fork, a step whose
//! plugin asks for or is granted a secret is skipped unless the project opted
//! in. Signatures a step returns are passed to the steps after it. This
//! module must not decide job statuses: it reports each step's result and
//! the pipeline decides.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::job::JobStatus;
use kiln_engine::repo_config::PostBuildStep;
use kiln_engine::report::{JobReport, PostBuildResult, PostBuildStatus};
use kiln_engine::run::{BoxFuture, PostBuildHook, PreparedRun};
use kiln_engine::source::{Change, StepsSource};
use kiln_runtime::bindings::post_build_types::{BuildInfo, Output, PathSignatures};
use kiln_runtime::grant::Capability;
use kiln_runtime::plugin::Requested;
use kiln_runtime::{CallError, Grant, World};

use crate::plugins::PluginHost;

mod select;

pub use select::{SelectedStep, StepOrigin, select_steps};
use select::{fork_skip_reason, summary};

/// How often a step that asks to be retried is retried.
const MAX_ATTEMPTS: u32 = 3;
/// The longest delay a step may ask for in `kiln run`.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);

/// What the run knows once its source is prepared.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// The steps to run, in order.
    pub steps: Vec<SelectedStep>,
    /// The project name given to plugins and matched against grants.
    pub project: String,
    /// The evaluated revision.
    pub rev: Option<String>,
    /// The change built: branch, default branch, pull request, fork.
    pub change: Change,
    /// `secrets_on_fork_pull_requests` for this project.
    pub secrets_on_forks: bool,
    /// One line saying which steps run and where they came from, for logs.
    pub summary: String,
}

/// The `PostBuildHook` backed by the plugin host.
pub struct PluginSteps {
    host: Arc<PluginHost>,
    context: Mutex<RunContext>,
    /// The project name for grants and plugins; `None` = FLAKE as given.
    project: Option<String>,
    /// Run every step on cached jobs too (`kiln serve` re-running a run
    /// whose steps may not have finished: uploads check presence first).
    rerun_on_cached: bool,
    /// Print which steps run on stderr (`kiln run`).
    announce: bool,
    /// Told how long each step took.
    metrics: Option<Arc<dyn StepMetrics>>,
}

/// Where step durations and failures are counted (`kiln serve`'s metrics).
pub trait StepMetrics: Send + Sync {
    /// Step `plugin` ran for `elapsed`; `failed` when it failed (a warning
    /// or a skip is not a failure).
    fn step(&self, plugin: &str, elapsed: Duration, failed: bool);
}

impl StepMetrics for crate::serve::metrics::Metrics {
    fn step(&self, plugin: &str, elapsed: Duration, failed: bool) {
        crate::serve::metrics::Metrics::step(self, plugin, elapsed, failed);
    }
}

impl PluginSteps {
    /// Steps run by `host`; the context is set once the source is prepared.
    pub fn new(host: Arc<PluginHost>) -> Self {
        PluginSteps {
            host,
            context: Mutex::new(RunContext::default()),
            project: None,
            rerun_on_cached: false,
            announce: true,
            metrics: None,
        }
    }

    /// Count each step's duration and failure in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn StepMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Steps of a `kiln serve` run of `project`; `rerun_on_cached` runs the
    /// steps on cached jobs too (a resumed, approved or rebuilt run).
    pub fn for_service(host: Arc<PluginHost>, project: String, rerun_on_cached: bool) -> Self {
        PluginSteps {
            project: Some(project),
            rerun_on_cached,
            announce: false,
            ..PluginSteps::new(host)
        }
    }

    /// Set the run's steps, project, revision and branch.
    pub fn set_context(&self, context: RunContext) {
        *self.context.lock().unwrap_or_else(|e| e.into_inner()) = context;
    }

    async fn run_steps(&self, job: &JobReport) -> Vec<PostBuildResult> {
        let ctx = self
            .context
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut results = Vec::new();
        let mut signatures: Vec<PathSignatures> = Vec::new();
        if !ctx.steps.is_empty() {
            append_line(job, &format!("[kiln] {}", ctx.summary));
        }
        for selected in &ctx.steps {
            let step = &selected.step;
            let began = std::time::Instant::now();
            let result = self.run_step(step, job, &ctx, &mut signatures).await;
            if let Some(m) = &self.metrics
                && result.status != PostBuildStatus::Skipped
            {
                m.step(
                    &result.step,
                    began.elapsed(),
                    result.status == PostBuildStatus::Failed,
                );
            }
            append_log(job, &result);
            results.push(result);
        }
        results
    }

    async fn run_step(
        &self,
        step: &PostBuildStep,
        job: &JobReport,
        ctx: &RunContext,
        signatures: &mut Vec<PathSignatures>,
    ) -> PostBuildResult {
        let name = step.plugin.clone();
        let result = |status, message: String| PostBuildResult {
            step: name.clone(),
            status,
            message,
        };
        let cached = job.status == JobStatus::Cached;
        if cached && !step.on_cached && !self.rerun_on_cached {
            return result(
                PostBuildStatus::Skipped,
                "outputs were cached; set on_cached = true to run anyway".into(),
            );
        }
        if !step.branches.is_empty() {
            match &ctx.change.branch {
                Some(b) if step.branches.iter().any(|x| x == b) => {}
                Some(b) => {
                    return result(
                        PostBuildStatus::Skipped,
                        format!("branch `{b}` is not in this step's branches"),
                    );
                }
                None => {
                    return result(
                        PostBuildStatus::Skipped,
                        "the branch is not known, and this step names branches".into(),
                    );
                }
            }
        }
        let failed = |message: String| {
            result(
                if step.warn_only {
                    PostBuildStatus::Warning
                } else {
                    PostBuildStatus::Failed
                },
                message,
            )
        };
        let Some(plugin) = self.host.registry.get(&step.plugin) else {
            let installed: Vec<String> = self
                .host
                .registry
                .list()
                .iter()
                .map(|p| p.info.name.clone())
                .collect();
            return failed(format!(
                "no plugin named `{}` is installed (installed: {})",
                step.plugin,
                installed.join(", ")
            ));
        };
        if plugin.info.world != World::PostBuild {
            return failed(format!(
                "plugin `{}` is a {} plugin, not a post-build plugin",
                step.plugin,
                plugin.info.world.as_str()
            ));
        }
        let (grant, limits) = self.host.grant_for(&plugin.info.name, &ctx.project);
        if let Some(reason) =
            fork_skip_reason(ctx, &plugin.info.name, &plugin.info.requests, &grant)
        {
            return result(PostBuildStatus::Skipped, reason);
        }
        if let Some(missing) = first_ungranted(&plugin.info.requests, &grant) {
            return failed(format!(
                "step `{}` needs {missing}, which kiln.toml does not grant to plugin `{}` for project `{}`",
                step.plugin, plugin.info.name, ctx.project
            ));
        }
        let build = BuildInfo {
            project: ctx.project.clone(),
            attr: job.attr.clone(),
            system: job.system.clone(),
            drv_path: job.drv_path.clone().unwrap_or_default(),
            outputs: job
                .outputs
                .iter()
                .map(|(n, p)| Output {
                    name: n.clone(),
                    path: p.clone(),
                })
                .collect(),
            branch: ctx.change.branch.clone(),
            pull_request: ctx.change.pull_request,
            is_default_branch: ctx.change.is_default_branch,
            rev: ctx.rev.clone(),
            cached,
            signatures: signatures.clone(),
        };
        let config = settings(step);
        let mut attempt = 1;
        loop {
            let run = self
                .host
                .run_post_build(&plugin, &build, &config, grant.clone(), limits)
                .await;
            append_plugin_log(job, &name, &run.log);
            match run.result {
                Ok(outcome) => {
                    signatures.extend(run.signatures);
                    let mut message = outcome.message;
                    if let Some(w) = run.store_warning {
                        message = format!("{message} (warning: {w})");
                    }
                    return result(PostBuildStatus::Succeeded, message);
                }
                Err(CallError::RetryAfter { seconds, reason }) if attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(seconds.into()).min(MAX_RETRY_DELAY))
                        .await;
                    tracing::info!(step = %name, %reason, attempt, "retrying a post-build step");
                }
                Err(e) => return failed(e.to_string()),
            }
        }
    }
}

impl PostBuildHook for PluginSteps {
    fn prepare(&self, run: &PreparedRun<'_>) {
        let project = self.project.clone().unwrap_or_else(|| run.flake.to_owned());
        let steps = select_steps(&self.host.config.post_build, &project, &run.steps.steps);
        let summary = summary(&steps, &run.steps.source);
        if self.announce && (!steps.is_empty() || run.steps.source != StepsSource::Checkout) {
            eprintln!("kiln run: {summary}");
        }
        self.set_context(RunContext {
            steps,
            secrets_on_forks: self
                .host
                .config
                .project(&project)
                .secrets_on_fork_pull_requests,
            project,
            rev: run.rev.map(str::to_owned),
            change: run.change.clone(),
            summary,
        });
    }

    fn run<'a>(&'a self, job: &'a JobReport) -> BoxFuture<'a, Vec<PostBuildResult>> {
        Box::pin(self.run_steps(job))
    }
}

/// The first capability `requests` names that `grant` does not give,
/// described as the grant check describes it (`secret `x``, …).
fn first_ungranted(requests: &Requested, grant: &Grant) -> Option<String> {
    let hosts = requests.hosts.iter().map(|h| match h.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => Capability::Http {
            host,
            port: port.parse().ok(),
        },
        _ => Capability::Http {
            host: h,
            port: None,
        },
    });
    requests
        .secrets
        .iter()
        .map(|s| Capability::Secret(s))
        .chain(hosts)
        .chain(requests.store.iter().map(|op| Capability::Store(*op)))
        .chain(
            requests
                .directories
                .iter()
                .map(|d| Capability::Directory(d)),
        )
        .chain(requests.kv.then_some(Capability::Kv))
        .find_map(|c| grant.check(c).err())
        .map(|denied| denied.0)
}

/// A step's plugin settings as the plugin's config pairs: strings as they
/// are, other scalars as TOML text, arrays and tables as JSON.
pub fn settings(step: &PostBuildStep) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = step
        .settings
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    serde_json::to_string(v).unwrap_or_default()
                }
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    // The step's `branches` also tell the plugin where it may act (gcroot
    // and outputs act on the default branch unless told otherwise).
    if !step.branches.is_empty() {
        let branches = serde_json::to_string(&step.branches).unwrap_or_default();
        pairs.push(("branches".to_owned(), branches));
    }
    pairs
}

/// Add a step's outcome to the job's log file.
fn append_log(job: &JobReport, result: &PostBuildResult) {
    let status = serde_json::to_value(result.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    append_line(
        job,
        &format!(
            "[kiln post-build {}] {status}: {}",
            result.step, result.message
        ),
    );
}

/// Add one line to the job's log file.
fn append_line(job: &JobReport, line: &str) {
    let Some(path) = &job.log_path else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Add a step's own log lines to the job's log file.
fn append_plugin_log(job: &JobReport, step: &str, lines: &[kiln_runtime::context::LogLine]) {
    let Some(path) = &job.log_path else { return };
    let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    else {
        return;
    };
    for line in lines {
        let _ = writeln!(f, "[{step}] {}", line.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_with_the_grant_rules() {
        let requests = Requested {
            secrets: vec!["token".into()],
            hosts: vec!["api.example.com".into(), "127.0.0.1:9000".into()],
            ..Requested::default()
        };
        let mut grant = Grant {
            secrets: vec!["token".into()],
            ..Grant::default()
        };
        assert_eq!(
            first_ungranted(&requests, &grant).as_deref(),
            Some("HTTP to host `api.example.com`")
        );
        grant.hosts = vec!["*.example.com".into(), "127.0.0.1:9000".into()];
        assert_eq!(first_ungranted(&requests, &grant), None);
        let wants_kv = Requested {
            kv: true,
            ..Requested::default()
        };
        assert_eq!(
            first_ungranted(&wants_kv, &grant).as_deref(),
            Some("the key-value cache")
        );
    }

    #[test]
    fn settings_become_config_pairs_and_carry_the_branches() {
        let step: PostBuildStep = toml::from_str(
            "plugin = \"outputs\"\nbranches = [\"main\", \"release\"]\nname = \"x\"\nlevel = 3\nflag = true\nlist = [1, 2]\n",
        )
        .unwrap();
        let pairs = settings(&step);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("name"), Some("x"));
        assert_eq!(get("level"), Some("3"));
        assert_eq!(get("flag"), Some("true"));
        assert_eq!(get("list"), Some("[1,2]"));
        assert_eq!(get("branches"), Some("[\"main\",\"release\"]"));
        assert_eq!(get("plugin"), None);
    }
}
