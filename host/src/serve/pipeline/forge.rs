//! Calls into a forge instance's plugin from the pipeline: statuses,
//! repository and pull-request lists and clone credentials, each with the plugin's grant
//! and limits and its log lines passed to tracing.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_runtime::bindings::forge_types::{GitCredentials, PullRequest, Repository, StatusReport};
use kiln_runtime::context::{LogSink, NoStore, SecretProvider};
use kiln_runtime::{CallContext, CallError, Called, Grant, Limits};
use serde_json::{Value, json};

use super::Pipeline;
use crate::config::ForgeInstance;
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

/// The context of a call into forge instance `instance` (served by
/// `forge.plugin`): the plugin's grant, and the instance's secrets under the
/// names the plugin asks for.
pub fn call_context(
    plugins: &PluginHost,
    instance: &str,
    forge: &ForgeInstance,
) -> (CallContext, Limits) {
    let (grant, limits) = grant(plugins, &forge.plugin);
    let secrets: Arc<dyn SecretProvider> = if forge.secrets.is_empty() {
        plugins.secrets.clone()
    } else {
        Arc::new(InstanceSecrets {
            inner: plugins.secrets.clone(),
            names: forge.secrets.clone(),
        })
    };
    let ctx = CallContext {
        plugin: forge.plugin.clone(),
        project: instance.to_owned(),
        grant: Arc::new(grant),
        secrets,
        store: Arc::new(NoStore),
        kv: plugins.kv.clone(),
        log: LogSink::new(1 << 20),
    };
    (ctx, limits)
}

/// Secrets of one forge instance: the plugin's names mapped to the
/// instance's `[secrets.*]` entries.
struct InstanceSecrets {
    inner: Arc<dyn SecretProvider>,
    names: BTreeMap<String, String>,
}

impl SecretProvider for InstanceSecrets {
    fn get(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        let configured = self.names.get(name).map_or(name, String::as_str);
        self.inner.get(configured)
    }
}

/// What a call into `instance`'s plugin needs.
struct Prepared {
    plugin: Arc<kiln_runtime::Plugin>,
    plugin_name: String,
    config: Vec<(String, String)>,
    ctx: CallContext,
    limits: Limits,
}

fn prepare(p: &Pipeline, instance: &str) -> Result<Prepared, CallError> {
    let forge = p
        .forges
        .get(instance)
        .ok_or_else(|| not_configured(instance))?;
    let plugin = p
        .plugins
        .registry
        .get(&forge.plugin)
        .ok_or_else(|| not_configured(instance))?;
    let (ctx, limits) = call_context(&p.plugins, instance, forge);
    Ok(Prepared {
        plugin,
        plugin_name: forge.plugin.clone(),
        config: forge.config_pairs(),
        ctx,
        limits,
    })
}

/// The call's result, its log lines passed to tracing.
fn finish<T>(instance: &str, plugin: &str, called: Called<T>) -> Result<T, CallError> {
    for line in &called.log {
        tracing::debug!(instance, plugin, "{}", line.message);
    }
    called.result
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
    let c = prepare(p, instance)?;
    let runtime = p.plugins.registry.runtime();
    let called = runtime
        .report_status(&c.plugin, report, &c.config, c.ctx, c.limits)
        .await;
    finish(instance, &c.plugin_name, called)
}

/// The repositories `instance`'s plugin says to build.
pub async fn list_repositories(p: &Pipeline, instance: &str) -> Result<Vec<Repository>, CallError> {
    let c = prepare(p, instance)?;
    let runtime = p.plugins.registry.runtime();
    let called = runtime
        .list_repositories(&c.plugin, &c.config, c.ctx, c.limits)
        .await;
    finish(instance, &c.plugin_name, called)
}

/// Credentials to fetch `repository`.
pub async fn clone_credentials(
    p: &Pipeline,
    instance: &str,
    repository: &Repository,
) -> Result<GitCredentials, CallError> {
    let c = prepare(p, instance)?;
    let runtime = p.plugins.registry.runtime();
    let called = runtime
        .clone_credentials(&c.plugin, repository, &c.config, c.ctx, c.limits)
        .await;
    finish(instance, &c.plugin_name, called)
}

/// The open pull requests of `repository`.
pub async fn list_pull_requests(
    p: &Pipeline,
    instance: &str,
    repository: &Repository,
) -> Result<Vec<PullRequest>, CallError> {
    let c = prepare(p, instance)?;
    let runtime = p.plugins.registry.runtime();
    let called = runtime
        .list_pull_requests(&c.plugin, repository, &c.config, c.ctx, c.limits)
        .await;
    finish(instance, &c.plugin_name, called)
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_runtime::context::StaticSecrets;

    #[test]
    fn an_instance_reads_its_own_secret_under_the_plugin_name() {
        let mut all = StaticSecrets::default();
        all.0
            .insert("github-webhook-secret".into(), b"public".to_vec());
        all.0.insert("ghe-webhook".into(), b"enterprise".to_vec());
        let secrets = InstanceSecrets {
            inner: Arc::new(all),
            names: [("github-webhook-secret".to_owned(), "ghe-webhook".to_owned())].into(),
        };
        assert_eq!(
            secrets.get("github-webhook-secret"),
            Some(Ok(b"enterprise".to_vec()))
        );
        assert_eq!(secrets.get("ghe-webhook"), Some(Ok(b"enterprise".to_vec())));
        assert_eq!(secrets.get("github-token"), None);
    }
}
