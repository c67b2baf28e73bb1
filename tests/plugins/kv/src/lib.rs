//! Test plugin `kiln-test-kv`: one kv operation per call, chosen by config
//! `op` (`set`, `get` or `delete`) on config `key`, with `value` and
//! optional `ttl` seconds for `set`; `get` reports the value or `<absent>`.
//! Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build, kv,
};

struct Kv;

impl PostBuild for Kv {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-kv",
            env!("CARGO_PKG_VERSION"),
            "Sets or gets a kv key",
        )
        .kv()
        .required_config("op", "`set`, `get` or `delete`")
        .required_config("key", "The key")
        .optional_config("value", "The value to set", Some(""))
        .optional_config("ttl", "Expiry in seconds for `set`", None)
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let key = config.require("key")?;
        let message = match config.require("op")? {
            "set" => {
                let value = config.get("value").unwrap_or("");
                kv::set(key, value.as_bytes(), config.get_parsed("ttl")?)?;
                format!("set {key}")
            }
            "get" => match kv::get(key)? {
                Some(value) => String::from_utf8_lossy(&value).into_owned(),
                None => "<absent>".to_owned(),
            },
            "delete" => {
                kv::delete(key)?;
                format!("deleted {key}")
            }
            other => return Err(PluginError::failed(format!("unknown op `{other}`"))),
        };
        Ok(StepOutcome::message(message))
    }
}

export_post_build!(Kv);
