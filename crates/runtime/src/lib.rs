//! Kiln's plugin runtime: loads WebAssembly components, links the host
//! interfaces of their world, and calls them in a sandbox.
//!
//! - [`Runtime`] owns the Wasmtime engine, the compile cache and one linker
//!   per world. [`Runtime::load`] turns bytes into a [`Plugin`] (validated,
//!   compiled once, with an `InstancePre`); each call instantiates from it in
//!   a fresh store with the grant's limits ([`call`]): `run_post_build`,
//!   the forge calls (`handle_webhook`, `report_status`,
//!   `list_repositories`, `clone_credentials`) and the authz `decide`.
//! - [`grant`] is the operator's side: what a plugin may do, checked on every
//!   host call in one exhaustive match. [`host`] implements the interfaces.
//! - [`registry`] keeps the set of installed plugins (built-in and from the
//!   plugin directory) current.
//!
//! This crate must not run Nix itself: the store is reached through the
//! [`context::StoreBackend`] the embedder provides.

pub mod bindings;
pub mod cache;
pub mod call;
mod call_authz;
mod call_forge;
pub mod context;
pub mod engine;
pub mod grant;
pub mod host;
pub mod plugin;
pub mod registry;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

pub use cache::{CacheOutcome, CompileCache};
pub use call::{CallError, Called};
pub use context::CallContext;
pub use grant::{Grant, Limits};
pub use plugin::{LoadError, Plugin, PluginInfo, World};

use crate::host::HostState;
use crate::plugin::WorldPre;

/// The largest component Kiln compiles.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The plugin runtime. One per process.
pub struct Runtime {
    pub(crate) engine: Engine,
    _ticker: engine::EpochTicker,
    cache: CompileCache,
    post_build: Linker<HostState>,
    forge: Linker<HostState>,
    authz: Linker<HostState>,
}

impl Runtime {
    /// A runtime compiling through `cache`.
    pub fn new(cache: CompileCache) -> wasmtime::Result<Self> {
        let engine = engine::new_engine()?;
        let base = || -> wasmtime::Result<Linker<HostState>> {
            let mut l = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
            Ok(l)
        };
        let mut post_build = base()?;
        bindings::post_build::PostBuild::add_to_linker::<_, HasSelf<HostState>>(
            &mut post_build,
            |s| s,
        )?;
        let mut forge = base()?;
        bindings::forge::Forge::add_to_linker::<_, HasSelf<HostState>>(&mut forge, |s| s)?;
        let mut authz = base()?;
        bindings::authz::Authz::add_to_linker::<_, HasSelf<HostState>>(&mut authz, |s| s)?;
        Ok(Runtime {
            _ticker: engine::EpochTicker::start(&engine),
            engine,
            cache,
            post_build,
            forge,
            authz,
        })
    }

    /// The Wasmtime engine (for cache inspection and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compile cache in use.
    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Validate, compile (or load from the cache) and describe a plugin.
    /// `origin` names it in messages (a path, or `builtin:<name>`).
    pub async fn load(&self, origin: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        plugin::check_header(origin, bytes)?;
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(LoadError::Compile {
                origin: origin.to_owned(),
                message: format!(
                    "{} bytes is more than the {} MiB a plugin may be",
                    bytes.len(),
                    MAX_COMPONENT_BYTES >> 20
                ),
            });
        }
        let (component, cache) =
            self.cache
                .load(&self.engine, bytes)
                .map_err(|e| LoadError::Compile {
                    origin: origin.to_owned(),
                    message: format!("{e:#}"),
                })?;
        let (world, wit_version, imports) = plugin::inspect(&self.engine, origin, &component)?;
        let link = |e: wasmtime::Error| LoadError::Link {
            origin: origin.to_owned(),
            world: world.as_str(),
            message: link_message(&format!("{e:#}")),
        };
        let pre = match world {
            World::PostBuild => WorldPre::PostBuild(
                bindings::post_build::PostBuildPre::new(
                    self.post_build.instantiate_pre(&component).map_err(link)?,
                )
                .map_err(link)?,
            ),
            World::Forge => WorldPre::Forge(
                bindings::forge::ForgePre::new(
                    self.forge.instantiate_pre(&component).map_err(link)?,
                )
                .map_err(link)?,
            ),
            World::Authz => WorldPre::Authz(
                bindings::authz::AuthzPre::new(
                    self.authz.instantiate_pre(&component).map_err(link)?,
                )
                .map_err(link)?,
            ),
        };
        let described = self
            .describe_pre(origin, &pre, CallContext::empty(origin), Limits::default())
            .await;
        let info: PluginInfo = described
            .result
            .map_err(|source| LoadError::Describe {
                origin: origin.to_owned(),
                source,
            })?
            .into();
        if info.world != world {
            return Err(LoadError::WorldMismatch {
                origin: origin.to_owned(),
                exports: world.as_str(),
                described: info.world.as_str(),
            });
        }
        use sha2::Digest;
        Ok(Plugin {
            info,
            origin: origin.to_owned(),
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            wit_version,
            imports,
            cache,
            pre,
        })
    }
}

/// Say which import is missing in Kiln's words; keep Wasmtime's detail.
fn link_message(wasmtime: &str) -> String {
    let missing = wasmtime
        .split_once("imports instance `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    match missing {
        Some(name) => format!(
            "it imports `{name}`, which this Kiln does not provide to this world ({wasmtime})"
        ),
        None => wasmtime.to_owned(),
    }
}
