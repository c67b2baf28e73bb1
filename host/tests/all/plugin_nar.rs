//! The `nar-stream` store operation against real Nix, through the
//! `kiln-test-nar` plugin: what the plugin reads through `io::Read` is what
//! the host's summary describes (size and file hash), the NAR hash and size
//! equal Nix's for every compression, uncompressed streams have file hash
//! equal to NAR hash, paths outside the job's closure are refused, and the
//! operation needs its grant.

use std::collections::BTreeMap;
use std::process::Command;

use kiln::config::KilnConfig;
use kiln::plugins::PluginHost;
use kiln_narinfo::NarHash;
use kiln_runtime::grant::StoreOp;
use kiln_runtime::{CallError, Grant, Limits, Plugin};

use crate::common::{build_info, build_salted_path, cfg, salt, sh, wasm};

async fn host() -> PluginHost {
    let nix = kiln_nix::Nix::detect().await.expect("nix on PATH");
    PluginHost::start(KilnConfig::default(), Some(nix))
        .await
        .unwrap()
}

async fn load_nar(host: &PluginHost) -> Plugin {
    let path = wasm("kiln-test-nar");
    let bytes = std::fs::read(&path).unwrap();
    host.registry
        .runtime()
        .load(&path.display().to_string(), &bytes)
        .await
        .unwrap()
}

fn nar_grant() -> Grant {
    Grant {
        store: vec![StoreOp::NarStream],
        ..Grant::default()
    }
}

async fn run(
    host: &PluginHost,
    plugin: &Plugin,
    path: &str,
    config: &[(&str, &str)],
    grant: Grant,
) -> Result<String, CallError> {
    host.run_post_build(
        plugin,
        &build_info(path),
        &cfg(config),
        grant,
        Limits::default(),
    )
    .await
    .result
    .map(|o| o.message)
}

/// One report line of the plugin, `key=value` pairs.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{line}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Nix's NAR hash (as `sha256:<nix base-32>`) and size of `path`.
fn nix_nar(path: &str) -> (String, u64) {
    let out = sh(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
        ])
        .arg(path));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Nix 2.8 prints a list; modern Nix an object keyed by path.
    let entry = if let Some(list) = v.as_array() {
        list[0].clone()
    } else {
        v[path].clone()
    };
    // Nix 2.8 prints the hash in SRI form; others `sha256:<base-32>`.
    let hash = NarHash::parse(entry["narHash"].as_str().unwrap())
        .unwrap()
        .to_nix();
    (hash, entry["narSize"].as_u64().unwrap())
}

/// Add a salted directory of a few MiB (a poorly compressible file, a
/// repetitive one, a nested one) to the store, so its NAR spans many chunks
/// of the host's stream and of the plugin's reads.
fn add_large_path() -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("kiln-nar-test");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(root.join("noise"), noise).unwrap();
    std::fs::write(root.join("text"), "kiln nar stream\n".repeat(100_000)).unwrap();
    std::fs::write(root.join("sub/salt"), salt()).unwrap();
    sh(Command::new("nix-store").arg("--add").arg(&root))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_streams_match_nix_for_every_compression() {
    let (small, _dep) = build_salted_path();
    let large = add_large_path();
    let host = host().await;
    let plugin = load_nar(&host).await;

    for (path, compression) in [&small, &large]
        .into_iter()
        .flat_map(|p| ["none", "xz", "zstd"].map(|c| (p, c)))
    {
        let (nix_hash, nix_size) = nix_nar(path);
        let msg = run(
            &host,
            &plugin,
            path,
            &[("compression", compression)],
            nar_grant(),
        )
        .await
        .unwrap_or_else(|e| panic!("{path}, {compression}: {e}"));
        let f = fields(&msg);
        let ctx = format!("{path}, {compression}: {msg}");
        // What the plugin read is what the host says it sent.
        assert_eq!(f["bytes"], f["file-size"], "{ctx}");
        assert_eq!(f["sha"], f["file-hash"], "{ctx}");
        assert!(f["file-hash"].starts_with("sha256:"), "{ctx}");
        // The NAR is Nix's.
        assert_eq!(f["nar-hash"], nix_hash, "{ctx}");
        assert_eq!(f["nar-size"], nix_size.to_string(), "{ctx}");
        if compression == "none" {
            assert_eq!(f["file-hash"], f["nar-hash"], "{ctx}");
            assert_eq!(f["file-size"], f["nar-size"], "{ctx}");
        } else {
            // A small NAR may compress to its own size by chance (xz's
            // framing costs about what it saves), so only the bytes are
            // compared below; the large one must shrink.
            if path == &large {
                // Compressed: smaller than the NAR despite the noise.
                let (file, nar): (u64, u64) = (
                    f["file-size"].parse().unwrap(),
                    f["nar-size"].parse().unwrap(),
                );
                assert!(file < nar, "{ctx}");
            }
            assert_ne!(f["file-hash"], f["nar-hash"], "{ctx}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_paths_in_the_jobs_closure_can_be_streamed() {
    let (path, dep) = build_salted_path();
    let (other, _) = build_salted_path();
    let host = host().await;
    let plugin = load_nar(&host).await;

    // A dependency of the output is in the closure.
    let msg = run(&host, &plugin, &path, &[("extra", &dep)], nar_grant())
        .await
        .unwrap();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    let (dep_hash, dep_size) = nix_nar(&dep);
    let f = fields(lines[1]);
    assert_eq!(f["nar-hash"], dep_hash, "{msg}");
    assert_eq!(f["nar-size"], dep_size.to_string(), "{msg}");

    // Another build's output is not.
    let err = run(&host, &plugin, &path, &[("extra", &other)], nar_grant())
        .await
        .unwrap_err();
    let CallError::Failed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains(&format!(
            "{other} is not in the closure of this job's outputs"
        )),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_streams_need_the_grant() {
    let (path, _dep) = build_salted_path();
    let host = host().await;
    let plugin = load_nar(&host).await;
    let granted_otherwise = Grant {
        store: vec![StoreOp::PathInfo],
        ..Grant::default()
    };
    for grant in [Grant::default(), granted_otherwise] {
        let err = run(&host, &plugin, &path, &[], grant).await.unwrap_err();
        let CallError::Failed(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("store operation `nar-stream` is not granted"),
            "{msg}"
        );
    }
}
