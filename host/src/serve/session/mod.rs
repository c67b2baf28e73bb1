//! Sign-in for the web UI: OAuth with GitHub and Gitea, generic OIDC
//! (`[auth.providers.<name>]`), session cookies, CSRF tokens and the page
//! where a signed-in user makes and revokes API tokens.
//!
//! A browser's `kiln_session` cookie holds a random token; the database
//! keeps only its SHA-256 with the subject, the session's CSRF token and
//! its expiry ([`store`]). The UI relies on [`current`] and [`check_csrf`];
//! every form that changes something posts `csrf` and is refused (403)
//! without the session's. This module does not decide what a subject may
//! do: that is the authz plugin's (`api/auth.rs`).
//!
//! Routes: `GET /login`, `GET /login/{provider}`,
//! `GET /auth/{provider}/callback`, `POST /logout` ([`signin`]);
//! `GET|POST /settings/tokens`, `POST /settings/tokens/{id}/revoke`
//! ([`tokens`]).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::routing::{get, post};
use kiln_runtime::bindings::authz_types::Subject;

use crate::serve::app::AppState;

mod provider;
mod signin;
pub(crate) mod store;
mod tokens;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kiln_session";
/// The cookie tying a sign-in in progress to the browser that started it.
const LOGIN_COOKIE: &str = "kiln_login";
/// How long a session lasts.
const SESSION_SECS: i64 = 14 * 24 * 3600;
/// How long a sign-in may take at the provider.
const LOGIN_SECS: i64 = 600;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, as the authz plugin sees them.
    pub subject: Subject,
    /// The token every control form of this session must carry (`csrf`).
    pub csrf: String,
}

/// The session the request's cookie names, if it is valid.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = cookie(headers, SESSION_COOKIE)?;
    match store::find(&state.db, &token, &state.plugins.config.serve.admins).await {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the session");
            None
        }
    }
}

/// Whether `submitted` is the session's CSRF token (constant time). No
/// session means no form is accepted.
pub fn check_csrf(session: Option<&Session>, submitted: &str) -> bool {
    session.is_some_and(|s| same(&s.csrf, submitted))
}

/// Constant-time equality of two secrets.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Sign-in routes (`/login`, `/auth/{provider}/callback`, `/logout`, …).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/login", get(signin::login_page))
        .route("/login/{provider}", get(signin::start))
        .route("/auth/{provider}/callback", get(signin::callback))
        .route("/logout", post(signin::logout))
        .route("/settings/tokens", get(tokens::list).post(tokens::create))
        .route("/settings/tokens/{id}/revoke", post(tokens::revoke))
}

/// The value of cookie `name` in the request, if it is there and not empty.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, `Secure` when the service's
/// public URL is https. `max_age` 0 clears the cookie.
fn set_cookie(state: &AppState, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
    let secure = if state.pipeline.settings().public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path={path}; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are hex or empty")
}

/// `bytes` random bytes from the OS, hex.
fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Field `name` of a form body (`application/x-www-form-urlencoded`); empty
/// when it is missing or the body is not a form.
fn form_field(body: &[u8], name: &str) -> String {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; kiln_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&headers, "kiln"), None);
    }

    #[test]
    fn csrf_needs_a_session_and_the_same_token() {
        let session = Session {
            subject: Subject {
                id: "1".into(),
                name: "alice".into(),
                provider: "github".into(),
                admin: false,
                organisations: Vec::new(),
                teams: Vec::new(),
            },
            csrf: "abc".into(),
        };
        assert!(check_csrf(Some(&session), "abc"));
        assert!(!check_csrf(Some(&session), "abd"));
        assert!(!check_csrf(Some(&session), ""));
        assert!(!check_csrf(None, "abc"));
    }
}
