//! Control actions: `POST /api/v1/runs/{id}/rebuild`, `…/cancel`,
//! `…/approve` and `POST /api/v1/jobs/{id}/rebuild`.
//!
//! Each needs a token (401 without a valid one), the authz plugin's consent
//! for the action on the run or job (403 with the plugin's reason), then
//! goes to [`crate::serve::pipeline::Pipeline::control`]: 404 when the run
//! or job is gone, 409 when its state does not allow the action, 202 with
//! the run's new state.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use kiln_runtime::bindings::authz_types::{Action, ResourceKind, Subject};
use serde::Serialize;

use super::ApiError;
use super::auth::{decide, pull_request_ref, signed_in};
use super::runs::{self, Run};
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};
use crate::serve::pipeline::{Control, ControlError};

/// The answer to an accepted action.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The run acted on.
    pub run: i64,
    /// The job rebuilt, for a job's rebuild.
    pub job: Option<i64>,
    /// `rebuild`, `cancel` or `approve`.
    pub action: &'static str,
    /// The run's state afterwards.
    pub state: String,
    /// Who asked.
    pub by: String,
}

/// `POST /api/v1/runs/{id}/rebuild`.
pub async fn rebuild_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    act(&state, &headers, id, None, Control::Rebuild).await
}

/// `POST /api/v1/runs/{id}/cancel`.
pub async fn cancel_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    act(&state, &headers, id, None, Control::Cancel).await
}

/// `POST /api/v1/runs/{id}/approve`.
pub async fn approve_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    act(&state, &headers, id, None, Control::Approve).await
}

/// `POST /api/v1/jobs/{id}/rebuild`.
pub async fn rebuild_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<i64>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let subject = signed_in(&state, &headers).await?;
    let run: Option<i64> = with_pool!(&state.db, pool => {
        sqlx::query_scalar("SELECT run_id FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(pool)
            .await
    })
    .map_err(|e| ApiError::database(&format!("reading job {job}"), e))?;
    let run = run.ok_or_else(|| ApiError::not_found(format!("no job {job}")))?;
    apply(&state, subject, run, Some(job), Control::RebuildJob(job)).await
}

async fn act(
    state: &AppState,
    headers: &HeaderMap,
    run: i64,
    job: Option<i64>,
    control: Control,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let subject = signed_in(state, headers).await?;
    apply(state, subject, run, job, control).await
}

/// Apply `control` to run `id` (job `job` for a job's rebuild) for
/// `subject`, once the authz plugin agrees; shared with the web UI's forms.
pub(crate) async fn apply(
    state: &AppState,
    subject: Subject,
    id: i64,
    job: Option<i64>,
    control: Control,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let (action, verb) = match control {
        Control::Rebuild | Control::RebuildJob(_) => (Action::Rebuild, "rebuild"),
        Control::Cancel => (Action::Cancel, "cancel"),
        Control::Approve => (Action::Approve, "approve"),
    };
    let run = runs::by_id(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading run {id}"), e))?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let kind = if job.is_some() {
        ResourceKind::Job
    } else {
        ResourceKind::Run
    };
    let mut resource = run.access().resource(kind, Some(id));
    resource.branch = run.branch.clone();
    resource.pull_request = pull_request(state, &run).await?;
    let decision = decide(state, Some(&subject), action, &resource).await;
    if !decision.allow {
        return Err(ApiError::new(StatusCode::FORBIDDEN, decision.reason));
    }
    let by = format!("{} ({})", subject.name, subject.provider);
    let new_state = state
        .pipeline
        .control(id, control, &by)
        .await
        .map_err(|e| match e {
            ControlError::NotFound(m) => ApiError::not_found(m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ControlError::Database(e) => {
                ApiError::database(&format!("applying {verb} to run {id}"), e)
            }
        })?;
    tracing::info!(
        run = id,
        job,
        by,
        action = verb,
        reason = decision.reason,
        "control action accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            run: id,
            job,
            action: verb,
            state: new_state,
            by: subject.name,
        }),
    ))
}

/// The pull request `run` built and its author, from the event that asked
/// for it, for the authz plugin's author rule.
async fn pull_request(
    state: &AppState,
    run: &Run,
) -> Result<Option<kiln_runtime::bindings::authz_types::PullRequestRef>, ApiError> {
    let row: Option<(Option<i64>, Option<String>)> = with_pool!(&state.db, pool => {
        sqlx::query_as(
            "SELECT t.pull_request, e.payload FROM targets t \
             LEFT JOIN events e ON e.id = t.event_id \
             WHERE t.run_id = $1 AND t.kind = 'pull_request' ORDER BY t.id DESC LIMIT 1",
        )
        .bind(run.id)
        .fetch_optional(pool)
        .await
    })
    .map_err(|e| ApiError::database(&format!("reading the targets of run {}", run.id), e))?;
    let Some((number, payload)) = row else {
        return Ok(run
            .pull_request
            .map(|n| pull_request_ref(n, None, &run.forge)));
    };
    let author = payload
        .and_then(|p: String| serde_json::from_str::<serde_json::Value>(&p).ok())
        .and_then(|p| {
            p.pointer("/pull_request/author")
                .and_then(|a| a.as_str())
                .map(str::to_owned)
        });
    Ok(number
        .or(run.pull_request)
        .map(|n| pull_request_ref(n, author, &run.forge)))
}
