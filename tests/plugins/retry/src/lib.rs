//! Test plugin `kiln-test-retry`: always answers `retry-after(5, …)`, so the
//! host's requeue path can be tested. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Retry;

impl PostBuild for Retry {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-retry",
            env!("CARGO_PKG_VERSION"),
            "Asks to be retried",
        )
    }

    fn run(_build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        Err(PluginError::retry_after(
            5,
            "kiln-test-retry: the service is busy",
        ))
    }
}

export_post_build!(Retry);
