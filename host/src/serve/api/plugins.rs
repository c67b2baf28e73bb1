//! `GET /api/v1/plugins`: the installed plugins (built in and from the
//! plugin directory), what each asks for and what the operator granted it,
//! and the forge instances it serves. Secret values never appear: a grant
//! names secrets, it does not hold them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use kiln_runtime::plugin::Requested;
use kiln_runtime::{Grant, Limits};
use serde::Serialize;

use super::ApiError;
use super::auth::{authz_plugin, caller};
use crate::serve::app::AppState;

/// One installed plugin.
#[derive(Debug, Serialize)]
pub struct PluginEntry {
    /// The name its `describe` returns.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `post-build`, `forge` or `authz`.
    pub world: &'static str,
    /// One line about what it does.
    pub summary: String,
    /// `builtin:<file>` or the file it was loaded from.
    pub origin: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// What it asks for.
    pub requests: Requested,
    /// What `[grants.<name>]` gives it; absent: nothing.
    pub grant: Option<Grant>,
    /// The budgets of each call.
    pub limits: Limits,
    /// Forge instances it serves.
    pub forges: Vec<String>,
    /// Whether the API asks it for access decisions.
    pub authz: bool,
}

/// The response body.
#[derive(Debug, Serialize)]
pub struct PluginList {
    /// Installed plugins, by name.
    pub plugins: Vec<PluginEntry>,
    /// Files in the plugin directory that failed to load, and why.
    pub failures: Vec<Failure>,
}

/// A plugin file that did not load.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// The file.
    pub path: String,
    /// Why.
    pub error: String,
}

/// The handler. Anyone may list plugins; only names of secrets and hosts
/// are shown.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<PluginList>, ApiError> {
    // A bad token is refused here as everywhere else.
    caller(&state, &headers).await?;
    Ok(Json(entries(&state)))
}

/// Every plugin loaded, with what it asks for and is granted, and the files
/// that failed to load.
pub fn entries(state: &AppState) -> PluginList {
    let host = &state.plugins;
    let mut plugins: Vec<PluginEntry> = host
        .registry
        .list()
        .iter()
        .map(|p| {
            let (_, limits) = crate::serve::pipeline::forge::grant(host, &p.info.name);
            PluginEntry {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                world: p.info.world.as_str(),
                summary: p.info.summary.clone(),
                origin: p.origin.clone(),
                sha256: p.sha256.clone(),
                requests: p.info.requests.clone(),
                grant: host.config.grants.get(&p.info.name).cloned(),
                limits,
                forges: state
                    .forges
                    .iter()
                    .filter(|(_, f)| f.plugin == p.info.name)
                    .map(|(instance, _)| instance.clone())
                    .collect(),
                authz: p.info.name == authz_plugin(&host.config),
            }
        })
        .collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    let failures = host
        .registry
        .failures()
        .into_iter()
        .map(|f| Failure {
            path: f.path.display().to_string(),
            error: f.error,
        })
        .collect();
    PluginList { plugins, failures }
}
