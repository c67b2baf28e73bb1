//! The web UI: server-rendered pages (maud) at `/`, readable without
//! JavaScript; one small script (`assets/kiln.js`) adds the live log, log
//! search and nothing else. Every page reads through the same access rules
//! as the REST API (a private project's pages answer 404 to those the authz
//! plugin does not let read it), and every control form posts to a route
//! here that checks the session's CSRF token, then asks the authz plugin.
//!
//! Pages: `/` (projects and their latest run per branch), `/projects/{id}`
//! (its runs), `/runs/{id}` (summary, job graph, jobs filterable by
//! status, control forms), `/jobs/{id}` (status, log live over SSE),
//! `/workers`, `/plugins`, and `/badge/{project}.svg`.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use kiln_runtime::bindings::authz_types::Subject;

use crate::serve::api::ApiError;
use crate::serve::app::AppState;
use crate::serve::session::{self, Session};

pub mod assets;
pub mod control;
pub mod graph;
pub mod job;
pub mod layout;
pub mod pages;
pub mod run;

/// The UI's routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(pages::index))
        .route("/projects/{id}", get(pages::project))
        .route("/runs/{id}", get(run::get))
        .route("/jobs/{id}", get(job::get))
        .route("/workers", get(pages::workers))
        .route("/plugins", get(pages::plugins))
        .route("/badge/{*project}", get(pages::badge))
        .route("/runs/{id}/{action}", post(control::run_action))
        .route("/jobs/{id}/rebuild", post(control::rebuild_job))
        .route("/jobs/{id}/log/stream", get(job::stream))
        .merge(assets::router())
}

/// Who is looking at a page: their session, if signed in.
pub struct Viewer {
    /// The session.
    pub session: Option<Session>,
}

impl Viewer {
    /// The viewer of a request.
    pub async fn of(state: &AppState, headers: &HeaderMap) -> Self {
        Viewer {
            session: session::current(state, headers).await,
        }
    }

    /// The subject the authz plugin sees (`None`: anonymous).
    pub fn subject(&self) -> Option<&Subject> {
        self.session.as_ref().map(|s| &s.subject)
    }

    /// An API error as an error page for this viewer.
    pub fn error(&self, e: ApiError) -> Response {
        layout::error(e.status, self.session.as_ref(), &e.message)
    }

    /// A 404 page.
    pub fn not_found(&self, what: &str) -> Response {
        layout::error(StatusCode::NOT_FOUND, self.session.as_ref(), what)
    }
}

/// A status as words: `dependency_failed` → `dependency failed`.
pub fn words(status: &str) -> String {
    status.replace('_', " ")
}

/// A duration in milliseconds as `1.2 s`, `3 min 4 s`, `2 h 5 min`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Unix milliseconds as `2026-12-03 10:41:07 UTC`.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// The first 12 characters of a commit id.
pub fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(-5), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(1_250), "1.2 s");
        assert_eq!(duration(184_000), "3 min 4 s");
        assert_eq!(duration(7_500_000), "2 h 5 min");
        assert_eq!(words("dependency_failed"), "dependency failed");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
