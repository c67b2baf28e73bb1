//! Components that are not usable plugins: each is refused by
//! `Runtime::load` with its own `LoadError` variant and by `kiln plugin
//! check` with exit code 1 and a message that says what is wrong; and the
//! plugin directory's registry loads, reloads and forgets files as they
//! change, recording the ones that fail without stopping the others.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use kiln_runtime::registry::Registry;
use kiln_runtime::{LoadError, Runtime};

use crate::common::{runtime, wasm};

/// Load a built test plugin by crate name, expecting it to be refused.
async fn refused(rt: &Runtime, crate_name: &str) -> LoadError {
    let path = wasm(crate_name);
    let bytes = std::fs::read(&path).unwrap();
    match rt.load(&path.display().to_string(), &bytes).await {
        Ok(p) => panic!("{crate_name} loaded as {:?}", p.info),
        Err(e) => e,
    }
}

/// `kiln plugin check` on a built test plugin: asserts exit code 1 and
/// returns stderr.
fn check_fails(crate_name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plugin", "check"])
        .arg(wasm(crate_name))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{crate_name}: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{crate_name} printed a describe");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_of_no_kiln_world_is_refused() {
    let (rt, _d) = runtime();
    let err = refused(&rt, "kiln-test-noworld").await;
    let LoadError::NoWorld { origin, exports } = &err else {
        panic!("{err:?}")
    };
    assert!(origin.ends_with("kiln_test_noworld.wasm"), "{origin}");
    assert_eq!(exports, "`greet`");
    let msg = err.to_string();
    assert!(
        msg.contains("implements no Kiln world: it exports [`greet`]"),
        "{msg}"
    );
    assert!(
        msg.contains("a post-build plugin exports `describe` and `run`"),
        "{msg}"
    );

    let stderr = check_fails("kiln-test-noworld");
    assert!(
        stderr.contains("kiln_test_noworld.wasm implements no Kiln world"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forge_plugin_missing_an_export_is_refused() {
    let (rt, _d) = runtime();
    let err = refused(&rt, "kiln-test-missing-export").await;
    assert!(
        matches!(
            &err,
            LoadError::MissingExport { world: "forge", missing, .. } if missing == "`report-status`"
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("looks like a forge plugin but does not export `report-status`"),
        "{msg}"
    );

    let stderr = check_fails("kiln-test-missing-export");
    assert!(
        stderr.contains("kiln_test_missing_export.wasm looks like a forge plugin but does not export `report-status`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_naming_another_world_is_refused() {
    let (rt, _d) = runtime();
    let err = refused(&rt, "kiln-test-mismatch").await;
    assert!(
        matches!(
            &err,
            LoadError::WorldMismatch {
                exports: "post-build",
                described: "forge",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("exports the post-build world but its `describe` says forge"),
        "{msg}"
    );

    let stderr = check_fails("kiln-test-mismatch");
    assert!(
        stderr.contains(
            "kiln_test_mismatch.wasm exports the post-build world but its `describe` says forge"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_kiln_does_not_provide_is_refused() {
    let (rt, _d) = runtime();
    let err = refused(&rt, "kiln-test-link").await;
    let LoadError::Link { world, message, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*world, "post-build");
    assert!(
        message.contains("kiln:plugin/nonexistent@0.1.0"),
        "the message should name the missing import: {message}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cannot be linked as a post-build plugin"),
        "{msg}"
    );

    let stderr = check_fails("kiln-test-link");
    assert!(
        stderr.contains("kiln_test_link.wasm cannot be linked as a post-build plugin"),
        "{stderr}"
    );
    assert!(stderr.contains("kiln:plugin/nonexistent@0.1.0"), "{stderr}");
}

/// Replace `to` with `from`'s bytes.
fn copy(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_follows_the_plugin_directory() {
    let (rt, _d) = runtime();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(Arc::new(rt), Some(dir.path().to_owned()));
    assert!(registry.refresh().await.is_empty());

    // Dropped in: available after a rescan.
    let file = dir.path().join("step.wasm");
    copy(&wasm("kiln-test-noop"), &file);
    assert_eq!(registry.refresh().await, ["kiln-test-noop"]);
    let noop = registry.get("kiln-test-noop").expect("noop loaded");
    assert_eq!(noop.origin, file.display().to_string());
    // An unchanged directory loads nothing again.
    assert!(registry.refresh().await.is_empty());
    assert!(registry.get("kiln-test-noop").is_some());

    // Replaced by another plugin: reloaded under the new name, the old one gone.
    copy(&wasm("kiln-test-retry"), &file);
    assert_eq!(registry.refresh().await, ["kiln-test-retry"]);
    assert!(registry.get("kiln-test-retry").is_some());
    assert!(
        registry.get("kiln-test-noop").is_none(),
        "the replaced plugin is still registered"
    );

    // Files that are not plugins are recorded with their error and do not
    // stop the others from loading.
    let text = dir.path().join("a-notes.wasm");
    std::fs::write(&text, "not a plugin").unwrap();
    let foreign = dir.path().join("b-greeter.wasm");
    copy(&wasm("kiln-test-noworld"), &foreign);
    copy(&wasm("kiln-test-noop"), &dir.path().join("c-noop.wasm"));
    assert_eq!(registry.refresh().await, ["kiln-test-noop"]);
    assert!(registry.get("kiln-test-noop").is_some());
    assert!(registry.get("kiln-test-retry").is_some());
    let mut failures = registry.failures();
    failures.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].path, text);
    assert!(
        failures[0].error.contains("is not a WebAssembly file"),
        "{}",
        failures[0].error
    );
    assert_eq!(failures[1].path, foreign);
    assert!(
        failures[1].error.contains("implements no Kiln world"),
        "{}",
        failures[1].error
    );

    // Deleted: gone after the next rescan, failures included.
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_file(&text).unwrap();
    assert!(registry.refresh().await.is_empty());
    assert!(registry.get("kiln-test-retry").is_none());
    assert!(registry.get("kiln-test-noop").is_some());
    let failures = registry.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].path, foreign);
}
