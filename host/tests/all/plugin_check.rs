//! `kiln plugin check`: every way a file can fail to be a plugin gets its
//! own clear message, and compatible versions load.

use std::process::Command;

use kiln_runtime::{CallError, Grant, Limits, LoadError, World};

use crate::common::{call, context, load, runtime, wasm};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn check_prints_describe_for_a_good_plugin() {
    let out = kiln()
        .args(["plugin", "check"])
        .arg(wasm("kiln-plugin-sign"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("loads as a post-build plugin (kiln:plugin@0.1.0)"),
        "{stdout}"
    );
    assert!(stdout.contains("name:     sign"), "{stdout}");
    assert!(stdout.contains("secrets signing-key"), "{stdout}");
}

#[test]
fn check_refuses_a_text_file_and_a_core_module() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let out = kiln()
        .args(["plugin", "check"])
        .arg(&text)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a WebAssembly file"));

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = kiln()
        .args(["plugin", "check"])
        .arg(&core)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_1_1_plugin_with_an_extra_export_loads_and_runs() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-v011").await;
    assert_eq!(p.wit_version, "0.1.1");
    assert_eq!(p.info.world, World::PostBuild);
    let called = call(
        &rt,
        &p,
        &[],
        context("v011", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    assert!(called.result.is_ok(), "{:?}", called.result);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_2_0_plugin_is_refused() {
    let (rt, _d) = runtime();
    let bytes = std::fs::read(wasm("kiln-test-v020")).unwrap();
    let err = rt.load("v020.wasm", &bytes).await.unwrap_err();
    assert!(
        matches!(&err, LoadError::IncompatibleVersion { found, .. } if found == "0.2.0"),
        "{err}"
    );
    assert!(err.to_string().contains("kiln:plugin@0.2.0"), "{err}");
    let out = kiln()
        .args(["plugin", "check"])
        .arg(wasm("kiln-test-v020"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn worlds_are_detected_and_a_wrong_world_is_refused() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    assert_eq!(forge.info.world, World::Forge);
    let authz = load(&rt, "kiln-test-authz").await;
    assert_eq!(authz.info.world, World::Authz);
    let called = call(
        &rt,
        &forge,
        &[],
        context("forge", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    let err = called.result.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::WrongWorld {
                actual: "forge",
                wanted: "post-build",
                ..
            }
        ),
        "{err:?}"
    );

    let out = kiln()
        .args(["plugin", "run"])
        .arg(wasm("kiln-test-forge"))
        .args(["--out-path", "/nix/store/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a forge plugin"));
}

#[test]
fn plugin_list_shows_the_builtin_plugins() {
    let out = kiln().args(["plugin", "list", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"sign"), "{names:?}");
}

#[test]
fn plugin_new_scaffolds_a_crate_from_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["plugin", "new", "my-step", "--world", "post-build", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(dir.path().join("my-step/Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my-step\""), "{manifest}");
    assert!(!manifest.contains("../../plugin-sdk"), "{manifest}");
    let lib = std::fs::read_to_string(dir.path().join("my-step/src/lib.rs")).unwrap();
    assert!(lib.contains("\"my-step\""), "{lib}");
    assert!(dir.path().join("my-step/.cargo/config.toml").exists());
    let again = kiln()
        .args(["plugin", "new", "my-step", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}
