//! Hostile test plugin `kiln-test-spam`: writes config `bytes` (default
//! 100,000,000) in total, alternating 64 KiB chunks between stdout and
//! stderr, so the host's output cap must hold. Stops quietly when the host
//! closes a stream. Not shipped.

use std::io::Write as _;

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Spam;

impl PostBuild for Spam {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-spam",
            env!("CARGO_PKG_VERSION"),
            "Floods stdout and stderr",
        )
        .optional_config("bytes", "Total bytes to write", Some("100000000"))
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let total: usize = config.get_parsed("bytes")?.unwrap_or(100_000_000);
        let chunk = [b'x'; 64 * 1024];
        let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
        let mut written = 0;
        while written < total {
            let n = chunk.len().min(total - written);
            let result = if (written / chunk.len()) % 2 == 0 {
                stdout.write_all(&chunk[..n])
            } else {
                stderr.write_all(&chunk[..n])
            };
            if result.is_err() {
                break;
            }
            written += n;
        }
        Ok(StepOutcome::message(format!("wrote {written} bytes")))
    }
}

export_post_build!(Spam);
