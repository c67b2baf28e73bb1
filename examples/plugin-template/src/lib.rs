//! `plugin-template`: a Kiln post-build plugin. It runs once per built job
//! and reports what it saw; replace `run` with your step.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, StoreOperation,
    WorldKind, export_post_build, log, store,
};

struct Plugin;

impl PostBuild for Plugin {
    /// What the plugin is and what it asks the operator for. Ask for every
    /// capability you use: the host allows only what the operator grants.
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "plugin-template",
            env!("CARGO_PKG_VERSION"),
            "Logs each output's NAR size",
        )
        .store(StoreOperation::PathInfo)
        .optional_config("quiet", "Do not log each output", Some("false"))
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let quiet = config.get_bool("quiet", false)?;
        let mut total = 0;
        for output in &build.outputs {
            let info = store::path_info(&output.path)?;
            if !quiet {
                log::info!("{} ({}): {} bytes", output.path, output.name, info.nar_size);
            }
            total += info.nar_size;
        }
        Ok(StepOutcome::message(format!(
            "{}: {} outputs, {total} NAR bytes",
            build.attr,
            build.outputs.len()
        )))
    }
}

export_post_build!(Plugin);
