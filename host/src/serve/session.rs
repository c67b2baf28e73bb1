//! Sign-in for the web UI: OAuth with GitHub and Gitea, generic OIDC,
//! session cookies and CSRF tokens.
//!
//! Being built (issue 6). The UI relies on [`current`] and [`check_csrf`].

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use kiln_runtime::bindings::authz_types::Subject;

use crate::serve::app::AppState;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, as the authz plugin sees them.
    pub subject: Subject,
    /// The token every control form of this session must carry (`csrf`).
    pub csrf: String,
}

/// The session the request's cookie names, if it is valid.
pub async fn current(_state: &AppState, _headers: &HeaderMap) -> Option<Session> {
    None
}

/// Whether `submitted` is the session's CSRF token (constant time). No
/// session means no form is accepted.
pub fn check_csrf(session: Option<&Session>, submitted: &str) -> bool {
    session.is_some_and(|s| {
        s.csrf.len() == submitted.len()
            && s.csrf
                .bytes()
                .zip(submitted.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Sign-in routes (`/login`, `/auth/{provider}/callback`, `/logout`, …).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
}
