//! Integration tests of the `kiln` crate, one binary (see STYLE.md).

mod bench_serve;
mod common;
mod plugin_attic;
mod plugin_binary_cache;
mod plugin_cache;
mod plugin_cachix;
mod plugin_check;
mod plugin_errors;
mod plugin_forge_authz;
mod plugin_gcroot_outputs;
mod plugin_gerrit;
mod plugin_gitea;
mod plugin_github;
mod plugin_hostile;
mod plugin_nar;
mod plugin_sandbox;
mod plugin_sign;
mod post_build_policy;
mod run_cli;
mod run_post_build;
mod serve;
mod serve_ingest;
mod serve_pipeline;
mod service;
mod ui_browser;
