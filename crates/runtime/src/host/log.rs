//! `kiln:plugin/log`: lines into the log of the job the plugin serves.

use crate::bindings::log::{Host, Level as WitLevel};
use crate::context::Level;
use crate::grant::Capability;

use super::HostState;

/// Longest single log message kept, bytes.
const MAX_LINE: usize = 64 * 1024;

impl Host for HostState {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        if self.ctx.grant.check(Capability::Log).is_err() {
            return Ok(());
        }
        let level = match level {
            WitLevel::Debug => Level::Debug,
            WitLevel::Info => Level::Info,
            WitLevel::Warn => Level::Warn,
            WitLevel::Error => Level::Error,
        };
        let mut message = message;
        if message.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" […]");
        }
        self.ctx.log.push(level, message);
        Ok(())
    }
}
