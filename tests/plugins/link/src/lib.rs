//! Test plugin `kiln-test-link`: a post-build plugin built against a copy of
//! the WIT package (in `wit/`) whose world also imports
//! `kiln:plugin/nonexistent@0.1.0`, and which calls it, so the component has
//! an import no Kiln host can satisfy and `kiln plugin check` must refuse to
//! link it. Not shipped; it uses wit-bindgen directly because the SDK has no
//! such interface.

mod bindings {
    wit_bindgen::generate!({
        world: "post-build",
        path: "wit",
        generate_all,
    });
}

use bindings::kiln::plugin::nonexistent::poke;
use bindings::kiln::plugin::post_build_types::{BuildInfo, StepOutcome};
use bindings::kiln::plugin::types::{Capabilities, PluginError, PluginInfo, WorldKind};

struct Unlinkable;

impl bindings::Guest for Unlinkable {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "kiln-test-link".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            world: WorldKind::PostBuild,
            summary: "Imports an interface Kiln does not provide".into(),
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
        Ok(StepOutcome {
            message: format!("poked {}", poke()),
            signatures: vec![],
        })
    }
}

bindings::export!(Unlinkable with_types_in bindings);
