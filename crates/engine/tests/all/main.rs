//! Integration tests of kiln-engine, one binary (see STYLE.md).

mod change;
mod eval;
mod eval_replay;
mod repo_config;
mod run;
mod source;
