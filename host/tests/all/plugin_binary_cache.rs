//! The first-party `binary-cache` plugin through `kiln run --config`, against
//! a real S3 server (SeaweedFS, which checks Signature V4) and a plain
//! PUT-accepting HTTP store (`tests/servers/http_store.py`): what it uploads
//! is substituted back into a fresh Nix store with the trusted key, `nix
//! store verify` passes and a wrong key fails; nothing is uploaded twice,
//! also across an interrupted and retried upload; bad credentials, an
//! unreachable cache and an ungranted host are clear step failures that keep
//! the build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use kiln::seaweed::{ACCESS_KEY_ID, SECRET_ACCESS_KEY, Seaweed};
use sha2::{Digest as _, Sha256};

use crate::common::{kiln_run_json, report, salt, sh};

/// One SeaweedFS for the whole test binary; its watchdog stops it when the
/// binary exits.
fn seaweed() -> &'static Seaweed {
    static SERVER: OnceLock<Seaweed> = OnceLock::new();
    SERVER.get_or_init(|| Seaweed::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A bucket of its own for one test.
fn bucket(tag: &str) -> String {
    let name = format!("bc-{tag}-{}", salt().replace(['-', '_'], "").to_lowercase());
    let name: String = name.chars().take(60).collect();
    seaweed().create_bucket(&name).unwrap();
    name
}

fn nix(args: &[&str]) -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command"])
        .args(args);
    cmd
}

/// A signing key pair made by Nix: (secret key file, public key).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = sh(&mut nix(&["key", "generate-secret", "--key-name", name]));
    let file = dir.join(format!("{name}.sec"));
    std::fs::write(&file, &secret).unwrap();
    let mut convert = nix(&["key", "convert-secret-to-public"]);
    convert.stdin(std::fs::File::open(&file).unwrap());
    (file, sh(&mut convert).trim().to_owned())
}

