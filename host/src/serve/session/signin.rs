//! Signing in and out: `GET /login` lists the providers, `GET
//! /login/{provider}` sends the browser to the provider with a fresh
//! `state` and PKCE challenge (the `state` also goes into a short-lived
//! `kiln_login` cookie, so that a callback is accepted only in the browser
//! that started the sign-in), `GET /auth/{provider}/callback` checks the
//! `state`, exchanges the code and starts a session, `POST /logout` ends it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use maud::html;

use super::provider::{self, Exchange};
use super::{
    LOGIN_COOKIE, LOGIN_SECS, SESSION_COOKIE, SESSION_SECS, check_csrf, cookie, current,
    form_field, random_hex, same, set_cookie, store,
};
use crate::serve::app::AppState;
use crate::serve::ui::layout::{error, page};

/// Where the `kiln_login` cookie is sent.
const CALLBACK_PATH: &str = "/auth";

/// `GET /login`: a link per configured provider.
pub async fn login_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = current(&state, &headers).await;
    let providers = &state.plugins.config.auth.providers;
    let body = html! {
        h1 { "Sign in" }
        @if providers.is_empty() {
            p.problem {
                "No sign-in provider is configured. An operator adds one as "
                code { "[auth.providers.<name>]" } " in kiln.toml."
            }
        } @else {
            ul.providers {
                @for (name, p) in providers {
                    li { a href={ "/login/" (name) } { "Sign in with " (name) } " (" (p.kind.as_str()) ")" }
                }
            }
        }
    };
    page("Sign in", session.as_ref(), body).into_response()
}

/// Log `detail` and answer an error page that says `message`.
fn fail(status: StatusCode, message: &str, detail: impl std::fmt::Display) -> Response {
    tracing::warn!(%detail, "sign-in: {message}");
    error(status, None, message)
}

fn internal(detail: impl std::fmt::Display) -> Response {
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Signing in failed inside Kiln; the service's log says why.",
        detail,
    )
}

/// Run blocking provider calls off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, provider::ProviderError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fail(
            StatusCode::BAD_GATEWAY,
            "The sign-in provider did not complete the sign-in; the service's log says why. Try again.",
            e,
        )),
        Err(e) => Err(internal(e)),
    }
}

fn callback_url(state: &AppState, provider: &str) -> String {
    format!(
        "{}/auth/{provider}/callback",
        state.pipeline.settings().public_url
    )
}

/// `GET /login/{provider}`: off to the provider.
pub async fn start(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let Some(config) = state.plugins.config.auth.providers.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            None,
            &format!("There is no sign-in provider `{name}`."),
        );
    };
    let for_endpoints = config.clone();
    let endpoints = match blocking(move || provider::endpoints(&for_endpoints)).await {
        Ok(e) => e,
        Err(answer) => return answer,
    };
    let (login_state, (verifier, challenge)) = match (random_hex(32), provider::pkce()) {
        (Ok(s), Ok(p)) => (s, p),
        (Err(e), _) | (_, Err(e)) => return internal(format!("OS random source: {e}")),
    };
    if let Err(e) = store::save_attempt(&state.db, &login_state, &name, &verifier).await {
        return internal(e);
    }
    let redirect_uri = callback_url(&state, &name);
    match provider::authorize_url(&config, &endpoints, &redirect_uri, &login_state, &challenge) {
        Ok(url) => (
            AppendHeaders([(
                header::SET_COOKIE,
                set_cookie(
                    &state,
                    LOGIN_COOKIE,
                    &login_state,
                    CALLBACK_PATH,
                    LOGIN_SECS,
                ),
            )]),
            Redirect::to(&url),
        )
            .into_response(),
        Err(e) => internal(format!("authorize URL {}: {e}", endpoints.authorize)),
    }
}

/// `GET /auth/{provider}/callback?code&state`: check, exchange, sign in.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, None, message);
    if let Some(e) = query.get("error") {
        let description = query.get("error_description").map_or("", String::as_str);
        return bad(&format!(
            "The sign-in provider did not sign you in ({e}{}{description}).",
            if description.is_empty() { "" } else { ": " }
        ));
    }
    let (Some(code), Some(login_state)) = (query.get("code"), query.get("state")) else {
        return bad("The sign-in callback needs `code` and `state`; start again from /login.");
    };
    let restart = "This sign-in was not started in this browser, was already used or has expired; start again from /login.";
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same(&c, login_state)) {
        return bad(restart);
    }
    let verifier = match store::take_attempt(&state.db, login_state).await {
        Ok(Some((provider, verifier))) if provider == name => verifier,
        Ok(_) => return bad(restart),
        Err(e) => return internal(e),
    };
    let Some(config) = state.plugins.config.auth.providers.get(&name).cloned() else {
        return bad(restart);
    };
    let client_secret = match state.plugins.secrets.get(&config.client_secret) {
        Some(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Some(Err(e)) => return internal(format!("client secret `{}`: {e}", config.client_secret)),
        None => {
            return internal(format!(
                "client secret `{}` is not defined",
                config.client_secret
            ));
        }
    };
    let redirect_uri = callback_url(&state, &name);
    let code = code.clone();
    let provider_name = name.clone();
    let subject = blocking(move || {
        let endpoints = provider::endpoints(&config)?;
        let access_token = provider::exchange(
            &endpoints,
            &Exchange {
                config: &config,
                client_secret: &client_secret,
                code: &code,
                verifier: &verifier,
                redirect_uri: &redirect_uri,
            },
        )?;
        provider::subject(&provider_name, &config, &endpoints, &access_token)
    })
    .await;
    let mut subject = match subject {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    subject.admin = state.plugins.config.serve.admins.contains(&subject.name);
    let token = match store::create(&state.db, &subject).await {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    tracing::info!(provider = %name, user = %subject.name, "signed in");
    (
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(&state, SESSION_COOKIE, &token, "/", SESSION_SECS),
            ),
            (
                header::SET_COOKIE,
                set_cookie(&state, LOGIN_COOKIE, "", CALLBACK_PATH, 0),
            ),
        ]),
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /logout` (`csrf`): end the session here and in the database.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = current(&state, &headers).await;
    if !check_csrf(session.as_ref(), &form_field(&body, "csrf")) {
        return error(
            StatusCode::FORBIDDEN,
            session.as_ref(),
            "Signing out needs the form's CSRF token; sign out with the button on a page of this site.",
        );
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = store::delete(&state.db, &token).await
    {
        return internal(e);
    }
    (
        AppendHeaders([(
            header::SET_COOKIE,
            set_cookie(&state, SESSION_COOKIE, "", "/", 0),
        )]),
        Redirect::to("/"),
    )
        .into_response()
}
