//! The web UI: server-rendered pages (maud) at `/`, readable without
//! JavaScript; a few lines of script add live logs and filtering.
//!
//! Being built (issue 6); see docs/ARCHITECTURE.md once it lands.

use std::sync::Arc;

use axum::Router;

use crate::serve::app::AppState;

/// The UI's routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
}