/// A flake whose one check `top` refers to a salted dependency, so the
/// closure has two fresh paths, and a buildbot-nix.toml with `step`.
fn flake(dir: &Path, step: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: let
    dep = derivation {{
      name = "bc-dep"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo dep-{salt} > $out" ];
    }};
  in {{
    checks.x86_64-linux.top = derivation {{
      name = "bc-top"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${{dep}} top-{salt} > $out" ];
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

/// Writes a secret file and returns its `[secrets.NAME]` section.
fn secret(dir: &Path, name: &str, value: &str) -> String {
    let file = dir.join(format!("{name}.secret"));
    std::fs::write(&file, value).unwrap();
    format!(
        "[secrets.{name}]\nfile = {:?}\n",
        file.display().to_string()
    )
}

/// kiln.toml granting `binary-cache` the host and the S3 and signing
/// secrets (with `secret_access_key` as the S3 secret).
fn s3_config(work: &Path, port: u16, secret_access_key: &str, key_file: &Path) -> PathBuf {
    let config = work.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.binary-cache]\nhosts = [\"127.0.0.1:{port}\"]\n\
             secrets = [\"s3-access-key-id\", \"s3-secret-access-key\", \"signing-key\"]\n\
             store = [\"path-info\", \"nar-stream\"]\n\n{}{}[secrets.signing-key]\nfile = {:?}\n",
            secret(work, "s3-access-key-id", ACCESS_KEY_ID),
            secret(work, "s3-secret-access-key", secret_access_key),
            key_file.display().to_string()
        ),
    )
    .unwrap();
    config
}

fn s3_step(bucket: &str, extra: &str) -> String {
    format!(
        "[[post_build]]\nplugin = \"binary-cache\"\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n{extra}",
        seaweed().endpoint()
    )
}

/// The check's job in the report, after asserting the exit code.
fn run(dir: &Path, config: &Path, work: &Path, code: i32) -> serde_json::Value {
    let out = kiln_run_json(dir, Some(config), work);
    let r = report(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r["jobs"][0].clone()
}

/// `top` and its dependency from a job.
fn closure_of(job: &serde_json::Value) -> (String, String) {
    let top = job["outputs"]["out"].as_str().unwrap().to_owned();
    let refs = sh(Command::new("nix-store").args(["--query", "--references", &top]));
    let dep = refs
        .lines()
        .find(|l| l.ends_with("-bc-dep"))
        .expect("bc-top refers to bc-dep")
        .to_owned();
    (top, dep)
}

fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn narinfo_fields(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line
            .split_once(": ")
            .unwrap_or((line.trim_end_matches(':'), ""));
        fields.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    fields
}

/// Copies `path` from `cache` into a fresh store trusting `public_key`.
fn substitute(cache: &str, path: &str, public_key: &str, store: &Path) -> std::process::Output {
    nix(&["copy", "--from", cache, "--to"])
        .arg(store)
        .args(["--option", "trusted-public-keys", public_key, path])
        .output()
        .unwrap()
}

/// Substitutes `path` from `cache` into the fresh store `store` trusting
/// `public_key`, then has `nix store verify` check contents and signatures.
fn substitute_and_verify(cache: &str, path: &str, public_key: &str, store: &Path) {
    let copied = substitute(cache, path, public_key, store);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let verify = nix(&["store", "verify", "--store"])
        .arg(store)
        .args([
            "--recursive",
            "--sigs-needed",
            "1",
            "--option",
            "trusted-public-keys",
            public_key,
            path,
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn s3_upload_is_substituted_back_and_verified() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let bucket = bucket("sub");
    flake(&dir, &s3_step(&bucket, "on_cached = true\n"));
    let (key_file, public_key) = key_pair(work.path(), "kiln-bc-1");
    let config = s3_config(work.path(), seaweed().s3_port, SECRET_ACCESS_KEY, &key_file);

    let job = run(&dir, &config, work.path(), 0);
    assert_eq!(job["status"], "succeeded", "{job}");
    let step = &job["post_build"][0];
    assert_eq!(step["status"], "succeeded", "{job}");
    let message = step["message"].as_str().unwrap();
    assert!(message.starts_with("uploaded 2 of 2 paths"), "{message}");
    assert!(message.contains("signed with `kiln-bc-1`"), "{message}");
    let (top, dep) = closure_of(&job);

    // The layout Nix expects, every NAR named by the hash of its bytes.
    let mut keys = seaweed().list(&bucket, "").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.contains(&"nix-cache-info".to_owned()), "{keys:?}");
    let cache = format!("{}/{bucket}", seaweed().endpoint());
    for path in [&top, &dep] {
        let narinfo_key = format!("{}.narinfo", hash_part(path));
        assert!(keys.contains(&narinfo_key), "{keys:?}");
        let text = get(&format!("{cache}/{narinfo_key}"));
        let fields = narinfo_fields(&text);
        assert_eq!(fields["StorePath"][0], *path, "{text}");
        assert_eq!(fields["Compression"], ["zstd"], "{text}");
        let url = &fields["URL"][0];
        let nar = get_bytes(&format!("{cache}/{url}"));
        let file_hash = kiln_narinfo::NarHash::from_digest(Sha256::digest(&nar).into());
        assert_eq!(fields["FileHash"], [file_hash.to_string()], "{text}");
        assert_eq!(url, &format!("nar/{}.nar.zst", file_hash.to_nix_base32()));
        assert_eq!(fields["FileSize"], [nar.len().to_string()], "{text}");
        assert!(
            fields["Sig"].iter().any(|s| s.starts_with("kiln-bc-1:")),
            "{text}"
        );
    }

    // A fresh store substitutes both paths with the trusted key…
    let fresh = work.path().join("fresh");
    substitute_and_verify(&cache, &top, &public_key, &fresh);
    let content = std::fs::read_to_string(fresh.join(top.trim_start_matches('/'))).unwrap();
    assert!(content.starts_with(&dep), "{content}");

    // …and refuses them with another key.
    let (_, other_key) = key_pair(work.path(), "kiln-bc-other");
    let refused = substitute(&cache, &top, &other_key, &work.path().join("fresh2"));
    assert!(!refused.status.success(), "a wrong key must fail");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("signature"), "{stderr}");

    // Running again (outputs cached, on_cached = true) uploads nothing.
    let again = run(&dir, &config, work.path(), 0);
    assert_eq!(again["status"], "cached", "{again}");
    let message = again["post_build"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("uploaded 0 of 2 paths") && message.contains("2 already there"),
        "{message}"
    );
    let mut after = seaweed().list(&bucket, "").unwrap();
    after.sort();
    assert_eq!(after, keys);
}

#[test]
fn wrong_s3_credentials_fail_the_step_and_keep_the_build() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let bucket = bucket("cred");
    flake(&dir, &s3_step(&bucket, ""));
    let (key_file, _) = key_pair(work.path(), "kiln-bc-2");
    let config = s3_config(work.path(), seaweed().s3_port, "not-the-secret", &key_file);
    let job = run(&dir, &config, work.path(), 1);
    assert_eq!(job["status"], "failed", "{job}");
    let (top, _) = closure_of(&job);
    assert!(Path::new(&top).exists(), "the build's output is kept");
    let step = &job["post_build"][0];
    assert_eq!(step["status"], "failed", "{job}");
    let message = step["message"].as_str().unwrap();
    assert!(message.contains("403"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", seaweed().s3_port)),
        "{message}"
    );
    assert!(message.contains("credentials"), "{message}");

    // warn_only keeps the job green with the same message.
    flake(&dir, &s3_step(&bucket, "warn_only = true\n"));
    let job = run(&dir, &config, work.path(), 0);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["post_build"][0]["status"], "warning", "{job}");
    assert!(
        job["post_build"][0]["message"]
            .as_str()
            .unwrap()
            .contains("403")
    );
}

#[test]
fn unreachable_and_ungranted_caches_are_clear_failures() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    // A port nothing listens on, granted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (key_file, _) = key_pair(work.path(), "kiln-bc-3");
    let config = s3_config(work.path(), closed, SECRET_ACCESS_KEY, &key_file);
    flake(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"binary-cache\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{closed}\"\n"
        ),
    );
    let job = run(&dir, &config, work.path(), 1);
    let message = job["post_build"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "cannot reach the cache s3://b/ at http://127.0.0.1:{closed}"
        )),
        "{message}"
    );

    // The real server, but its port is not granted: refused before connecting.
    flake(&dir, &s3_step("b", "on_cached = true\n"));
    let job = run(&dir, &config, work.path(), 1);
    let message = job["post_build"][0]["message"].as_str().unwrap();
    assert!(message.contains("denied"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", seaweed().s3_port)),
        "{message}"
    );

    // S3 secrets not granted: the step names the secret, plugin and project.
    std::fs::write(
        &config,
        format!(
            "[grants.binary-cache]\nhosts = [\"127.0.0.1:{}\"]\nstore = [\"path-info\", \"nar-stream\"]\n",
            seaweed().s3_port
        ),
    )
    .unwrap();
    let job = run(&dir, &config, work.path(), 1);
    let message = job["post_build"][0]["message"].as_str().unwrap();
    assert!(message.contains("secret `s3-access-key-id`"), "{message}");
    assert!(message.contains("binary-cache"), "{message}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
}

/// The PUT-accepting HTTP store; killed on drop.
struct HttpStore {
    port: u16,
    root: tempfile::TempDir,
    child: Child,
}

impl HttpStore {
    fn start(args: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut argv: Vec<&std::ffi::OsStr> = vec![root.path().as_os_str()];
        argv.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let (child, port) = crate::common::python_server("http_store.py", &argv, None);
        HttpStore { port, root, child }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn puts(&self) -> BTreeMap<String, u64> {
        let state: serde_json::Value =
            serde_json::from_str(&get(&format!("{}/_test/state", self.url()))).unwrap();
        serde_json::from_value(state["puts"].clone()).unwrap()
    }
}

impl Drop for HttpStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_config(work: &Path, store: &HttpStore, key_file: &Path, auth: &str) -> PathBuf {
    let config = work.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.binary-cache]\nhosts = [\"127.0.0.1:{}\"]\n\
             secrets = [\"signing-key\", \"binary-cache-http-auth\"]\n\
             store = [\"path-info\", \"nar-stream\"]\n\n{}[secrets.signing-key]\nfile = {:?}\n",
            store.port,
            secret(work, "binary-cache-http-auth", auth),
            key_file.display().to_string()
        ),
    )
    .unwrap();
    config
}

