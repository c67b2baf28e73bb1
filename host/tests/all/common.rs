//! Helpers shared by the integration tests: the built test plugins, a
//! runtime with a private compile cache, a call context, salted Nix builds.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use kiln_runtime::bindings::post_build_types::{BuildInfo, Output};
use kiln_runtime::context::{KvStore, LogSink, StaticSecrets};
use kiln_runtime::{CallContext, CompileCache, Grant, Plugin, Runtime};

/// Path of a built plugin component by crate name (`kiln-test-loop`).
pub fn wasm(crate_name: &str) -> PathBuf {
    let p = PathBuf::from(kiln::builtin::WASM_DIR)
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(p.exists(), "{} was not built by host/build.rs", p.display());
    p
}

/// A runtime with its own compile cache directory.
pub fn runtime() -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(CompileCache::open(&dir.path().join("cache")).unwrap()).unwrap();
    (rt, dir)
}

/// Load a built plugin by crate name.
pub async fn load(rt: &Runtime, crate_name: &str) -> Plugin {
    let path = wasm(crate_name);
    let bytes = std::fs::read(&path).unwrap();
    rt.load(&path.display().to_string(), &bytes)
        .await
        .unwrap_or_else(|e| panic!("{crate_name}: {e}"))
}

/// A context with `grant` and these secrets.
pub fn context(
    plugin: &str,
    grant: Grant,
    secrets: &[(&str, &[u8])],
    kv: Arc<KvStore>,
) -> CallContext {
    let mut s = StaticSecrets::default();
    for (k, v) in secrets {
        s.0.insert((*k).to_owned(), v.to_vec());
    }
    CallContext {
        plugin: plugin.to_owned(),
        project: "test/project".into(),
        grant: Arc::new(grant),
        secrets: Arc::new(s),
        store: Arc::new(kiln_runtime::context::NoStore),
        kv,
        log: LogSink::new(1 << 20),
    }
}

/// A build of one output.
pub fn build_info(out: &str) -> BuildInfo {
    BuildInfo {
        project: "test/project".into(),
        attr: "x86_64-linux.test".into(),
        system: "x86_64-linux".into(),
        drv_path: String::new(),
        outputs: vec![Output {
            name: "out".into(),
            path: out.into(),
        }],
        branch: Some("main".into()),
        pull_request: None,
        is_default_branch: true,
        rev: None,
        cached: false,
        signatures: Vec::new(),
    }
}

/// Config pairs.
pub fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A unique salt for derivations, so CI's reused store builds anew.
pub fn salt() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos}-{}", std::process::id())
}

/// Run a command and return stdout, panicking with stderr on failure.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Build a salted store path that references another salted store path;
/// returns (path, dependency).
pub fn build_salted_path() -> (String, String) {
    let salt = salt();
    let dir = tempfile::tempdir().unwrap();
    let expr = format!(
        r#"
        let dep = derivation {{ name = "kiln-sign-dep"; system = "x86_64-linux"; builder = "/bin/sh";
                                args = ["-c" "echo dep-{salt} > $out"]; }};
        in derivation {{ name = "kiln-sign-test"; system = "x86_64-linux"; builder = "/bin/sh";
                        args = ["-c" "echo ${{dep}} {salt} > $out"]; }}
        "#
    );
    let file = dir.path().join("default.nix");
    std::fs::write(&file, expr).unwrap();
    let out = sh(Command::new("nix-build").arg("--no-out-link").arg(&file));
    let path = out.trim().to_owned();
    let refs = sh(Command::new("nix-store").args(["--query", "--references", &path]));
    let dep = refs
        .lines()
        .find(|l| l.ends_with("kiln-sign-dep"))
        .expect("dependency reference")
        .to_owned();
    (path, dep)
}

/// Run a post-build plugin on the placeholder build `/nix/store/x`.
pub async fn call(
    rt: &Runtime,
    plugin: &Plugin,
    config: &[(String, String)],
    ctx: CallContext,
    limits: kiln_runtime::Limits,
) -> kiln_runtime::Called<kiln_runtime::bindings::post_build_types::StepOutcome> {
    rt.run_post_build(
        plugin,
        &build_info("/nix/store/x"),
        &config.to_vec(),
        ctx,
        limits,
    )
    .await
}

/// `kiln run DIR --json` for x86_64-linux, with logs, caches and GC roots
/// under `work`, and `--config` when given.
pub fn kiln_run_json(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    work: &std::path::Path,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("run")
        .arg(dir)
        .args(["--json", "--systems", "x86_64-linux", "--log-dir"])
        .arg(work.join("logs"))
        .env("XDG_CACHE_HOME", work.join("cache"))
        .env("KILN_GC_ROOT_DIR", work.join("gcroots"))
        .stdin(std::process::Stdio::null());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.output().expect("kiln runs")
}

/// The JSON report `kiln run --json` printed, or a panic showing stderr.
pub fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is the report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Start `tests/servers/<script>` with `args` (stderr to `log`, or
/// inherited) and read the port it prints as its first line.
pub fn python_server(
    script: &str,
    args: &[&std::ffi::OsStr],
    log: Option<&std::path::Path>,
) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/servers")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    if let Some(log) = log {
        cmd.stderr(std::fs::File::create(log).unwrap());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", path.display()));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().parse() {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} printed no port: {line:?}")
        }
    }
}
