//! Test plugin `kiln-test-mismatch`: exports the post-build world but its
//! `describe` says `forge`, so `kiln plugin check` must refuse it rather
//! than trust either. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Mismatch;

impl PostBuild for Mismatch {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Forge,
            "kiln-test-mismatch",
            env!("CARGO_PKG_VERSION"),
            "A post-build plugin that says it is a forge plugin",
        )
    }

    fn run(_build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        Ok(StepOutcome::message("ran"))
    }
}

export_post_build!(Mismatch);