#[test]
fn http_store_upload_survives_an_interruption_without_duplicates() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    // Basic auth `kiln:pw`; the third PUT fails once with 503, Retry-After 1.
    let store = HttpStore::start(&["--auth", "Basic a2lsbjpwdw==", "--fail-put-after", "2"]);
    flake(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"binary-cache\"\nurl = \"{}\"\ncompression = \"xz\"\nparallel = 1\n",
            store.url()
        ),
    );
    let (key_file, public_key) = key_pair(work.path(), "kiln-bc-http");
    let config = http_config(work.path(), &store, &key_file, "kiln:pw\n");
    let job = run(&dir, &config, work.path(), 0);
    assert_eq!(job["post_build"][0]["status"], "succeeded", "{job}");
    let log = std::fs::read_to_string(job["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("503"), "the interruption is in the log: {log}");

    // Every object was written exactly once, across the retry.
    let puts = store.puts();
    assert_eq!(puts.len(), 5, "{puts:?}\n{log}");
    assert!(puts.values().all(|&n| n == 1), "{puts:?}");
    assert!(
        puts.keys().filter(|k| k.ends_with(".nar.xz")).count() == 2,
        "{puts:?}"
    );
    assert!(store.root.path().join("nix-cache-info").is_file());

    let (top, _) = closure_of(&job);
    let fresh = work.path().join("fresh");
    substitute_and_verify(&store.url(), &top, &public_key, &fresh);

    // A wrong password is refused with the status and the cache named.
    let config = http_config(work.path(), &store, &key_file, "kiln:wrong");
    flake(
        &dir,
        &format!(
            "[[post_build]]\nplugin = \"binary-cache\"\nurl = \"{}\"\non_cached = true\n",
            store.url()
        ),
    );
    let job = run(&dir, &config, work.path(), 1);
    let message = job["post_build"][0]["message"].as_str().unwrap();
    assert!(message.contains("401"), "{message}");
    assert!(message.contains(&store.url()), "{message}");
}

fn get_bytes(url: &str) -> Vec<u8> {
    let mut response = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.body_mut().read_to_vec().unwrap()
}

fn get(url: &str) -> String {
    String::from_utf8(get_bytes(url)).unwrap()
}

/// A NAR larger than `buffer_mib` is not held in memory: it is streamed in
/// a second pass straight into its PUT, and arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_nar_larger_than_the_buffer_is_streamed_in_a_second_pass() {
    use crate::plugin_cachix::{
        build_random_path, host_with_secrets, nar_dump, push, upload_grant,
    };
    let store = HttpStore::start(&[]);
    let big = build_random_path(20_000_000);
    let host = host_with_secrets(&[]).await;
    let url = store.url();
    let message = push(
        &host,
        "kiln-plugin-binary-cache",
        &crate::common::build_info(&big),
        &[
            ("url", url.as_str()),
            ("compression", "none"),
            ("buffer_mib", "2"),
        ],
        upload_grant(&format!("127.0.0.1:{}", store.port), &[]),
    )
    .await
    .unwrap();
    assert!(
        message.starts_with("uploaded 1 of 1 paths") && message.contains(", unsigned"),
        "{message}"
    );
    let narinfo = get(&format!("{url}/{}.narinfo", hash_part(&big)));
    let fields = narinfo_fields(&narinfo);
    let uploaded = std::fs::read(store.root.path().join(&fields["URL"][0])).unwrap();
    assert!(uploaded == nar_dump(&big), "the NAR arrived whole");
    assert_eq!(fields["Compression"], ["none"], "{narinfo}");
    assert!(!fields.contains_key("Sig"), "{narinfo}");
}

