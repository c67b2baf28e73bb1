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

use crate::config::DefaultStep;
use crate::plugins::PluginHost;

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

/// Where a step to run was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOrigin {
    /// An operator default from `kiln.toml`.
    Operator,
    /// The repository's `buildbot-nix.toml`.
    Repository,
    /// A repository step that replaced an operator default's settings.
    RepositoryOverOperator,
}

impl StepOrigin {
    fn as_str(self) -> &'static str {
        match self {
            StepOrigin::Operator => "kiln.toml",
            StepOrigin::Repository => "buildbot-nix.toml",
            StepOrigin::RepositoryOverOperator => "buildbot-nix.toml over kiln.toml",
        }
    }
}

/// One step to run and where it was configured.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedStep {
    /// The step.
    pub step: PostBuildStep,
    /// Where it came from.
    pub origin: StepOrigin,
}

/// The steps to run for `project`: the operator's defaults that cover it,
/// in `kiln.toml`'s order, then the repository's. The first repository step
/// for a default's plugin replaces that default's settings (`warn_only`,
/// `branches`, `on_cached` and the plugin's own keys) and runs in the
/// default's place, once.
pub fn select_steps(
    defaults: &[DefaultStep],
    project: &str,
    repository: &[PostBuildStep],
) -> Vec<SelectedStep> {
    let mut used = vec![false; repository.len()];
    let mut steps: Vec<SelectedStep> = defaults
        .iter()
        .filter(|d| d.covers_project(project))
        .map(|d| {
            let own = repository
                .iter()
                .position(|r| r.plugin == d.step.plugin)
                .filter(|&i| !used[i]);
            match own {
                Some(i) => {
                    used[i] = true;
                    SelectedStep {
                        step: repository[i].clone(),
                        origin: StepOrigin::RepositoryOverOperator,
                    }
                }
                None => SelectedStep {
                    step: d.step.clone(),
                    origin: StepOrigin::Operator,
                },
            }
        })
        .collect();
    steps.extend(
        repository
            .iter()
            .zip(used)
            .filter(|(_, used)| !used)
            .map(|(step, _)| SelectedStep {
                step: step.clone(),
                origin: StepOrigin::Repository,
            }),
    );
    steps
}

/// `post-build steps: `a` (kiln.toml), `b` (buildbot-nix.toml); repository
/// steps from …`.
fn summary(steps: &[SelectedStep], from: &StepsSource) -> String {
    let list: Vec<String> = steps
        .iter()
        .map(|s| format!("`{}` ({})", s.step.plugin, s.origin.as_str()))
        .collect();
    format!(
        "post-build steps: {}; repository steps from {from}",
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    )
}

/// The `PostBuildHook` backed by the plugin host.
pub struct PluginSteps {
    host: Arc<PluginHost>,
    context: Mutex<RunContext>,
}

