//! The router and the state its handlers share. `app(state)` is the whole
//! HTTP surface, so tests can drive it without a socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use super::db::Database;
use super::metrics::Metrics;
use super::pipeline::Pipeline;
use crate::config::ForgeInstance;
use crate::plugins::PluginHost;

/// Largest webhook body accepted (GitHub caps payloads at 25 MiB).
pub const MAX_WEBHOOK_BYTES: usize = 25 << 20;

/// What every handler can reach.
pub struct AppState {
    /// The database.
    pub db: Database,
    /// Group commit of webhook deliveries (`ingest.rs`).
    pub ingest: super::ingest::Ingest,
    /// Installed plugins, grants and secrets.
    pub plugins: Arc<PluginHost>,
    /// `[forges.<instance>]`, by instance.
    pub forges: BTreeMap<String, ForgeInstance>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Runs, jobs and statuses; control actions.
    pub pipeline: Arc<Pipeline>,
}

/// The service's routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/{instance}", post(super::webhooks::receive))
        .route(
            "/webhooks/{instance}/{*rest}",
            post(super::webhooks::receive),
        )
        .route("/metrics", get(super::metrics::get))
        .merge(super::api::router())
        .merge(super::ui::router())
        .merge(super::session::router())
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(state)
}
