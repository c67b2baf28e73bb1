//! A loaded plugin: its compiled component, the world it implements, what it
//! says about itself, and a ready-to-instantiate `InstancePre`.
//!
//! Loading validates in the order a plugin author wants to hear about
//! problems: is it WebAssembly, is it a component, which `kiln:plugin`
//! version does it use, which world do its exports implement, are all of that
//! world's exports present, can its imports be satisfied, and does
//! `describe` agree. This module does not decide grants.

use std::collections::BTreeSet;

use serde::Serialize;
use wasmtime::component::Component;

use crate::bindings;
use crate::cache::CacheOutcome;
use crate::call::CallError;
use crate::host::HostState;

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// Runs on built jobs.
    PostBuild,
    /// Forge integration.
    Forge,
    /// Access policy.
    Authz,
}

impl World {
    /// Name as in the WIT.
    pub fn as_str(self) -> &'static str {
        match self {
            World::PostBuild => "post-build",
            World::Forge => "forge",
            World::Authz => "authz",
        }
    }

    fn required_exports(self) -> &'static [&'static str] {
        match self {
            World::PostBuild => &["describe", "run"],
            World::Forge => &[
                "describe",
                "handle-webhook",
                "report-status",
                "list-repositories",
                "clone-credentials",
                "list-pull-requests",
            ],
            World::Authz => &["describe", "decide"],
        }
    }

    fn from_wit(kind: bindings::types::WorldKind) -> Self {
        match kind {
            bindings::types::WorldKind::PostBuild => World::PostBuild,
            bindings::types::WorldKind::Forge => World::Forge,
            bindings::types::WorldKind::Authz => World::Authz,
        }
    }
}

/// One configuration key a plugin documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigKey {
    /// Key name.
    pub name: String,
    /// One line of documentation.
    pub doc: String,
    /// Whether it must be set.
    pub required: bool,
    /// Default, as text.
    pub default: Option<String>,
}

/// What a plugin asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Requested {
    /// Hosts for outgoing HTTP.
    pub hosts: Vec<String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Store operations.
    pub store: Vec<crate::grant::StoreOp>,
    /// Directory names.
    pub directories: Vec<String>,
    /// Key-value cache.
    pub kv: bool,
}

/// A plugin's `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// Plugin name (how repositories and grants refer to it).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// World.
    pub world: World,
    /// One line about what it does.
    pub summary: String,
    /// Requested capabilities.
    pub requests: Requested,
    /// Configuration keys.
    pub config: Vec<ConfigKey>,
}

impl From<bindings::types::PluginInfo> for PluginInfo {
    fn from(p: bindings::types::PluginInfo) -> Self {
        use crate::grant::StoreOp;
        use bindings::types::StoreOperation as S;
        PluginInfo {
            name: p.name,
            version: p.version,
            world: World::from_wit(p.world),
            summary: p.summary,
            requests: Requested {
                hosts: p.capabilities.hosts,
                secrets: p.capabilities.secrets,
                store: p
                    .capabilities
                    .store
                    .into_iter()
                    .map(|s| match s {
                        S::PathInfo => StoreOp::PathInfo,
                        S::NarStream => StoreOp::NarStream,
                        S::AddSignatures => StoreOp::AddSignatures,
                        S::AddGcRoot => StoreOp::AddGcRoot,
                    })
                    .collect(),
                directories: p.capabilities.directories,
                kv: p.capabilities.kv,
            },
            config: p
                .config
                .into_iter()
                .map(|k| ConfigKey {
                    name: k.name,
                    doc: k.doc,
                    required: k.required,
                    default: k.default,
                })
                .collect(),
        }
    }
}

pub(crate) enum WorldPre {
    PostBuild(bindings::post_build::PostBuildPre<HostState>),
    Forge(bindings::forge::ForgePre<HostState>),
    Authz(bindings::authz::AuthzPre<HostState>),
}

