//! `GET /api/v1/workers`: the build slots (how many runs may run at once,
//! how many do, how many jobs each builds at once) and the runs holding
//! them that the caller may see.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use super::ApiError;
use super::auth::{Readable, caller};
use super::runs::{self, Run};
use crate::serve::app::AppState;
use crate::serve::pipeline::Slots;

/// The response body.
#[derive(Debug, Serialize)]
pub struct Workers {
    /// The pipeline's slots.
    #[serde(flatten)]
    pub slots: Slots,
    /// Runs in progress, oldest first (those of private projects the
    /// caller may not read are left out, not counted in `runs_in_use`'s
    /// stead).
    pub running: Vec<Run>,
}

/// The handler.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Workers>, ApiError> {
    let subject = caller(&state, &headers).await?;
    let slots = state.pipeline.slots();
    let all = runs::in_state(&state.db, "running")
        .await
        .map_err(|e| ApiError::database("listing running runs", e))?;
    let mut readable = Readable::new(&state, subject.as_ref());
    let mut running = Vec::with_capacity(all.len());
    for run in all {
        if readable.project(&run.access()).await {
            running.push(run);
        }
    }
    Ok(Json(Workers { slots, running }))
}
