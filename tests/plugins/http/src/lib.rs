//! Test plugin `kiln-test-http`: GETs the URL in config `url` over
//! `wasi:http` and reports the response status, or fails with the error, so
//! the host's per-host grant can be tested both ways. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build, http,
};

struct Http;

impl PostBuild for Http {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-http",
            env!("CARGO_PKG_VERSION"),
            "GETs config `url`",
        )
        .host("127.0.0.1")
        .host("localhost")
        .required_config("url", "The URL to GET")
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let url = config.require("url")?;
        let response = http::send(http::Request::get(url))?;
        Ok(StepOutcome::message(format!("status {}", response.status)))
    }
}

export_post_build!(Http);
