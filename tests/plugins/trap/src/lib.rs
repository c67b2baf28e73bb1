//! Hostile test plugin `kiln-test-trap`: panics in `run`; with
//! `panic = "abort"` the instance traps. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Trap;

impl PostBuild for Trap {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-trap",
            env!("CARGO_PKG_VERSION"),
            "Panics",
        )
    }

    fn run(_build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        panic!("kiln-test-trap: deliberate panic in run");
    }
}

export_post_build!(Trap);
