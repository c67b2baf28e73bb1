//! The first-party `attic` plugin against `tests/servers/attic.py`, a local
//! server speaking Attic's API v1 shapes and checking them, on real Nix
//! builds with a dependency: only the paths the cache lacks are uploaded,
//! once, as the NARs Nix dumps, with narinfo fields Nix agrees with and the
//! signatures Kiln recorded (a large narinfo travels as a body preamble); a
//! wrong token, an unreachable server and an ungranted secret fail clearly.

use kiln_narinfo::{Fingerprint, PublicKey, SecretKey, Signature};
use kiln_runtime::CallError;
use kiln_runtime::bindings::post_build_types::PathSignatures;
use serde_json::Value;

use crate::common::{build_info, build_salted_path, kiln_run_json, report};
use crate::plugin_cachix::{
    FakeServer, basename, build_random_path, closed_port, flake_with_dependency, host_with_secrets,
    job_paths, key_pair, nar_dump, nix_info, push, secret_file, store_hash, upload_grant,
};

const TOKEN: &str = "attic-test-token";
const CACHE: &str = "kiln-test";

fn start_attic() -> FakeServer {
    FakeServer::start("attic.py", &["--cache", CACHE, "--token", TOKEN])
}

/// `sha256:<hex>` of a NAR hash, as Attic writes it.
fn typed_base16(hash: &kiln_narinfo::NarHash) -> String {
    let hex: String = hash.digest().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks the server's object for `path` against Nix; returns it.
fn assert_uploaded(server: &FakeServer, path: &str, system: Option<&str>) -> Value {
    let state = server.state();
    let object = state["objects"][store_hash(path)].clone();
    assert!(object.is_object(), "{path} was not uploaded: {state}");
    let nix = nix_info(path);
    assert_eq!(object["cache"], CACHE, "{object}");
    assert_eq!(object["store_path"], path, "{object}");
    assert_eq!(object["nar_hash"], typed_base16(&nix.nar_hash), "{object}");
    assert_eq!(object["nar_size"], nix.nar_size, "{object}");
    let refs: Vec<&str> = object["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(refs, nix.references, "{object}");
    assert_eq!(
        object["deriver"].as_str(),
        nix.deriver.as_deref(),
        "{object}"
    );
    assert_eq!(object["system"].as_str(), system, "{object}");
    let stored = std::fs::read(
        server
            .cache_dir()
            .join(object["_nar_file"].as_str().unwrap()),
    )
    .unwrap();
    assert!(stored == nar_dump(path), "{path}: NAR bytes differ");
    object
}

/// The signatures in `object` by `public`'s key that verify over `path`'s
/// fingerprint.
fn valid_signatures(object: &Value, path: &str, public: &PublicKey) -> usize {
    let nix = nix_info(path);
    let fingerprint = Fingerprint {
        store_path: path,
        nar_hash: &nix.nar_hash,
        nar_size: nix.nar_size,
        references: &nix.references,
    }
    .to_string();
    object["sigs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            Signature::parse(s.as_str().unwrap()).is_ok_and(|sig| public.verify(&fingerprint, &sig))
        })
        .count()
}

#[test]
fn kiln_run_pushes_the_closure_once_with_the_signatures_kiln_recorded() {
    let (secret, public) = key_pair("test-1");
    let server = start_attic();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_dependency(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"sign\"\non_cached = true\n\n[[post_build]]\nplugin = \"attic\"\non_cached = true\nendpoint = \"{}/\"\ncache = \"{CACHE}\"\n",
            server.url()
        ),
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.sign]\nsecrets = [\"signing-key\"]\nstore = [\"path-info\"]\n\n[grants.attic]\nhosts = [\"{}\"]\nsecrets = [\"attic-token\"]\nstore = [\"path-info\", \"nar-stream\"]\n\n[secrets.signing-key]\nfile = {}\n\n[secrets.attic-token]\nfile = {}\n",
            server.host(),
            secret_file(work.path(), "key.sec", &secret),
            secret_file(work.path(), "token", &format!("{TOKEN}\n")),
        ),
    )
    .unwrap();

    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}\n{}", server.log());
    let job = &r["jobs"][0];
    assert_eq!(job["status"], "succeeded", "{r}");
    let steps = job["post_build"].as_array().unwrap();
    assert_eq!(steps[1]["step"], "attic", "{r}");
    assert_eq!(steps[1]["status"], "succeeded", "{r}\n{}", server.log());
    assert!(
        steps[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("pushed 2 paths to Attic cache `kiln-test`"),
        "{r}"
    );
    let (top, dep) = job_paths(job);

    let state = server.state();
    assert_eq!(state["rejections"], serde_json::json!([]), "{state}");
    let mut asked: Vec<String> = state["queries"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    asked.sort();
    let mut expected = vec![store_hash(&top), store_hash(&dep)];
    expected.sort();
    assert_eq!(asked, expected, "one query for the whole closure: {state}");
    assert_eq!(state["uploads"], 2, "{state}");
    let public = PublicKey::parse(&public).unwrap();
    let object = assert_uploaded(&server, &top, Some("x86_64-linux"));
    assert_eq!(object["_via"], "header", "{object}");
    assert_eq!(
        valid_signatures(&object, &top, &public),
        1,
        "the sign step's signature travels with the output: {object}"
    );
    assert_uploaded(&server, &dep, None);

    // Again: nothing is missing, nothing is uploaded twice.
    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    let step = &r["jobs"][0]["post_build"][1];
    assert_eq!(step["status"], "succeeded", "{r}");
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .starts_with("pushed 0 paths"),
        "{r}"
    );
    let state = server.state();
    assert_eq!(state["queries"].as_array().unwrap().len(), 2, "{state}");
    assert_eq!(state["uploads"], 2, "{state}");
    assert_eq!(state["duplicates"], serde_json::json!([]), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_signatures_travel_and_a_large_narinfo_goes_in_a_preamble() {
    let server = start_attic();
    let host = host_with_secrets(&[("attic-token", TOKEN)]).await;
    let (top, dep) = build_salted_path();
    let (secret, public) = key_pair("test-1");
    let key = SecretKey::parse(&secret).unwrap();
    let nix = nix_info(&top);
    let real = key
        .sign(
            &Fingerprint {
                store_path: &top,
                nar_hash: &nix.nar_hash,
                nar_size: nix.nar_size,
                references: &nix.references,
            }
            .to_string(),
        )
        .to_string();
    // Enough signatures to take the narinfo past Attic's 4 KiB header limit.
    let mut recorded: Vec<String> = (0..60)
        .map(|i| key.sign(&format!("filler {i}")).to_string())
        .collect();
    recorded.push(real.clone());
    let mut build = build_info(&top);
    build.signatures = vec![PathSignatures {
        path: top.clone(),
        signatures: recorded.clone(),
    }];
    let endpoint = server.url();
    let message = push(
        &host,
        "kiln-plugin-attic",
        &build,
        &[("endpoint", endpoint.as_str()), ("cache", CACHE)],
        upload_grant(&server.host(), &["attic-token"]),
    )
    .await
    .unwrap();
    assert!(message.starts_with("pushed 2 paths"), "{message}");
    let state = server.state();
    assert_eq!(state["rejections"], serde_json::json!([]), "{state}");
    let object = assert_uploaded(&server, &top, Some("x86_64-linux"));
    assert_eq!(object["_via"], "preamble", "{object}");
    let sigs: Vec<&str> = object["sigs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for sig in &recorded {
        assert!(sigs.contains(&sig.as_str()), "{sig} missing: {object}");
    }
    assert_eq!(
        valid_signatures(&object, &top, &PublicKey::parse(&public).unwrap()),
        1
    );
    let dep_object = assert_uploaded(&server, &dep, None);
    assert_eq!(dep_object["_via"], "header", "{dep_object}");
    assert_eq!(
        basename(dep_object["store_path"].as_str().unwrap()),
        basename(&dep)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nar_larger_than_plugin_memory_streams_through() {
    let server = start_attic();
    let host = host_with_secrets(&[("attic-token", TOKEN)]).await;
    // More than the default 64 MiB a plugin may use: only streaming fits.
    let big = build_random_path(80_000_000);
    let endpoint = server.url();
    let message = push(
        &host,
        "kiln-plugin-attic",
        &build_info(&big),
        &[("endpoint", endpoint.as_str()), ("cache", CACHE)],
        upload_grant(&server.host(), &["attic-token"]),
    )
    .await
    .unwrap();
    assert!(message.starts_with("pushed 1 path "), "{message}");
    assert_eq!(server.state()["rejections"], serde_json::json!([]));
    assert_uploaded(&server, &big, Some("x86_64-linux"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused_with_the_status_and_host() {
    let server = start_attic();
    let host = host_with_secrets(&[("attic-token", "not-the-token")]).await;
    let (top, _) = build_salted_path();
    let endpoint = server.url();
    let error = push(
        &host,
        "kiln-plugin-attic",
        &build_info(&top),
        &[("endpoint", endpoint.as_str()), ("cache", CACHE)],
        upload_grant(&server.host(), &["attic-token"]),
    )
    .await
    .unwrap_err();
    let CallError::Failed(message) = error else {
        panic!("not a permanent failure: {error:?}")
    };
    assert!(
        message.starts_with(&format!(
            "Attic at {} refused to query missing paths with HTTP 401 (unauthorized)",
            server.host()
        )),
        "{message}"
    );
    assert!(!message.contains("not-the-token"), "{message}");
    assert_eq!(server.state()["uploads"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_named_in_the_failure() {
    let host = host_with_secrets(&[("attic-token", TOKEN)]).await;
    let (top, _) = build_salted_path();
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let error = push(
        &host,
        "kiln-plugin-attic",
        &build_info(&top),
        &[("endpoint", endpoint.as_str()), ("cache", CACHE)],
        upload_grant(&format!("127.0.0.1:{port}"), &["attic-token"]),
    )
    .await
    .unwrap_err();
    let CallError::Failed(message) = error else {
        panic!("not a permanent failure: {error:?}")
    };
    assert!(
        message.contains(&format!(
            "cannot reach Attic at 127.0.0.1:{port} ({endpoint}/_api/v1/get-missing-paths)"
        )),
        "{message}"
    );
}

#[test]
fn an_ungranted_token_fails_before_the_step_runs() {
    let server = start_attic();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_dependency(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"attic\"\nendpoint = \"{}\"\ncache = \"{CACHE}\"\n",
            server.url()
        ),
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.attic]\nhosts = [\"{}\"]\nstore = [\"path-info\", \"nar-stream\"]\n",
            server.host()
        ),
    )
    .unwrap();
    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    let step = &r["jobs"][0]["post_build"][0];
    assert_eq!(step["status"], "failed", "{r}");
    assert_eq!(
        step["message"],
        format!(
            "step `attic` needs secret `attic-token`, which kiln.toml does not grant to plugin `attic` for project `{}`",
            dir.display()
        ),
        "{r}"
    );
    assert_eq!(server.state()["queries"], serde_json::json!([]));
}