/// A plugin ready to be called.
pub struct Plugin {
    /// What `describe` said.
    pub info: PluginInfo,
    /// Where it was loaded from (a path, or `builtin:<file>`).
    pub origin: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The `kiln:plugin` version it was built against.
    pub wit_version: String,
    /// Interfaces it imports (Kiln's and WASI's).
    pub imports: Vec<String>,
    /// Whether the compile cache was used.
    pub cache: CacheOutcome,
    pub(crate) pre: WorldPre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Why a file could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly at all.
    #[error("{origin} is not a WebAssembly file (no `\\0asm` header)")]
    NotWasm {
        /// Path or name.
        origin: String,
    },
    /// A core module rather than a component.
    #[error(
        "{origin} is a core WebAssembly module, not a component; build plugins with `cargo build --target wasm32-wasip2` (which emits a component)"
    )]
    CoreModule {
        /// Path or name.
        origin: String,
    },
    /// Wasmtime could not compile it.
    #[error("{origin} could not be compiled: {message}")]
    Compile {
        /// Path or name.
        origin: String,
        /// Wasmtime's message.
        message: String,
    },
    /// Built against an incompatible `kiln:plugin` version.
    #[error(
        "{origin} was built against kiln:plugin@{found}, which this Kiln does not support (it provides kiln:plugin@{WIT_VERSION}; any 0.1.x plugin loads): rebuild it with a kiln-plugin-sdk for 0.1"
    )]
    IncompatibleVersion {
        /// Path or name.
        origin: String,
        /// The version found.
        found: String,
    },
    /// Exports match no world.
    #[error(
        "{origin} implements no Kiln world: it exports [{exports}], but a post-build plugin exports `describe` and `run`, a forge plugin `handle-webhook`, `report-status`, `list-repositories`, `clone-credentials` and `list-pull-requests`, an authz plugin `decide`"
    )]
    NoWorld {
        /// Path or name.
        origin: String,
        /// What it exports.
        exports: String,
    },
    /// Some exports of the world are missing.
    #[error("{origin} looks like a {world} plugin but does not export {missing}")]
    MissingExport {
        /// Path or name.
        origin: String,
        /// World.
        world: &'static str,
        /// Missing export names.
        missing: String,
    },
    /// Imports Kiln does not provide for this world.
    #[error("{origin} cannot be linked as a {world} plugin: {message}")]
    Link {
        /// Path or name.
        origin: String,
        /// World.
        world: &'static str,
        /// Wasmtime's message.
        message: String,
    },
    /// `describe` failed.
    #[error("{origin}: `describe` failed: {source}")]
    Describe {
        /// Path or name.
        origin: String,
        /// The call's error.
        source: CallError,
    },
    /// `describe` names a different world than the exports.
    #[error("{origin} exports the {exports} world but its `describe` says {described}")]
    WorldMismatch {
        /// Path or name.
        origin: String,
        /// World from exports.
        exports: &'static str,
        /// World from describe.
        described: &'static str,
    },
}

/// Check the header; compile errors are clearer after this.
pub(crate) fn check_header(origin: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            origin: origin.to_owned(),
        });
    }
    // Core modules have version 1 and layer 0; components layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule {
            origin: origin.to_owned(),
        });
    }
    Ok(())
}

/// Inspect imports and exports: the `kiln:plugin` version and the world.
pub(crate) fn inspect(
    engine: &wasmtime::Engine,
    origin: &str,
    component: &Component,
) -> Result<(World, String, Vec<String>), LoadError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let mut version = WIT_VERSION.to_owned();
    for name in &imports {
        if let Some(rest) = name.strip_prefix("kiln:plugin/") {
            let found = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            let mut parts = found.split('.');
            let (major, minor) = (parts.next(), parts.next());
            if major != Some("0") || minor != Some("1") {
                return Err(LoadError::IncompatibleVersion {
                    origin: origin.to_owned(),
                    found: found.to_owned(),
                });
            }
            version = found.to_owned();
        }
    }
    let exports: BTreeSet<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let world = [World::PostBuild, World::Forge, World::Authz]
        .into_iter()
        .find(|w| {
            w.required_exports()
                .iter()
                .skip(1)
                .any(|e| exports.contains(*e))
        });
    let Some(world) = world else {
        return Err(LoadError::NoWorld {
            origin: origin.to_owned(),
            exports: exports
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let missing: Vec<String> = world
        .required_exports()
        .iter()
        .filter(|e| !exports.contains(**e))
        .map(|e| format!("`{e}`"))
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingExport {
            origin: origin.to_owned(),
            world: world.as_str(),
            missing: missing.join(", "),
        });
    }
    Ok((world, version, imports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        assert!(matches!(
            check_header("x", b"hello world"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header("x", b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(check_header("x", b"\0asm\x0d\0\x01\0").is_ok());
    }
}
