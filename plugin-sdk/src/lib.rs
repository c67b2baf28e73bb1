//! The Kiln plugin SDK: the only crate a plugin author depends on.
//!
//! A Kiln plugin is a WebAssembly component built for `wasm32-wasip2`. Pick a
//! world, implement its trait ([`PostBuild`], [`Forge`] or [`Authz`]) for a
//! unit struct, and name that struct in the world's export macro. Host
//! capabilities are plain functions: [`log`], [`secrets`], [`store`],
//! [`files`], [`kv`] and [`http`]; forge plugins check signatures with
//! [`webhook`]. A plugin imports only what it calls, and
//! the operator's grant decides which calls succeed, so ask for every
//! capability you use in `describe`.
//!
//! ```no_run
//! use kiln_plugin_sdk::{
//!     BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, StoreOperation,
//!     WorldKind, export_post_build, log, store,
//! };
//!
//! struct NarSizes;
//!
//! impl PostBuild for NarSizes {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new(WorldKind::PostBuild, "nar-sizes", "0.1.0", "Logs each output's NAR size")
//!             .store(StoreOperation::PathInfo)
//!             .optional_config("verbose", "Also log the NAR hash", Some("false"))
//!     }
//!
//!     fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
//!         let verbose = config.get_bool("verbose", false)?;
//!         let mut total = 0;
//!         for output in &build.outputs {
//!             let info = store::path_info(&output.path)?;
//!             if verbose {
//!                 log::info!("{} {}", output.path, info.nar_hash);
//!             }
//!             total += info.nar_size;
//!         }
//!         Ok(StepOutcome::message(format!("{total} bytes in {} outputs", build.outputs.len())))
//!     }
//! }
//!
//! export_post_build!(NarSizes);
//! ```
//!
//! The generated bindings live in the hidden `wit` module; this crate must not
//! expose them by name, and must keep compiling for the host target too
//! (host calls panic there: plugins run only inside Kiln).

#![deny(missing_docs)]

extern crate self as kiln_plugin_sdk;

pub mod branches;
mod config;
pub mod files;
pub mod http;
pub mod kv;
pub mod log;
pub mod secrets;
pub mod status;
pub mod store;
mod types;
pub mod webhook;
#[doc(hidden)]
pub mod wit;
mod worlds;

pub use config::{Config, ConfigError};
pub use types::*;
pub use worlds::{Authz, Forge, PostBuild};
