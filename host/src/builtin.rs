//! The first-party plugins, compiled for `wasm32-wasip2` by `build.rs` and
//! embedded in the binary so that Kiln works with no plugin directory.

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// Where the build put every plugin, test plugins included (for tests).
pub const WASM_DIR: &str = env!("KILN_WASM_DIR");
