//! The frame every page shares: the header with the sign-in link or the
//! signed-in user, the stylesheet and script, and the error pages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::serve::session::Session;

/// A whole page: `title`, the header for `session`, then `body`.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kiln" }
                link rel="stylesheet" href=(super::assets::STYLE_PATH);
                script src=(super::assets::SCRIPT_PATH) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Kiln" }
                    nav {
                        a href="/" { "Projects" }
                        a href="/workers" { "Workers" }
                        a href="/plugins" { "Plugins" }
                    }
                    span.who {
                        @if let Some(s) = session {
                            span #user { (s.subject.name) }
                            a href="/settings/tokens" { "Tokens" }
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        } @else {
                            a #sign-in href="/login" { "Sign in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page with `status`: a heading and, in `p.denied` for a 403,
/// the reason.
pub fn error(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        @if status == StatusCode::FORBIDDEN {
            p.denied { (message) }
        } @else {
            p.problem { (message) }
        }
    };
    (status, page(title, session, body)).into_response()
}
