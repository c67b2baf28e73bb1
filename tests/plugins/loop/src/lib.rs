//! Hostile test plugin `kiln-test-loop`: `run` never returns, so only the
//! host's CPU budget (fuel or epoch deadline) can stop it. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Loop;

impl PostBuild for Loop {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-loop",
            env!("CARGO_PKG_VERSION"),
            "Loops forever",
        )
    }

    fn run(_build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_post_build!(Loop);
