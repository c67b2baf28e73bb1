//! Compatibility test plugin `kiln-test-v020`: built against a copy of the
//! WIT package renamed `kiln:plugin@0.2.0` (in `wit/`). A 0.1 host must
//! refuse it. It calls `log` so that it imports `kiln:plugin/log@0.2.0`, a
//! function interface no 0.1 host can satisfy. Not shipped; it uses
//! wit-bindgen directly because the SDK is 0.1.0.

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
            name: "kiln-test-v020".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            world: WorldKind::PostBuild,
            summary: "Built against kiln:plugin@0.2.0".into(),
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
        log(Level::Info, "kiln-test-v020 ran");
        Ok(StepOutcome {
            message: "built against kiln:plugin@0.2.0".into(),
            signatures: vec![],
        })
    }
}

bindings::export!(Compat with_types_in bindings);
