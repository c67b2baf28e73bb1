//! Calls into a forge instance's plugin from the pipeline: statuses,
//! repository lists and clone credentials, each with the plugin's grant
//! and limits and its log lines passed to tracing.

use std::sync::Arc;

use kiln_runtime::bindings::forge_types::{GitCredentials, Repository, StatusReport};
use kiln_runtime::context::{LogSink, NoStore};
use kiln_runtime::{CallContext, CallError, Grant, Limits};
use serde_json::{Value, json};

use super::Pipeline;
use crate::plugins::PluginHost;

/// The grant of a forge plugin: its `[grants.<plugin>]` whatever its
/// `projects` (a webhook belongs to the instance before it names a project).
pub fn grant(plugins: &PluginHost, plugin: &str) -> (Grant, Limits) {
    let base = plugins.config.plugins.limits;
    match plugins.config.grants.get(plugin) {
        Some(g) => (g.clone(), g.limits.apply(base)),
        None => (Grant::default(), base),
    }
}

fn context(p: &Pipeline, instance: &str, plugin: &str) -> (CallContext, Limits) {
    let (grant, limits) = grant(&p.plugins, plugin);
    let ctx = CallContext {
        plugin: plugin.to_owned(),
        project: instance.to_owned(),
        grant: Arc::new(grant),
        secrets: p.plugins.secrets.clone(),
        store: Arc::new(NoStore),
        kv: p.plugins.kv.clone(),
        log: LogSink::new(1 << 20),
    };
    (ctx, limits)
}

fn not_configured(instance: &str) -> CallError {
    CallError::Failed(format!(
        "forge instance `{instance}` is not configured (or its plugin is not installed)"
    ))
}

/// Post one status through `instance`'s plugin.
pub async fn report_status(
    p: &Pipeline,
    instance: &str,
    report: &StatusReport,
) -> Result<(), CallError> {
    let Some(forge) = p.forges.get(instance) else {
        return Err(not_configured(instance));
    };
    let Some(plugin) = p.plugins.registry.get(&forge.plugin) else {
        return Err(not_configured(instance));
    };
    let (ctx, limits) = context(p, instance, &forge.plugin);
    let called = p
        .plugins
        .registry
        .runtime()
        .report_status(&plugin, report, &forge.config_pairs(), ctx, limits)
        .await;
    for line in &called.log {
        tracing::debug!(instance, plugin = %forge.plugin, "{}", line.message);
    }
    called.result
}

/// The repositories `instance`'s plugin says to build.
pub async fn list_repositories(p: &Pipeline, instance: &str) -> Result<Vec<Repository>, CallError> {
    let Some(forge) = p.forges.get(instance) else {
        return Err(not_configured(instance));
    };
    let Some(plugin) = p.plugins.registry.get(&forge.plugin) else {
        return Err(not_configured(instance));
    };
    let (ctx, limits) = context(p, instance, &forge.plugin);
    let called = p
        .plugins
        .registry
        .runtime()
        .list_repositories(&plugin, &forge.config_pairs(), ctx, limits)
        .await;
    for line in &called.log {
        tracing::debug!(instance, plugin = %forge.plugin, "{}", line.message);
    }
    called.result
}

/// Credentials to fetch `repository`.
pub async fn clone_credentials(
    p: &Pipeline,
    instance: &str,
    repository: &Repository,
) -> Result<GitCredentials, CallError> {
    let Some(forge) = p.forges.get(instance) else {
        return Err(not_configured(instance));
    };
    let Some(plugin) = p.plugins.registry.get(&forge.plugin) else {
        return Err(not_configured(instance));
    };
    let (ctx, limits) = context(p, instance, &forge.plugin);
    let called = p
        .plugins
        .registry
        .runtime()
        .clone_credentials(&plugin, repository, &forge.config_pairs(), ctx, limits)
        .await;
    for line in &called.log {
        tracing::debug!(instance, plugin = %forge.plugin, "{}", line.message);
    }
    called.result
}

/// A repository record as stored (the events' and projects' JSON).
pub fn repository_json(r: &Repository) -> Value {
    json!({
        "full_name": r.full_name,
        "owner": r.owner,
        "name": r.name,
        "clone_url": r.clone_url,
        "web_url": r.web_url,
        "default_branch": r.default_branch,
        "private": r.private,
        "topics": r.topics,
    })
}

/// The repository record back from its JSON.
pub fn repository_from_json(v: &Value) -> Option<Repository> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(Repository {
        full_name: s("full_name")?,
        owner: s("owner").unwrap_or_default(),
        name: s("name").unwrap_or_default(),
        clone_url: s("clone_url")?,
        web_url: s("web_url"),
        default_branch: s("default_branch")?,
        private: v.get("private").and_then(Value::as_bool).unwrap_or(false),
        topics: v
            .get("topics")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    })
}
