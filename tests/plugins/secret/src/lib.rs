//! Test plugin `kiln-test-secret`: reads the secret named in config
//! `secret` and reports its length (never its value), so the host's secret
//! grant can be tested both ways. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build, secrets,
};

struct Secret;

impl PostBuild for Secret {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-secret",
            env!("CARGO_PKG_VERSION"),
            "Reports a secret's length",
        )
        .secret("test-secret")
        .required_config("secret", "Name of the secret to read")
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let name = config.require("secret")?;
        let value = secrets::get(name).map_err(|e| {
            PluginError::failed(format!("cannot read secret `{name}`: {}", e.describe()))
        })?;
        Ok(StepOutcome::message(format!(
            "secret `{name}` has {} bytes",
            value.len()
        )))
    }
}

export_post_build!(Secret);
