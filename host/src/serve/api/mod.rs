//! `/api/v1`: one module per resource, holding its wire types and handler
//! (see STYLE.md). Every route is listed once, in [`ROUTES`]: the router is
//! built from it and a test checks it against the OpenAPI document.
//!
//! Reads are open to anonymous callers for public projects; a private
//! project (and its runs and jobs) is visible only to subjects the authz
//! plugin allows `read` on, and is answered 404 otherwise, as if it did not
//! exist. Control actions need `Authorization: Bearer <token>` (see
//! [`auth`]) and the authz plugin's consent.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::{Deserialize, Serialize};

use crate::serve::app::AppState;

pub mod auth;
pub mod control;
pub mod health;
pub mod jobs;
pub mod logs;
pub mod openapi;
pub mod plugins;
pub mod projects;
pub mod runs;
pub mod workers;

/// One route of the API.
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path as axum and OpenAPI both write it (`/api/v1/runs/{id}`).
    pub path: &'static str,
    handler: fn() -> MethodRouter<Arc<AppState>>,
}

/// Every `/api/v1` route.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/v1/health",
        handler: || get(health::get),
    },
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
        handler: || get(openapi::get),
    },
    Route {
        method: "GET",
        path: "/api/v1/projects",
        handler: || get(projects::list),
    },
    Route {
        method: "GET",
        path: "/api/v1/projects/{id}",
        handler: || get(projects::get),
    },
    Route {
        method: "GET",
        path: "/api/v1/runs",
        handler: || get(runs::list),
    },
    Route {
        method: "GET",
        path: "/api/v1/runs/{id}",
        handler: || get(runs::get),
    },
    Route {
        method: "GET",
        path: "/api/v1/runs/{id}/jobs",
        handler: || get(jobs::list),
    },
    Route {
        method: "POST",
        path: "/api/v1/runs/{id}/rebuild",
        handler: || post(control::rebuild_run),
    },
    Route {
        method: "POST",
        path: "/api/v1/runs/{id}/cancel",
        handler: || post(control::cancel_run),
    },
    Route {
        method: "POST",
        path: "/api/v1/runs/{id}/approve",
        handler: || post(control::approve_run),
    },
    Route {
        method: "GET",
        path: "/api/v1/jobs/{id}",
        handler: || get(jobs::get),
    },
    Route {
        method: "POST",
        path: "/api/v1/jobs/{id}/rebuild",
        handler: || post(control::rebuild_job),
    },
    Route {
        method: "GET",
        path: "/api/v1/jobs/{id}/log",
        handler: || get(logs::download),
    },
    Route {
        method: "GET",
        path: "/api/v1/jobs/{id}/log/stream",
        handler: || get(logs::stream),
    },
    Route {
        method: "GET",
        path: "/api/v1/workers",
        handler: || get(workers::get),
    },
    Route {
        method: "GET",
        path: "/api/v1/plugins",
        handler: || get(plugins::list),
    },
];

/// The `/api/v1` routes, to merge into the service's router.
pub fn router() -> Router<Arc<AppState>> {
    ROUTES.iter().fold(Router::new(), |r, route| {
        r.route(route.path, (route.handler)())
    })
}

/// An error answer: a status and `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// The body of an error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500 for a failed query, logged with what was being done; the caller
    /// sees only what failed.
    pub fn database(doing: &str, e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error while {doing}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("database error while {doing}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// `?limit=&before=`: at most `limit` items (default 50, at most 500) with
/// ids below `before`, newest first.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Page {
    /// Page size.
    pub limit: Option<i64>,
    /// Only ids below this (the previous page's `next_before`).
    pub before: Option<i64>,
}

impl Page {
    /// Default page size.
    pub const DEFAULT: i64 = 50;
    /// Largest page size.
    pub const MAX: i64 = 500;

    /// The page size, bounded.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(Self::DEFAULT).clamp(1, Self::MAX)
    }

    /// The id bound (`i64::MAX` when absent).
    pub fn before(&self) -> i64 {
        self.before.unwrap_or(i64::MAX)
    }
}

/// One page of a list: the items and, when there may be more, the
/// `before` that fetches the next page.
#[derive(Debug, Serialize, Deserialize)]
pub struct Paged<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass as `?before=` for the next page; absent on the last one.
    pub next_before: Option<i64>,
}

/// The page's continuation: the last scanned id when the query filled the
/// page (more rows may follow).
pub fn next_before(scanned: usize, page: &Page, last_id: Option<i64>) -> Option<i64> {
    if scanned as i64 >= page.limit() {
        last_id
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router serves exactly the routes the OpenAPI document lists,
    /// with the same methods.
    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let doc: serde_json::Value = serde_json::from_str(openapi::DOCUMENT).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete", "head", "options"]
                    .contains(&method.as_str())
                {
                    documented.insert((method.to_uppercase(), format!("/api/v1{path}")));
                }
            }
        }
        let served: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "a route is listed twice");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "not in openapi.json: {undocumented:?}"
        );
        assert!(missing.is_empty(), "documented but not served: {missing:?}");
        // And the router accepts the list (axum panics on a bad or
        // conflicting path).
        let _ = router();
    }

    /// Every `$ref` in the document points at a schema it defines.
    #[test]
    fn every_schema_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(openapi::DOCUMENT).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        fn walk(v: &serde_json::Value, refs: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, refs));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(schemas.contains_key(name), "{r} is not defined");
        }
    }

    #[test]
    fn pages_are_bounded() {
        let p = Page::default();
        assert_eq!((p.limit(), p.before()), (50, i64::MAX));
        let p = Page {
            limit: Some(100_000),
            before: Some(7),
        };
        assert_eq!((p.limit(), p.before()), (500, 7));
        assert_eq!(
            Page {
                limit: Some(0),
                before: None
            }
            .limit(),
            1
        );
        assert_eq!(next_before(500, &p, Some(3)), Some(3));
        assert_eq!(next_before(499, &p, Some(3)), None);
    }
}
