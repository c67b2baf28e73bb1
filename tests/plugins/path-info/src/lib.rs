//! Test plugin `kiln-test-path-info`: asks the store for the path info of
//! each output and reports the NAR sizes, or fails with the host's error, so
//! the store grant can be tested. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, StoreOperation, WorldKind,
    export_post_build, store,
};

struct PathInfo;

impl PostBuild for PathInfo {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-path-info",
            env!("CARGO_PKG_VERSION"),
            "Reports each output's NAR size",
        )
        .store(StoreOperation::PathInfo)
    }

    fn run(build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        let mut sizes = Vec::new();
        for output in &build.outputs {
            let info = store::path_info(&output.path).map_err(|e| {
                PluginError::failed(format!("path info of {}: {}", output.path, e.describe()))
            })?;
            sizes.push(info.nar_size.to_string());
        }
        Ok(StepOutcome::message(sizes.join(" ")))
    }
}

export_post_build!(PathInfo);
