//! The stylesheet and script, compiled into the binary and served with a
//! path that names their content, so browsers may cache them for good.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::serve::app::AppState;

/// The stylesheet.
pub const STYLE: &str = include_str!("assets/kiln.css");
/// The script.
pub const SCRIPT: &str = include_str!("assets/kiln.js");
/// Where the stylesheet is served; bump the version when it changes.
pub const STYLE_PATH: &str = "/ui/kiln-2.css";
/// Where the script is served.
pub const SCRIPT_PATH: &str = "/ui/kiln-1.js";

const CACHE: &str = "public, max-age=86400";

/// `GET` routes of the assets.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            STYLE_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    STYLE,
                )
                    .into_response()
            }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    SCRIPT,
                )
                    .into_response()
            }),
        )
}
