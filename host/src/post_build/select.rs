//! Which post-build steps run and which are held back: the operator's
//! defaults merged with the repository's steps (`select_steps`), the line
//! that says where they came from, and the rule that a pull request from a
//! fork runs no step that uses a secret unless the project opted in.
//!
//! It decides nothing about grants (`first_ungranted` does) and runs nothing.

use kiln_engine::repo_config::PostBuildStep;
use kiln_engine::source::StepsSource;
use kiln_runtime::Grant;
use kiln_runtime::plugin::Requested;

use super::RunContext;
use crate::config::DefaultStep;

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
pub(super) fn summary(steps: &[SelectedStep], from: &StepsSource) -> String {
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

/// Why a step must not run on this change: a pull request from a fork,
/// a plugin that asks for or is granted a secret, and a project that did not
/// opt in with `secrets_on_fork_pull_requests`.
pub(super) fn fork_skip_reason(
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

#[cfg(test)]
mod tests {
    use kiln_engine::source::Change;

    use super::*;

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
}
