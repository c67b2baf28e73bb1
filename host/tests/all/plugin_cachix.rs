//! The first-party `cachix` plugin against `tests/servers/cachix.py`, a
//! local server speaking Cachix's API v1 shapes and checking them, on real
//! Nix builds with a dependency: only the paths the cache lacks are
//! uploaded, once, with narinfo fields Nix agrees with and a signature by
//! the configured key; Nix reads the result back as a binary cache; a wrong
//! token, an unreachable server and an ungranted secret fail clearly.
//!
//! The fake-server and Nix helpers here are shared with `plugin_attic`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use kiln::config::KilnConfig;
use kiln::plugins::PluginHost;
use kiln_narinfo::NarHash;
use kiln_runtime::bindings::post_build_types::BuildInfo;
use kiln_runtime::context::StaticSecrets;
use kiln_runtime::grant::StoreOp;
use kiln_runtime::{CallError, Grant, Limits};
use serde_json::Value;

use crate::common::{build_salted_path, cfg, kiln_run_json, report, salt, sh, wasm};

/// A fake server from `tests/servers/`, killed when dropped.
pub(crate) struct FakeServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it keeps what it accepted (and its log, `server.log`).
    pub dir: tempfile::TempDir,
}

impl FakeServer {
    /// Starts `tests/servers/<script>` with `args` plus `--dir`.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/servers")
            .join(script);
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new("python3")
            .arg(&script_path)
            .args(args)
            .arg("--dir")
            .arg(dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e}", script_path.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("{script} printed no port: {line:?}; its log: {log}");
        };
        FakeServer { child, port, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as a grant and error messages name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory the server stores into.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `GET /_test/state`.
    pub fn state(&self) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "GET /_test/state HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nix --extra-experimental-features nix-command ARGS`, stdout as text.
pub(crate) fn nix(args: &[&str]) -> String {
    sh(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(args))
}

/// A fresh ed25519 key pair as Nix writes it: (secret, public).
pub(crate) fn key_pair(name: &str) -> (String, String) {
    let secret = nix(&["key", "generate-secret", "--key-name", name]);
    let mut child = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "convert-secret-to-public",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    (
        secret.trim().to_owned(),
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

/// The bytes of `nix-store --dump PATH`.
pub(crate) fn nar_dump(path: &str) -> Vec<u8> {
    let out = Command::new("nix-store")
        .args(["--dump", path])
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-store --dump {path}");
    out.stdout
}

/// What Nix records about a path.
pub(crate) struct NixInfo {
    pub nar_hash: NarHash,
    pub nar_size: u64,
    /// Basenames, sorted.
    pub references: Vec<String>,
    /// Basename.
    pub deriver: Option<String>,
}

pub(crate) fn basename(path: &str) -> String {
    path.rsplit('/').next().unwrap().to_owned()
}

pub(crate) fn store_hash(path: &str) -> String {
    basename(path)[..32].to_owned()
}

/// `nix path-info --json PATH`.
pub(crate) fn nix_info(path: &str) -> NixInfo {
    let json: Value = serde_json::from_str(&nix(&["path-info", "--json", path])).unwrap();
    let info = &json[0];
    let mut references: Vec<String> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| basename(r.as_str().unwrap()))
        .collect();
    references.sort();
    NixInfo {
        nar_hash: NarHash::parse(info["narHash"].as_str().unwrap()).unwrap(),
        nar_size: info["narSize"].as_u64().unwrap(),
        references,
        deriver: info["deriver"].as_str().map(basename),
    }
}

/// A plugin host on real Nix whose secrets are `secrets`.
pub(crate) async fn host_with_secrets(secrets: &[(&str, &str)]) -> PluginHost {
    let nix = kiln_nix::Nix::detect().await.expect("nix on PATH");
    let mut host = PluginHost::start(KilnConfig::default(), Some(nix))
        .await
        .unwrap();
    let mut s = StaticSecrets::default();
    for (k, v) in secrets {
        s.0.insert((*k).to_owned(), v.as_bytes().to_vec());
    }
    host.secrets = Arc::new(s);
    host
}

/// A grant of HTTP to `host`, `secrets`, and path info plus NAR streams.
pub(crate) fn upload_grant(host: &str, secrets: &[&str]) -> Grant {
    Grant {
        hosts: vec![host.to_owned()],
        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
        store: vec![StoreOp::PathInfo, StoreOp::NarStream],
        ..Grant::default()
    }
}

/// Runs the built plugin `crate_name` on `build` through `host`.
pub(crate) async fn push(
    host: &PluginHost,
    crate_name: &str,
    build: &BuildInfo,
    config: &[(&str, &str)],
    grant: Grant,
) -> Result<String, CallError> {
    let path = wasm(crate_name);
    let bytes = std::fs::read(&path).unwrap();
    let plugin = host
        .registry
        .runtime()
        .load(&path.display().to_string(), &bytes)
        .await
        .unwrap();
    host.run_post_build(&plugin, build, &cfg(config), grant, Limits::default())
        .await
        .result
        .map(|o| o.message)
}

/// A port nothing listens on.
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A flake whose one check depends on another salted derivation, and a
/// buildbot-nix.toml with `step` (a `[[post_build]]` table's body).
pub(crate) fn flake_with_dependency(dir: &Path, step: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: let
    dep = derivation {{
      name = "kiln-upload-dep"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo dep-{salt} > $out" ];
    }};
  in {{
    checks.x86_64-linux.pushed = derivation {{
      name = "kiln-upload-top"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${{dep}} {salt} > $out" ];
    }};
  }};
}}
"#,
            salt = salt()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("buildbot-nix.toml"), step).unwrap();
}

