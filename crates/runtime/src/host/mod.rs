//! The store data of one plugin call and the host side of every imported
//! interface.
//!
//! Each submodule implements one WIT interface and checks the grant on every
//! call through [`crate::grant::Grant::check`]. WASI is configured with
//! nothing: no preopened directories, no environment, no arguments, no
//! sockets, no name lookups; stdout and stderr go to capped in-memory pipes.
//! Outgoing HTTP is filtered per request by host name.

use std::sync::{Arc, Mutex};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings;
use crate::context::CallContext;
use crate::grant::{Denied, Limits};

mod files;
mod http;
mod kv;
mod log;
mod secrets;
pub mod store;

/// The `T` of every `Store<T>` Kiln creates for a plugin call.
pub struct HostState {
    pub(crate) ctx: CallContext,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: http::Hooks,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    /// Capacity of each of stdout and stderr, bytes.
    pub(crate) output_cap: usize,
    pub(crate) output_cap_kib: u64,
    /// The store paths this call may see: the closure of these roots
    /// (the job's outputs). `None` when the embedder set no scope.
    pub(crate) store_roots: Option<Vec<String>>,
    pub(crate) store_closure: Option<std::collections::HashSet<String>>,
    /// NAR streams currently open.
    pub(crate) open_nars: usize,
    /// Capabilities the plugin tried to use without a grant, for the
    /// failure message.
    pub(crate) denials: Arc<Mutex<Vec<String>>>,
}

impl HostState {
    /// Fresh state for one call.
    pub fn new(ctx: CallContext, limits: &Limits) -> Self {
        let cap = usize::try_from(limits.output_kib.saturating_mul(1024)).unwrap_or(usize::MAX);
        let stdout = MemoryOutputPipe::new(cap);
        let stderr = MemoryOutputPipe::new(cap);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let denials = Arc::new(Mutex::new(Vec::new()));
        let hooks = http::Hooks::new(ctx.grant.clone(), ctx.log.clone(), denials.clone());
        HostState {
            ctx,
            wasi,
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes()),
            stdout,
            stderr,
            output_cap: cap,
            output_cap_kib: limits.output_kib,
            store_roots: None,
            store_closure: None,
            open_nars: 0,
            denials,
        }
    }

    /// Record and log a denial, returning the WIT error for the guest.
    pub(crate) fn denied(&self, d: Denied) -> bindings::types::HostError {
        let msg = format!(
            "{d} (plugin `{}`, project `{}`)",
            self.ctx.plugin, self.ctx.project
        );
        self.ctx.log.push(
            crate::context::Level::Error,
            format!("[kiln] denied: {msg}"),
        );
        self.denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(d.to_string());
        bindings::types::HostError {
            kind: bindings::types::HostErrorKind::Denied,
            message: msg,
        }
    }
}

pub(crate) fn host_error(
    kind: bindings::types::HostErrorKind,
    message: impl Into<String>,
) -> bindings::types::HostError {
    bindings::types::HostError {
        kind,
        message: message.into(),
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Caps linear memory and tables; remembers when the cap was hit so the
/// failure names it.
pub(crate) struct Limiter {
    memory_cap: usize,
    /// Bytes of linear memory across all of the instance's memories.
    total: usize,
    pub(crate) memory_exceeded: Option<usize>,
}

impl Limiter {
    fn new(memory_cap: usize) -> Self {
        Limiter {
            memory_cap,
            total: 0,
            memory_exceeded: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is for the instance, so count every memory it has.
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.memory_cap {
            self.memory_exceeded = Some(total);
            wasmtime::bail!(
                "memory cap exceeded: the plugin tried to grow its memory to {} MiB; its cap is {} MiB",
                total >> 20,
                self.memory_cap >> 20
            );
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl bindings::types::Host for HostState {}
impl bindings::post_build_types::Host for HostState {}
impl bindings::forge::kiln::plugin::forge_types::Host for HostState {}
impl bindings::authz::kiln::plugin::authz_types::Host for HostState {}