impl PluginSteps {
    /// Steps run by `host`; the context is set once the source is prepared.
    pub fn new(host: Arc<PluginHost>) -> Self {
        PluginSteps {
            host,
            context: Mutex::new(RunContext::default()),
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
            let result = self.run_step(step, job, &ctx, &mut signatures).await;
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
        if cached && !step.on_cached {
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
        let project = run.flake.to_owned();
        let steps = select_steps(&self.host.config.post_build, &project, &run.steps.steps);
        let summary = summary(&steps, &run.steps.source);
        if !steps.is_empty() || run.steps.source != StepsSource::Checkout {
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

/// Why a step must not run on this change: a pull request from a fork,
/// a plugin that asks for or is granted a secret, and a project that did not
/// opt in with `secrets_on_fork_pull_requests`.
fn fork_skip_reason(
    ctx: &RunContext,
    plugin: &str,
    requests: &Requested,
    grant: &Grant,
) -> Option<String> {
    if !ctx.change.fork || ctx.secrets_on_forks {
        return None;
    }
    let mut secrets: Vec<&str> = requests
        .secrets
        .iter()
        .chain(&grant.secrets)
        .map(String::as_str)
        .collect();
    secrets.sort_unstable();
    secrets.dedup();
    if secrets.is_empty() {
        return None;
    }
    let pr = ctx
        .change
        .pull_request
        .map_or_else(String::new, |n| format!(" #{n}"));
    let names: Vec<String> = secrets.iter().map(|s| format!("`{s}`")).collect();
    Some(format!(
        "pull request{pr} comes from a fork, and plugin `{plugin}` uses secret {}; to run it on fork pull requests, set `secrets_on_fork_pull_requests = true` under [projects.\"{}\"] in kiln.toml",
        names.join(", "),
        ctx.project
    ))
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

    fn step(toml_text: &str) -> PostBuildStep {
        toml::from_str(toml_text).unwrap()
    }

    fn default_step(toml_text: &str) -> DefaultStep {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_run_first_and_a_repository_step_replaces_their_settings() {
        let defaults = [
            default_step("plugin = \"gcroot\"\n"),
            default_step("plugin = \"sign\"\nkey = \"operator\"\n"),
            default_step("plugin = \"outputs\"\nprojects = [\"other/*\"]\n"),
        ];
        let repository = [
            step("plugin = \"upload\"\n"),
            step("plugin = \"sign\"\nkey = \"repo\"\nwarn_only = true\n"),
            step("plugin = \"sign\"\nkey = \"second\"\n"),
        ];
        let steps = select_steps(&defaults, "me/repo", &repository);
        let shown: Vec<(&str, StepOrigin, Option<&str>)> = steps
            .iter()
            .map(|s| {
                (
                    s.step.plugin.as_str(),
                    s.origin,
                    s.step.settings.get("key").and_then(|v| v.as_str()),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("gcroot", StepOrigin::Operator, None),
                ("sign", StepOrigin::RepositoryOverOperator, Some("repo")),
                ("upload", StepOrigin::Repository, None),
                ("sign", StepOrigin::Repository, Some("second")),
            ]
        );
        assert!(steps[1].step.warn_only);
        // `outputs` is only for other/*; with no repository steps the
        // defaults run as written.
        let steps = select_steps(&defaults, "other/x", &[]);
        assert_eq!(steps.len(), 3);
        assert!(steps.iter().all(|s| s.origin == StepOrigin::Operator));
        assert_eq!(
            summary(&steps[..1], &StepsSource::Checkout),
            "post-build steps: `gcroot` (kiln.toml); repository steps from the checked-out buildbot-nix.toml"
        );
    }

    #[test]
    fn fork_pull_requests_skip_steps_with_secrets_unless_opted_in() {
        let mut ctx = RunContext {
            project: "me/repo".into(),
            change: Change {
                pull_request: Some(4),
                fork: true,
                ..Change::default()
            },
            ..RunContext::default()
        };
        let asks = Requested {
            secrets: vec!["signing-key".into()],
            ..Requested::default()
        };
        let granted = Grant {
            secrets: vec!["token".into()],
            ..Grant::default()
        };
        let none = Requested::default();
        let reason = fork_skip_reason(&ctx, "sign", &asks, &Grant::default()).unwrap();
        assert_eq!(
            reason,
            "pull request #4 comes from a fork, and plugin `sign` uses secret `signing-key`; to run it on fork pull requests, set `secrets_on_fork_pull_requests = true` under [projects.\"me/repo\"] in kiln.toml"
        );
        // Granted but not asked for counts too.
        assert!(fork_skip_reason(&ctx, "x", &none, &granted).is_some());
        assert_eq!(fork_skip_reason(&ctx, "x", &none, &Grant::default()), None);
        ctx.secrets_on_forks = true;
        assert_eq!(fork_skip_reason(&ctx, "sign", &asks, &granted), None);
        ctx.secrets_on_forks = false;
        ctx.change.fork = false;
        assert_eq!(fork_skip_reason(&ctx, "sign", &asks, &granted), None);
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
