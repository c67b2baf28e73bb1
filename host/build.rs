//! Builds every WebAssembly plugin of the workspace (first-party plugins in
//! `plugins/`, test plugins in `tests/plugins/`) for `wasm32-wasip2`, once,
//! into `target/wasm`, and generates `builtin.rs` that embeds the
//! first-party ones into the binary.
//!
//! The inner cargo runs with the outer cargo's `CARGO_*` variables cleared
//! and its own target directory, so it never waits on the outer build's lock
//! and never rebuilds the host. Test plugins are built but not embedded: the
//! tests find them through the `KILN_WASM_DIR` variable.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_owned();
    for watched in [
        "plugins",
        "tests/plugins",
        "plugin-sdk",
        "crates/narinfo",
        "wit",
        "Cargo.lock",
        // The `wasm` profile lives in the workspace manifest.
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let first_party = crates_in(&root.join("plugins"));
    let test_plugins = crates_in(&root.join("tests/plugins"));
    let target_dir = root.join("target/wasm");

    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in env::vars() {
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(&root)
        .args([
            "build",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (name, _) in first_party.iter().chain(&test_plugins) {
        cmd.args(["-p", name]);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the WebAssembly plugins");
    if !status.success() {
        panic!(
            "building the WebAssembly plugins failed (see above). If the wasm32-wasip2 target is missing, run `rustup target add wasm32-wasip2` (or .ci/setup)."
        );
    }
    let wasm_dir = target_dir.join("wasm32-wasip2/wasm");
    println!("cargo:rustc-env=KILN_WASM_DIR={}", wasm_dir.display());

    let mut out = String::from(
        "/// First-party plugins embedded in the binary: (file name, component).\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (name, _) in &first_party {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let path = wasm_dir.join(&file);
        assert!(path.exists(), "{} was not built", path.display());
        let short = name.strip_prefix("kiln-plugin-").unwrap_or(name);
        writeln!(
            out,
            "    ({:?}, include_bytes!({:?})),",
            format!("{short}.wasm"),
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("builtin.rs"), out).unwrap();
}

/// (package name, directory) of each crate directly under `dir`.
fn crates_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let value: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let name = value
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
        let is_cdylib = value
            .get("lib")
            .and_then(|l| l.get("crate-type"))
            .and_then(|c| c.as_array())
            .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("cdylib")));
        if is_cdylib {
            found.push((name.to_owned(), entry.path()));
        }
    }
    found.sort();
    found
}
