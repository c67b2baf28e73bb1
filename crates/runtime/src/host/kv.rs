//! `kiln:plugin/kv`: the per-plugin key-value cache with expiry.

use std::time::Duration;

use crate::bindings::kv::Host;
use crate::bindings::types::{HostError, HostErrorKind};
use crate::grant::Capability;

use super::{HostState, host_error};

impl Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        if let Err(d) = self.ctx.grant.check(Capability::Kv) {
            return Ok(Err(self.denied(d)));
        }
        Ok(Ok(self.ctx.kv.get(&self.ctx.plugin, &key)))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(d) = self.ctx.grant.check(Capability::Kv) {
            return Ok(Err(self.denied(d)));
        }
        let ttl = ttl_seconds.map(|s| Duration::from_secs(s.into()));
        Ok(self
            .ctx
            .kv
            .set(&self.ctx.plugin, &key, value, ttl)
            .map_err(|e| host_error(HostErrorKind::Invalid, e)))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(d) = self.ctx.grant.check(Capability::Kv) {
            return Ok(Err(self.denied(d)));
        }
        self.ctx.kv.delete(&self.ctx.plugin, &key);
        Ok(Ok(()))
    }
}
