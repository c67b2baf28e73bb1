//! The control forms' targets: `POST /runs/{id}/rebuild|cancel|approve`
//! and `POST /jobs/{id}/rebuild`. Signed out, or without the session's
//! CSRF token, a form is refused (403, saying why); otherwise the action
//! goes through the same authz decision and pipeline call as the REST API's,
//! and the browser is sent back to the run.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::Viewer;
use super::layout::error;
use crate::serve::api::control::apply;
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};
use crate::serve::pipeline::Control;
use crate::serve::session::{Session, check_csrf};

/// A control form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct ControlForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// The session allowed to submit this form (signed in, with the session's
/// CSRF token), else the refusal.
fn gate<'a>(
    viewer: &'a Viewer,
    form: &ControlForm,
    what: &str,
) -> Result<&'a Session, Box<Response>> {
    let Some(session) = &viewer.session else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            None,
            &format!("Sign in to {what}: control actions need a signed-in user."),
        )));
    };
    if !check_csrf(Some(session), &form.csrf) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            Some(session),
            "This form is stale or did not come from Kiln (its CSRF token does not match your session): reload the page and try again.",
        )));
    }
    Ok(session)
}

/// `POST /runs/{id}/{action}`.
pub async fn run_action(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<ControlForm>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let control = match action.as_str() {
        "rebuild" => Control::Rebuild,
        "cancel" => Control::Cancel,
        "approve" => Control::Approve,
        _ => return viewer.not_found(&format!("no action {action}")),
    };
    match gate(&viewer, &form, &format!("{action} this run")) {
        Ok(session) => act(&state, &viewer, session, id, None, control).await,
        Err(refused) => *refused,
    }
}

/// `POST /jobs/{id}/rebuild`.
pub async fn rebuild_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<i64>,
    Form(form): Form<ControlForm>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let session = match gate(&viewer, &form, "rebuild this job") {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let run: Result<Option<i64>, sqlx::Error> = with_pool!(&state.db, pool => {
        sqlx::query_scalar("SELECT run_id FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(pool)
            .await
    });
    match run {
        Ok(Some(run)) => {
            act(
                &state,
                &viewer,
                session,
                run,
                Some(job),
                Control::RebuildJob(job),
            )
            .await
        }
        Ok(None) => viewer.not_found(&format!("no job {job}")),
        Err(e) => viewer.error(crate::serve::api::ApiError::database("reading a job", e)),
    }
}

async fn act(
    state: &AppState,
    viewer: &Viewer,
    session: &Session,
    run: i64,
    job: Option<i64>,
    control: Control,
) -> Response {
    match apply(state, session.subject.clone(), run, job, control).await {
        Ok(_) => Redirect::to(&format!("/runs/{run}")).into_response(),
        Err(e) => viewer.error(e),
    }
}
