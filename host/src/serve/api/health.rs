//! `GET /api/v1/health`: the service answers, with its version and which
//! database backend it uses.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::serve::app::AppState;

/// The response body.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Always `ok` when the service answers.
    pub status: &'static str,
    /// Kiln's version.
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
}

/// The handler.
pub async fn get(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        database: state.db.backend(),
    })
}
