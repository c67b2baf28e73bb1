//! `kiln:plugin/secrets`: secret values by name, only those granted.

use crate::bindings::secrets::Host;
use crate::bindings::types::{HostError, HostErrorKind};
use crate::grant::Capability;

use super::{HostState, host_error};

impl Host for HostState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
        if let Err(d) = self.ctx.grant.check(Capability::Secret(&name)) {
            return Ok(Err(self.denied(d)));
        }
        Ok(match self.ctx.secrets.get(&name) {
            Some(Ok(value)) => Ok(value),
            Some(Err(e)) => Err(host_error(
                HostErrorKind::Failed,
                format!("secret `{name}` could not be read: {e}"),
            )),
            None => Err(host_error(
                HostErrorKind::NotFound,
                format!(
                    "secret `{name}` is granted but not configured; define it under [secrets] in kiln.toml"
                ),
            )),
        })
    }
}
