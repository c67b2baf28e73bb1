//! The one place where host bindings are generated from `wit/`.
//!
//! Each world gets its own `bindgen!`; the interfaces they share are
//! generated once (in the `post-build` world) and mapped into the others
//! with `with`, so one host implementation serves every world. Nothing else
//! in Kiln names generated types directly except the host implementations in
//! `crate::host` and the call wrappers in `crate::call`, `crate::call_forge`
//! and `crate::call_authz`.

#![allow(missing_docs, clippy::too_many_arguments)]

/// Bindings for the `post-build` world, and the shared interfaces.
pub mod post_build {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "post-build",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "kiln:plugin/store.nar-stream": crate::host::store::NarStream,
        },
    });
}

/// Bindings for the `forge` world.
pub mod forge {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "forge",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "kiln:plugin/types": super::post_build::kiln::plugin::types,
            "kiln:plugin/log": super::post_build::kiln::plugin::log,
            "kiln:plugin/secrets": super::post_build::kiln::plugin::secrets,
            "kiln:plugin/kv": super::post_build::kiln::plugin::kv,
        },
    });
}

/// Bindings for the `authz` world.
pub mod authz {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "authz",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "kiln:plugin/types": super::post_build::kiln::plugin::types,
            "kiln:plugin/log": super::post_build::kiln::plugin::log,
        },
    });
}

pub use authz::kiln::plugin::authz_types;
pub use forge::kiln::plugin::forge_types;
pub use post_build::kiln::plugin::types;
pub use post_build::kiln::plugin::{files, kv, log, post_build_types, secrets, store};
