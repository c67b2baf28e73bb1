//! `/settings/tokens`: a signed-in user's API tokens. The list shows when
//! each was made and last used; a new token is shown once, on the answer to
//! the form that made it, and only its hash is kept (`api/auth.rs`). A token
//! speaks for the session's login with its organisations; `[serve] admins`
//! decides whether it is an administrator's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::{Session, check_csrf, current, form_field};
use crate::cli::token::utc;
use crate::serve::api::auth::{Revoke, TokenRow, create_token, list_tokens, revoke_tokens};
use crate::serve::app::AppState;
use crate::serve::ui::layout::{error, page};

fn internal(session: Option<&Session>, detail: impl std::fmt::Display) -> Response {
    tracing::warn!(%detail, "API tokens page");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        session,
        "The tokens could not be read or changed; the service's log says why.",
    )
}

/// The session's own tokens, oldest first.
async fn own_tokens(state: &AppState, session: &Session) -> Result<Vec<TokenRow>, sqlx::Error> {
    let mut rows = list_tokens(&state.db).await?;
    rows.retain(|t| t.subject == session.subject.name);
    Ok(rows)
}

/// The session, or the answer for a request without one: `GET` goes to
/// `/login`, a form is refused.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    form: Option<&[u8]>,
) -> Result<Session, Response> {
    let session = current(state, headers).await;
    match form {
        None => session.ok_or_else(|| Redirect::to("/login").into_response()),
        Some(body) if check_csrf(session.as_ref(), &form_field(body, "csrf")) => {
            Ok(session.expect("a valid CSRF token means a session"))
        }
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            session.as_ref(),
            "This form needs a valid CSRF token: sign in and use the form on the tokens page.",
        )),
    }
}

/// `GET /settings/tokens`.
pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = match signed_in(&state, &headers, None).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match own_tokens(&state, &session).await {
        Ok(rows) => tokens_page(&session, &rows, None).into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

/// `POST /settings/tokens` (`csrf`): make a token and show it once.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = match signed_in(&state, &headers, Some(&body)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let subject = &session.subject;
    let (id, token) =
        match create_token(&state.db, &subject.name, false, &subject.organisations).await {
            Ok(made) => made,
            Err(e) => return internal(Some(&session), e),
        };
    tracing::info!(user = %subject.name, token = id, "API token created in the web UI");
    match own_tokens(&state, &session).await {
        Ok(rows) => (
            [(header::CACHE_CONTROL, "no-store")],
            tokens_page(&session, &rows, Some((id, &token))),
        )
            .into_response(),
        Err(e) => internal(Some(&session), e),
    }
}

/// `POST /settings/tokens/{id}/revoke` (`csrf`): revoke one of the
/// session's own tokens.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let session = match signed_in(&state, &headers, Some(&body)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match own_tokens(&state, &session).await {
        Ok(rows) if rows.iter().any(|t| t.id == id) => {}
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                Some(&session),
                &format!("You have no API token {id}."),
            );
        }
        Err(e) => return internal(Some(&session), e),
    }
    if let Err(e) = revoke_tokens(&state.db, Revoke::Id(id)).await {
        return internal(Some(&session), e);
    }
    tracing::info!(user = %session.subject.name, token = id, "API token revoked in the web UI");
    Redirect::to("/settings/tokens").into_response()
}

/// The page: the new token (once), the list with revoke buttons, the form.
fn tokens_page(session: &Session, rows: &[TokenRow], new: Option<(i64, &str)>) -> Markup {
    let body = html! {
        h1 { "API tokens" }
        p {
            "A token lets a script act as " strong { (session.subject.name) }
            " on the API: send " code { "Authorization: Bearer <token>" } "."
        }
        @if let Some((id, token)) = new {
            section.new-token {
                h2 { "Token " (id) " created" }
                p { "Copy it now: it is not shown again." }
                pre { code #new-token { (token) } }
            }
        }
        @if rows.is_empty() {
            p { "You have no API tokens." }
        } @else {
            table.tokens {
                thead { tr { th { "Token" } th { "Created" } th { "Last used" } th { "State" } } }
                tbody {
                    @for t in rows {
                        tr #{ "token-" (t.id) } {
                            td { (t.id) }
                            td { (utc(t.created_at)) }
                            td { (t.last_used_at.map_or_else(|| "never".to_owned(), utc)) }
                            td {
                                @if let Some(at) = t.revoked_at {
                                    "revoked " (utc(at))
                                } @else {
                                    form method="post" action={ "/settings/tokens/" (t.id) "/revoke" } {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        button type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action="/settings/tokens" {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Create a token" }
        }
    };
    page("API tokens", Some(session), body)
}