/// Writes `text` to `dir/name` and returns the path as TOML-quoted text.
pub(crate) fn secret_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    format!("{:?}", path.display().to_string())
}

/// The output and its dependency of the only job of a `kiln run` report.
pub(crate) fn job_paths(job: &Value) -> (String, String) {
    let out = job["outputs"]["out"].as_str().unwrap().to_owned();
    let refs = sh(Command::new("nix-store").args(["--query", "--references", &out]));
    let dep = refs
        .lines()
        .find(|l| l.ends_with("kiln-upload-dep"))
        .expect("the dependency")
        .to_owned();
    (out, dep)
}

// ---------------------------------------------------------------------------

const TOKEN: &str = "cachix-test-token";
const CACHE: &str = "kiln-test";

fn start_cachix(public_key: &str) -> FakeServer {
    FakeServer::start(
        "cachix.py",
        &[
            "--cache",
            CACHE,
            "--token",
            TOKEN,
            "--public-key",
            public_key,
        ],
    )
}

/// Checks the server's record of `path` against Nix: fields, signature,
/// and the uploaded file read back by Nix as a binary cache.
fn assert_pushed(server: &FakeServer, public_key: &str, path: &str, compression: &str) {
    let state = server.state();
    let nic = &state["narinfos"][store_hash(path)];
    assert!(nic.is_object(), "{path} was not pushed: {state}");
    let recorded = nix_info(path);
    let name = basename(path);
    assert_eq!(nic["cStoreSuffix"], name[33..], "{nic}");
    assert_eq!(nic["cNarHash"], recorded.nar_hash.to_nix(), "{nic}");
    assert_eq!(nic["cNarSize"], recorded.nar_size, "{nic}");
    let refs: Vec<&str> = nic["cReferences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(refs, recorded.references, "{nic}");
    assert_eq!(
        nic["cDeriver"].as_str(),
        Some(recorded.deriver.as_deref().unwrap_or("unknown-deriver")),
        "{nic}"
    );
    assert_eq!(nic["_compression"], compression, "{nic}");
    assert_eq!(nic["_sig_checked"], true, "the server verified cSig: {nic}");
    if compression == "xz" {
        assert_eq!(nic["_nar_checked"], true, "{nic}");
        // The stored file is the NAR, xz-compressed.
        let file = server.cache_dir().join(nic["_file"].as_str().unwrap());
        let out = Command::new("xz").arg("-dc").arg(&file).output().unwrap();
        assert!(out.status.success());
        assert!(out.stdout == nar_dump(path), "{path}: NAR bytes differ");
    }
    // Nix reads it back (decompressing, checking the NAR hash) and trusts
    // the signature by the configured key.
    let store = format!("file://{}", server.cache_dir().display());
    let dumped = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "dump-path",
            "--store",
            &store,
            path,
        ])
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        dumped.stdout == nar_dump(path),
        "{path}: Nix read back other NAR bytes"
    );
    nix(&[
        "store",
        "verify",
        "--store",
        &store,
        "--trusted-public-keys",
        public_key,
        "--sigs-needed",
        "1",
        path,
    ]);
}

