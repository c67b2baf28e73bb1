//! Work in progress: see the module list in `pipeline/mod.rs`.

use std::sync::Arc;

use super::Pipeline;

/// The loop.
pub async fn run(_pipeline: Arc<Pipeline>) {}
