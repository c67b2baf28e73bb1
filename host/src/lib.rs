//! Kiln: a CI coordinator for Nix flakes whose extension points are
//! WebAssembly components.
//!
//! This crate is the command line and the glue between the pipeline
//! (`kiln-engine`), the Nix adapter (`kiln-nix`) and the plugin runtime
//! (`kiln-runtime`): the operator's `kiln.toml` ([`config`]), the plugin host
//! ([`plugins`]) and the store backend plugins see ([`store`]). It holds no
//! pipeline logic of its own.

pub mod builtin;
pub mod cli;
pub mod config;
pub mod plugins;
pub mod post_build;
pub mod seaweed;
pub mod serve;
pub mod store;
