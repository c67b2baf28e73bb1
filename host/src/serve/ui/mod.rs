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

use crate::serve::app::AppState;

pub mod assets;
pub mod layout;

/// The UI's routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().merge(assets::router())
}
