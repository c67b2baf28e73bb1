//! The pipeline behind `kiln run` (and later `kiln serve`): evaluate a flake,
//! turn the jobs into a dependency graph, schedule ready jobs and build them
//! with Nix in batches, and report every job.
//!
//! Every Nix invocation goes through `kiln-nix`; this crate owns policy, not
//! process plumbing.

pub mod graph;
pub mod job;
pub mod scheduler;
pub mod eval;
pub mod repo_config;
pub mod source;