#[test]
fn kiln_run_pushes_the_closure_once_signed_and_readable_by_nix() {
    let (secret, public) = key_pair("test-1");
    let server = start_cachix(&public);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_dependency(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"cachix\"\non_cached = true\ncache = \"{CACHE}\"\nendpoint = \"{}\"\ncompression = \"xz\"\n",
            server.url()
        ),
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.cachix]\nhosts = [\"{}\"]\nsecrets = [\"cachix-auth-token\", \"cachix-signing-key\"]\nstore = [\"path-info\", \"nar-stream\"]\n\n[secrets.cachix-auth-token]\nfile = {}\n\n[secrets.cachix-signing-key]\nfile = {}\n",
            server.host(),
            secret_file(work.path(), "token", &format!("{TOKEN}\n")),
            secret_file(work.path(), "key.sec", &secret),
        ),
    )
    .unwrap();

    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}\n{}", server.log());
    let job = &r["jobs"][0];
    assert_eq!(job["status"], "succeeded", "{r}");
    let step = &job["post_build"][0];
    assert_eq!(step["step"], "cachix", "{r}");
    assert_eq!(step["status"], "succeeded", "{r}\n{}", server.log());
    let (top, dep) = job_paths(job);
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .starts_with("pushed 2 paths"),
        "{r}"
    );

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
    assert_eq!(state["completed"], 2, "{state}");
    assert_eq!(state["storage_auth_headers"], 0, "{state}");
    for path in [&top, &dep] {
        assert_pushed(&server, &public, path, "xz");
    }

    // Again: the outputs are cached now, the step still runs (on_cached)
    // and finds nothing missing.
    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    let step = &r["jobs"][0]["post_build"][0];
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
    assert_eq!(state["completed"], 2, "nothing uploaded twice: {state}");
    assert_eq!(state["duplicates"], serde_json::json!([]), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_direct_push_uploads_only_what_the_cache_lacks() {
    let (secret, public) = key_pair("test-1");
    let server = start_cachix(&public);
    let host = host_with_secrets(&[
        ("cachix-auth-token", TOKEN),
        ("cachix-signing-key", &secret),
    ])
    .await;
    let (top, dep) = build_salted_path();
    let grant = upload_grant(&server.host(), &["cachix-auth-token", "cachix-signing-key"]);
    let endpoint = server.url();
    let config = [("cache", CACHE), ("endpoint", endpoint.as_str())];

    // The dependency first, on its own.
    let message = push(
        &host,
        "kiln-plugin-cachix",
        &crate::common::build_info(&dep),
        &config,
        grant.clone(),
    )
    .await
    .unwrap();
    assert!(message.starts_with("pushed 1 path "), "{message}");
    // Then the top path: its closure has both, only the top is missing.
    let message = push(
        &host,
        "kiln-plugin-cachix",
        &crate::common::build_info(&top),
        &config,
        grant,
    )
    .await
    .unwrap();
    assert!(
        message.starts_with("pushed 1 path ")
            && message.ends_with("1 of 2 closure paths were already there"),
        "{message}"
    );
    let state = server.state();
    assert_eq!(state["rejections"], serde_json::json!([]), "{state}");
    assert_eq!(state["completed"], 2, "{state}");
    assert_eq!(state["duplicates"], serde_json::json!([]), "{state}");
    assert_eq!(
        state["queries"][1].as_array().unwrap().len(),
        2,
        "the second query covers the closure: {state}"
    );
    assert!(
        state["open_uploads"].as_array().unwrap().is_empty(),
        "{state}"
    );
    // zstd by default; Nix decompresses it to the same NAR.
    for path in [&top, &dep] {
        assert_pushed(&server, &public, path, "zst");
    }
}

/// A salted store path holding `bytes` random (incompressible) bytes.
pub(crate) fn build_random_path(bytes: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.nix");
    std::fs::write(
        &file,
        format!(
            r#"derivation {{ name = "kiln-upload-big"; system = "x86_64-linux"; builder = "/bin/sh";
                args = ["-c" "head -c {bytes} /dev/urandom > $out # {}"]; }}"#,
            salt()
        ),
    )
    .unwrap();
    sh(Command::new("nix-build").arg("--no-out-link").arg(&file))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nar_larger_than_a_part_goes_up_in_parts_within_the_default_limits() {
    let (secret, public) = key_pair("test-1");
    let server = start_cachix(&public);
    let host = host_with_secrets(&[
        ("cachix-auth-token", TOKEN),
        ("cachix-signing-key", &secret),
    ])
    .await;
    // 40 MB that zstd cannot shrink: parts of 16 MiB, 16 MiB and the rest.
    let big = build_random_path(40_000_000);
    let endpoint = server.url();
    let message = push(
        &host,
        "kiln-plugin-cachix",
        &crate::common::build_info(&big),
        &[("cache", CACHE), ("endpoint", endpoint.as_str())],
        upload_grant(&server.host(), &["cachix-auth-token", "cachix-signing-key"]),
    )
    .await
    .unwrap();
    assert!(message.starts_with("pushed 1 path "), "{message}");
    let state = server.state();
    assert_eq!(state["rejections"], serde_json::json!([]), "{state}");
    assert_eq!(state["narinfos"][store_hash(&big)]["_parts"], 3, "{state}");
    assert_pushed(&server, &public, &big, "zst");
}

