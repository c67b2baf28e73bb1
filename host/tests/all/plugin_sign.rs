//! The `sign` plugin against real Nix: its signature equals the one
//! `nix store sign` makes for the same path in a separate store, Kiln adds it
//! to the local store, another key signs differently, and a malformed key is
//! a clear error naming the secret.

use std::process::Command;

use kiln::config::KilnConfig;
use kiln::plugins::PluginHost;
use kiln_runtime::grant::StoreOp;
use kiln_runtime::{Grant, Limits};

use crate::common::{build_info, build_salted_path, sh};

fn generate_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let secret = sh(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "key",
        "generate-secret",
        "--key-name",
        name,
    ]));
    let path = dir.join(format!("{name}.sec"));
    std::fs::write(&path, &secret).unwrap();
    (path, secret)
}

fn path_info_sigs(store: Option<&str>, path: &str) -> Vec<String> {
    let mut cmd = Command::new("nix");
    cmd.args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        "--sigs",
    ]);
    if let Some(s) = store {
        cmd.args(["--store", s]);
    }
    let out = sh(cmd.arg(path));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Nix 2.8 prints a list; modern Nix an object keyed by path.
    let entry = if let Some(list) = v.as_array() {
        list[0].clone()
    } else {
        v[path].clone()
    };
    entry["signatures"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn host() -> PluginHost {
    let nix = kiln_nix::Nix::detect().await.expect("nix on PATH");
    PluginHost::start(KilnConfig::default(), Some(nix))
        .await
        .unwrap()
}

fn sign_grant() -> Grant {
    Grant {
        secrets: vec!["signing-key".into()],
        store: vec![StoreOp::PathInfo],
        ..Grant::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_matches_nix_store_sign_and_lands_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _dep) = build_salted_path();
    let (key_file, key) = generate_key(dir.path(), "kiln-test-1");

    // Nix's own signature, made in a separate store.
    let other = format!("local?root={}", dir.path().join("other-root").display());
    sh(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--no-check-sigs",
            "--to",
            &other,
        ])
        .arg(&path));
    sh(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--store",
            &other,
            "--key-file",
        ])
        .arg(&key_file)
        .arg(&path));
    let nix_sigs: Vec<String> = path_info_sigs(Some(&other), &path)
        .into_iter()
        .filter(|s| s.starts_with("kiln-test-1:"))
        .collect();
    assert_eq!(nix_sigs.len(), 1, "{nix_sigs:?}");

    // Kiln's, through the runtime, on the original store.
    let mut host = host().await;
    host.secrets = std::sync::Arc::new(kiln_runtime::context::StaticSecrets(
        [("signing-key".to_owned(), key.into_bytes())].into(),
    ));
    let plugin = host.registry.get("sign").expect("built-in sign plugin");
    let step = host
        .run_post_build(
            &plugin,
            &build_info(&path),
            &[],
            sign_grant(),
            Limits::default(),
        )
        .await;
    let outcome = step.result.expect("sign succeeds");
    assert_eq!(outcome.signatures.len(), 1);
    assert_eq!(outcome.signatures[0].path, path);
    assert_eq!(
        outcome.signatures[0].signatures, nix_sigs,
        "the plugin's signature differs from Nix's"
    );
    assert_eq!(step.store_warning, None);
    assert!(
        path_info_sigs(None, &path).contains(&nix_sigs[0]),
        "signature not added to the local store"
    );

    // Another key of the same name: another signature over the same
    // fingerprint (so the difference is in the key, not the name).
    let (_f, key2) = generate_key(dir.path(), "kiln-test-1");
    host.secrets = std::sync::Arc::new(kiln_runtime::context::StaticSecrets(
        [("signing-key".to_owned(), key2.into_bytes())].into(),
    ));
    let step2 = host
        .run_post_build(
            &plugin,
            &build_info(&path),
            &[],
            sign_grant(),
            Limits::default(),
        )
        .await;
    let sig2 = &step2.result.unwrap().signatures[0].signatures[0];
    assert!(sig2.starts_with("kiln-test-1:"));
    assert_ne!(sig2, &nix_sigs[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_key_names_the_secret() {
    let (path, _) = build_salted_path();
    let mut host = host().await;
    host.secrets = std::sync::Arc::new(kiln_runtime::context::StaticSecrets(
        [("signing-key".to_owned(), b"not-a-key".to_vec())].into(),
    ));
    let plugin = host.registry.get("sign").unwrap();
    let step = host
        .run_post_build(
            &plugin,
            &build_info(&path),
            &[],
            sign_grant(),
            Limits::default(),
        )
        .await;
    let err = step.result.unwrap_err().to_string();
    assert!(err.contains("secret `signing-key`"), "{err}");
    assert!(err.contains("not a Nix secret key"), "{err}");
}

#[test]
fn plugin_run_cli_signs_a_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = build_salted_path();
    let (key_file, _) = generate_key(dir.path(), "kiln-cli-1");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("XDG_CACHE_HOME", dir.path())
        .args([
            "plugin",
            "run",
            "sign",
            "--out-path",
            &path,
            "--json",
            "--secret",
        ])
        .arg(format!("signing-key={}", key_file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "succeeded");
    let sig = v["signatures"][0]["signatures"][0].as_str().unwrap();
    assert!(sig.starts_with("kiln-cli-1:"), "{v}");
    assert!(path_info_sigs(None, &path).iter().any(|s| s == sig));
}