/// A salted path referring to `count` paths of `bytes` random bytes each.
fn build_random_closure(count: usize, bytes: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.nix");
    let refs: Vec<String> = (0..count).map(|i| format!("${{part {i}}}")).collect();
    std::fs::write(
        &file,
        format!(
            r#"let part = i: derivation {{ name = "kiln-bc-part-${{toString i}}"; system = "x86_64-linux";
                 builder = "/bin/sh"; args = ["-c" "head -c {bytes} /dev/urandom > $out # {salt} ${{toString i}}"]; }};
               in derivation {{ name = "kiln-bc-parts"; system = "x86_64-linux"; builder = "/bin/sh";
                 args = ["-c" "echo {refs} > $out"]; }}"#,
            salt = salt(),
            refs = refs.join(" ")
        ),
    )
    .unwrap();
    sh(Command::new("nix-build").arg("--no-out-link").arg(&file))
        .trim()
        .to_owned()
}

/// Many NARs near the buffer size, under the default 64 MiB of plugin
/// memory: the plugin holds back reads instead of running out.
#[tokio::test(flavor = "multi_thread")]
async fn many_medium_nars_fit_the_default_memory_limit() {
    use crate::plugin_cachix::{host_with_secrets, push, upload_grant};
    // Slow answers about NARs make finished NARs pile up in the plugin.
    let store = HttpStore::start(&["--delay-nar-head", "0.5"]);
    let top = build_random_closure(12, 6_000_000);
    let host = host_with_secrets(&[]).await;
    let url = store.url();
    let message = push(
        &host,
        "kiln-plugin-binary-cache",
        &crate::common::build_info(&top),
        &[("url", url.as_str())],
        upload_grant(&format!("127.0.0.1:{}", store.port), &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(message.starts_with("uploaded 13 of 13 paths"), "{message}");
    let puts = store.puts();
    assert_eq!(puts.len(), 27, "{puts:?}");
    assert!(puts.values().all(|&n| n == 1), "{puts:?}");
}