#[test]
fn a_wrong_token_fails_the_step_with_the_status_and_host_and_keeps_the_build() {
    let (secret, public) = key_pair("test-1");
    let server = start_cachix(&public);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_dependency(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"cachix\"\nwarn_only = true\ncache = \"{CACHE}\"\nendpoint = \"{}\"\n",
            server.url()
        ),
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.cachix]\nhosts = [\"{}\"]\nsecrets = [\"cachix-auth-token\", \"cachix-signing-key\"]\nstore = [\"path-info\", \"nar-stream\"]\n\n[secrets.cachix-auth-token]\nfile = {}\n\n[secrets.cachix-signing-key]\nfile = {}\n",
            server.host(),
            secret_file(work.path(), "token", "not-the-token"),
            secret_file(work.path(), "key.sec", &secret),
        ),
    )
    .unwrap();
    let out = kiln_run_json(&dir, Some(&config), work.path());
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    let job = &r["jobs"][0];
    assert_eq!(
        job["status"], "succeeded",
        "the build's status is kept: {r}"
    );
    let step = &job["post_build"][0];
    assert_eq!(step["status"], "warning", "{r}");
    let message = step["message"].as_str().unwrap();
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(message.contains(&server.host()), "{message}");
    assert!(!message.contains("not-the-token"), "{message}");
    let log = std::fs::read_to_string(job["log_path"].as_str().unwrap()).unwrap();
    assert!(!log.contains("not-the-token"), "{log}");
    let state = server.state();
    assert_eq!(state["narinfos"], serde_json::json!({}), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_named_in_the_failure() {
    let (secret, _) = key_pair("test-1");
    let host = host_with_secrets(&[
        ("cachix-auth-token", TOKEN),
        ("cachix-signing-key", &secret),
    ])
    .await;
    let (top, _) = build_salted_path();
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let error = push(
        &host,
        "kiln-plugin-cachix",
        &crate::common::build_info(&top),
        &[("cache", CACHE), ("endpoint", endpoint.as_str())],
        upload_grant(
            &format!("127.0.0.1:{port}"),
            &["cachix-auth-token", "cachix-signing-key"],
        ),
    )
    .await
    .unwrap_err();
    let CallError::Failed(message) = error else {
        panic!("not a permanent failure: {error:?}")
    };
    assert!(
        message.contains(&format!(
            "cannot reach Cachix at 127.0.0.1:{port} ({endpoint}/api/v1/cache/{CACHE}/narinfo)"
        )),
        "{message}"
    );
}

#[test]
fn an_ungranted_secret_fails_before_the_step_runs() {
    let (_, public) = key_pair("test-1");
    let server = start_cachix(&public);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_dependency(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"cachix\"\ncache = \"{CACHE}\"\nendpoint = \"{}\"\n",
            server.url()
        ),
    );
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.cachix]\nhosts = [\"{}\"]\nsecrets = [\"cachix-auth-token\"]\nstore = [\"path-info\", \"nar-stream\"]\n\n[secrets.cachix-auth-token]\nfile = {}\n",
            server.host(),
            secret_file(work.path(), "token", TOKEN),
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
            "step `cachix` needs secret `cachix-signing-key`, which kiln.toml does not grant to plugin `cachix` for project `{}`",
            dir.display()
        ),
        "{r}"
    );
    assert_eq!(
        server.state()["queries"],
        serde_json::json!([]),
        "the step did not run"
    );
}
