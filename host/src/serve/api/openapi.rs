//! `GET /api/v1/openapi.json`: the API described as OpenAPI 3.1, written by
//! hand in `openapi.json` next to this file (a derive macro would cost
//! compile time on every build). A test in `api/mod.rs` checks that the
//! document and [`super::ROUTES`] list the same routes.

use axum::http::header;
use axum::response::IntoResponse;

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The handler.
pub async fn get() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
