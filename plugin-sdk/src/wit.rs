//! The generated bindings, in exactly one place on the guest side: one
//! `wit_bindgen::generate!` per world against `../wit`. The shared interfaces
//! are generated once (with the post-build world) and mapped into the others
//! with `with`, so a type such as `PluginInfo` is one Rust type everywhere.
//!
//! Each world's export macro carries that world's full type section; the
//! library keeps only import sections, so `wit-component` drops every
//! function import a plugin does not call. What remains in every plugin are
//! the type-only interfaces (`types`, `*-types`): they hold no functions and
//! need nothing in the host's linker.
//!
//! Plugin authors never name anything here; the rest of the SDK wraps it.
//! This module must hold nothing but generation.

#![allow(missing_docs, clippy::all)]

/// Bindings of the `post-build` world and of every shared interface.
pub mod post_build {
    wit_bindgen::generate!({
        world: "post-build",
        path: "../wit",
        generate_all,
        additional_derives: [PartialEq, Eq],
        runtime_path: "::kiln_plugin_sdk::wit::__rt",
        pub_export_macro: true,
        export_macro_name: "__kiln_export_post_build",
        default_bindings_module: "::kiln_plugin_sdk::wit::post_build",
        type_section_suffix: "kiln-plugin-sdk-post-build",
    });
}

/// Bindings of the `forge` world.
pub mod forge {
    wit_bindgen::generate!({
        world: "forge",
        path: "../wit",
        with: {
            "kiln:plugin/types@0.1.0": crate::wit::post_build::kiln::plugin::types,
            "kiln:plugin/log@0.1.0": crate::wit::post_build::kiln::plugin::log,
            "kiln:plugin/secrets@0.1.0": crate::wit::post_build::kiln::plugin::secrets,
            "kiln:plugin/kv@0.1.0": crate::wit::post_build::kiln::plugin::kv,
            "kiln:plugin/forge-types@0.1.0": generate,
        },
        additional_derives: [PartialEq, Eq],
        runtime_path: "::kiln_plugin_sdk::wit::__rt",
        pub_export_macro: true,
        export_macro_name: "__kiln_export_forge",
        default_bindings_module: "::kiln_plugin_sdk::wit::forge",
        type_section_suffix: "kiln-plugin-sdk-forge",
    });
}

/// Bindings of the `authz` world.
pub mod authz {
    wit_bindgen::generate!({
        world: "authz",
        path: "../wit",
        with: {
            "kiln:plugin/types@0.1.0": crate::wit::post_build::kiln::plugin::types,
            "kiln:plugin/log@0.1.0": crate::wit::post_build::kiln::plugin::log,
            "kiln:plugin/authz-types@0.1.0": generate,
        },
        additional_derives: [PartialEq, Eq],
        runtime_path: "::kiln_plugin_sdk::wit::__rt",
        pub_export_macro: true,
        export_macro_name: "__kiln_export_authz",
        default_bindings_module: "::kiln_plugin_sdk::wit::authz",
        type_section_suffix: "kiln-plugin-sdk-authz",
    });
}

/// The runtime support the generated code and export macros refer to.
#[doc(hidden)]
pub use wit_bindgen::rt as __rt;
