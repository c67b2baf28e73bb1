//! Compatibility test plugin `kiln-test-v011`: built against a copy of the
//! WIT package renamed `kiln:plugin@0.1.1` (in `wit/`) whose post-build
//! world has one extra export, `version-note`. A 0.1.0 host must still load
//! it: imports are semver-compatible and the extra export is never called.
//! It calls `log` so that it imports a versioned function interface.
//! Not shipped; it uses wit-bindgen directly because the SDK is 0.1.0.

mod bindings {
    wit_bindgen::generate!({
        world: "post-build",
        path: "wit",
        generate_all,
    });
}

use bindings::kiln::plugin::log::{Level, log};
use bindings::kiln::plugin::post_build_types::{BuildInfo, StepOutcome};
use bindings::kiln::plugin::types::{Capabilities, PluginError, PluginInfo, WorldKind};

struct Compat;

impl bindings::Guest for Compat {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "kiln-test-v011".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            world: WorldKind::PostBuild,
            summary: "Built against kiln:plugin@0.1.1".into(),
            capabilities: Capabilities {
                hosts: vec![],
                secrets: vec![],
                store: vec![],
                directories: vec![],
                kv: false,
            },
            config: vec![],
        }
    }

    fn run(_build: BuildInfo, _config: Vec<(String, String)>) -> Result<StepOutcome, PluginError> {
        log(Level::Info, "kiln-test-v011 ran");
        Ok(StepOutcome {
            message: "built against kiln:plugin@0.1.1".into(),
            signatures: vec![],
        })
    }

    fn version_note() -> String {
        "built against kiln:plugin@0.1.1".into()
    }
}

bindings::export!(Compat with_types_in bindings);
