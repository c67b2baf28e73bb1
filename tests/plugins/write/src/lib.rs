//! Test plugin `kiln-test-write`: writes config `contents` to config `path`
//! inside the granted directory named by config `directory`, or fails with
//! the host's error, so directory grants and path checks can be tested.
//! Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build, files,
};

struct Write;

impl PostBuild for Write {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-write",
            env!("CARGO_PKG_VERSION"),
            "Writes one file into a granted directory",
        )
        .directory("out")
        .required_config("directory", "Logical name of the granted directory")
        .required_config("path", "File path relative to that directory")
        .optional_config("contents", "What to write", Some(""))
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let directory = config.require("directory")?;
        let path = config.require("path")?;
        let contents = config.get("contents").unwrap_or("");
        files::write_file(directory, path, contents.as_bytes()).map_err(|e| {
            PluginError::failed(format!(
                "cannot write `{path}` in `{directory}`: {}",
                e.describe()
            ))
        })?;
        Ok(StepOutcome::message(format!(
            "wrote `{path}` in `{directory}`"
        )))
    }
}

export_post_build!(Write);
