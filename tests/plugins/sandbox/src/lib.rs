//! Test plugin `kiln-test-sandbox`: tries what a plugin must not be able to
//! do through plain WASI — read the environment, list `/`, read
//! `/etc/passwd`, open a TCP connection to `127.0.0.1:<config port>` — and
//! reports each attempt in its outcome message as `<probe>: ok …` or
//! `<probe>: failed …`, separated by ` | `. The host's tests assert every
//! probe failed. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

struct Sandbox;

fn probe<T>(name: &str, result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("{name}: ok {}", ok(value)),
        Err(e) => format!("{name}: failed {e}"),
    }
}

impl PostBuild for Sandbox {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-sandbox",
            env!("CARGO_PKG_VERSION"),
            "Probes the WASI sandbox",
        )
        .required_config("port", "Loopback TCP port to try to connect to")
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let port: u16 = config
            .require("port")?
            .parse()
            .map_err(PluginError::failed)?;
        let report = [
            format!("env: {} variables", std::env::vars_os().count()),
            probe("read_dir /", std::fs::read_dir("/"), |entries| {
                format!("{} entries", entries.count())
            }),
            probe("read /etc/passwd", std::fs::read("/etc/passwd"), |bytes| {
                format!("{} bytes", bytes.len())
            }),
            probe(
                "connect",
                std::net::TcpStream::connect(("127.0.0.1", port)),
                |s| format!("to {:?}", s.peer_addr()),
            ),
        ];
        Ok(StepOutcome::message(report.join(" | ")))
    }
}

export_post_build!(Sandbox);
