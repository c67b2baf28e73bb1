//! The pipeline behind `kiln run` (and later `kiln serve`): evaluate a flake,
//! turn the jobs into a dependency graph, schedule ready jobs and build them
//! with Nix in batches, and report every job.
//!
//! Every Nix invocation goes through `kiln-nix`; this crate owns policy, not
//! process plumbing.

pub mod bench;
pub mod cli;
pub mod driver;
pub mod eval;
pub mod executor;
pub mod failed_cache;
pub mod graph;
pub mod job;
pub mod junit;
pub mod logfile;
pub mod progress;
pub mod repo_config;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod slots;
pub mod source;
