//! Test plugin `kiln-test-noop`: a post-build step that returns an empty
//! outcome at once, for the per-call overhead benchmark. It must call no
//! host interface, so the component imports nothing of Kiln's.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Noop;

impl PostBuild for Noop {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-noop",
            env!("CARGO_PKG_VERSION"),
            "Does nothing (benchmark)",
        )
    }

    fn run(_build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        Ok(StepOutcome::message(""))
    }
}

export_post_build!(Noop);
