//! The web UI in a real browser: headless Debian `chromium` driven by
//! `tests/browser/run.mjs` (playwright-core) against a real `kiln serve`
//! that built a real flake after a signed push webhook, with
//! `tests/servers/github.py` as the forge. The flake has a passing check, a
//! failing one, one that depends on the failing one, and one that prints a
//! line every 0.3 s for 15 s, so the browser watches a live log, then walks
//! the finished run (see `tests/browser/check.mjs`). Screenshots go to
//! `target/ui-screenshots/` (or `KILN_UI_SCREENSHOTS`).
//!
//! Needs `chromium`, `node` and `tests/browser/node_modules`: run
//! `.ci/setup-browser`. Without them the test fails, unless
//! `KILN_SKIP_BROWSER=1` says to skip it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{python_server, salt, sh};
use crate::service::Server;

const SECRET: &str = "ui browser webhook secret";
const TOKEN: &str = "ghp_ui_browser_token";
const REPO: &str = "acme/widget";

/// The checks; `SALT` makes each test build anew.
const FLAKE: &str = r#"{
  outputs = { self }: let
    check = name: script: derivation {
      inherit name; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "${script} && echo ${name}-SALT > $out" ];
    };
  in {
    checks.x86_64-linux = rec {
      ok = check "ok" "true";
      broken = check "broken" "echo building the frobnicator; echo error: the frobnicator is broken >&2; exit 1";
      dependent = check "dependent" "test -e ${broken}";
      talk = check "talk" "i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo tick $i; sleep 0.3; done";
    };
  };
}
"#;

/// `tests/browser`, once chromium, node and its packages are there; `None`
/// when `KILN_SKIP_BROWSER=1`. Anything missing fails the test.
fn browser_dir() -> Option<PathBuf> {
    if std::env::var("KILN_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: KILN_SKIP_BROWSER=1");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let fix = "run .ci/setup-browser (or set KILN_SKIP_BROWSER=1 to skip this test)";
    let chromium = std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no browser at {chromium}: {fix}"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` does not run: {fix}"
    );
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = std::fs::read_to_string(dir.join("node_modules/.kiln-lock.sha256"));
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "no {}/node_modules/playwright-core: {fix}",
        dir.display()
    );
    assert_eq!(
        stamp.unwrap_or_default().trim(),
        hex::encode(Sha256::digest(&lock)),
        "{}/node_modules is not from the current package-lock.json: {fix}",
        dir.display()
    );
    Some(dir)
}

fn git(dir: &Path, args: &[&str]) -> String {
    sh(Command::new("git")
        .arg("-C")
        .arg(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.org")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.org")
        .args(args))
    .trim()
    .to_owned()
}

/// A work tree with the flake committed on `main`, its bare clone as the
/// remote; returns the remote's `file://` URL and the commit.
fn repository(root: &Path) -> (String, String) {
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("flake.nix"), FLAKE.replace("SALT", &salt())).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "flake.nix"]);
    git(
        &work,
        &["-c", "commit.gpgsign=false", "commit", "-q", "-m", "Checks"],
    );
    let remote = root.join("remote.git");
    sh(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&remote));
    (
        format!("file://{}", remote.display()),
        git(&work, &["rev-parse", "HEAD"]),
    )
}

/// `kiln.toml` for one GitHub project at the stand-in on `port`; the
/// secrets come from the environment [`serve`] sets.
fn config(root: &Path, port: u16) -> PathBuf {
    let github = format!("127.0.0.1:{port}");
    let text = format!(
        r#"serve = {{ url = "http://kiln.test", systems = ["x86_64-linux"], max_jobs = 2, poll_interval_secs = 0 }}
forges.github = {{ plugin = "github", api = "http://{github}", projects = ["{REPO}"], discover = false }}
grants.github = {{ secrets = ["github-webhook-secret", "github-token"], hosts = ["{github}"] }}
secrets.github-webhook-secret.env = "KILN_UI_TEST_WEBHOOK_SECRET"
secrets.github-token.env = "KILN_UI_TEST_GITHUB_TOKEN"
"#
    );
    let path = root.join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `kiln serve` with [`config`], on a free port.
fn serve(root: &Path, port: u16) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config(root, port))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("data"))
        .env("XDG_CACHE_HOME", root.join("cache"))
        .env("KILN_UI_TEST_WEBHOOK_SECRET", SECRET)
        .env("KILN_UI_TEST_GITHUB_TOKEN", TOKEN)
        .env_remove("KILN_DATABASE_URL")
        .stdin(Stdio::null());
    Server::start(cmd, root)
}

/// A push of `rev` to `main` as GitHub signs it.
fn push(server: &Server, clone_url: &str, rev: &str) {
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/github/tests/fixtures/push.json"
    ))
    .unwrap();
    let repo = &mut body["repository"];
    repo["name"] = json!("widget");
    repo["full_name"] = json!(REPO);
    repo["owner"]["login"] = json!("acme");
    repo["clone_url"] = json!(clone_url);
    repo["default_branch"] = json!("main");
    body["ref"] = json!("refs/heads/main");
    body["after"] = json!(rev);
    body["head_commit"]["id"] = json!(rev);
    let body = body.to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (status, answer) = server.webhook("github", "push", "ui-push", &body, &signature);
    assert_eq!(status, 202, "{answer}: {}", server.stderr());
}

fn get_json(server: &Server, path: &str) -> Value {
    serde_json::from_str(&server.get(path)).unwrap()
}

/// Poll the API until `found` returns something.
fn wait_for<T>(server: &Server, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where screenshots go: kept after the test, for CI to collect.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_UI_SCREENSHOTS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ui-screenshots"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// `node run.mjs ARGS`; its stdout, or a panic with all it and Kiln said.
fn node(browser: &Path, args: &[&str], server: &Server) -> String {
    let out = Command::new("node")
        .arg(browser.join("run.mjs"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node run.mjs {args:?}: {}\n{stdout}\n{}\nkiln stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    stdout
}

#[test]
fn a_browser_sees_the_graph_the_logs_live_and_a_refusal_and_fits_a_phone() {
    let Some(browser) = browser_dir() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (clone_url, rev) = repository(root.path());
    let token: &std::ffi::OsStr = TOKEN.as_ref();
    let (mut github, port) = python_server(
        "github.py",
        &["--token".as_ref(), token],
        Some(&root.path().join("github.log")),
    );
    let server = serve(root.path(), port);
    push(&server, &clone_url, &rev);

    // The browser starts while `talk` prints.
    let run = wait_for(&server, "no run", || {
        get_json(&server, "/api/v1/runs")["items"][0]["id"].as_i64()
    });
    let talk = wait_for(&server, "`talk` never ran", || {
        let jobs = get_json(&server, &format!("/api/v1/runs/{run}/jobs"));
        jobs.as_array()?
            .iter()
            .find(|j| j["attr"] == "x86_64-linux.talk" && j["status"] == "running")
            .and_then(|j| j["id"].as_i64())
    });
    let shots = screenshot_dir();
    let out = node(
        &browser,
        &[
            "check",
            &server.url("/"),
            "--run",
            &run.to_string(),
            "--running-job",
            &talk.to_string(),
            "--shots",
            shots.to_str().unwrap(),
        ],
        &server,
    );
    println!("{out}");
    eprintln!("screenshots of the web UI: {}", shots.display());
    let result: Value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));

    let live = &result["live"];
    assert!(live["after"].as_u64() > live["before"].as_u64(), "{live}");
    let page = &result["run_page"];
    assert!(page["state"].as_str().unwrap().contains("failed"), "{page}");
    let statuses: Vec<(&str, &str)> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["attr"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    for expected in [
        ("x86_64-linux.ok", "succeeded"),
        ("x86_64-linux.broken", "failed"),
        ("x86_64-linux.dependent", "dependency_failed"),
        ("x86_64-linux.talk", "succeeded"),
    ] {
        assert!(statuses.contains(&expected), "{expected:?} in {statuses:?}");
    }
    assert_eq!(page["edges"], 1, "dependent → broken: {page}");
    assert!(page["critical"].as_u64() >= Some(1), "{page}");
    assert_eq!(page["filtered"], 1, "{page}");
    let failed = &result["failed_job"];
    assert!(
        failed["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("the frobnicator is broken")),
        "{failed}"
    );
    assert_eq!(result["denied"]["status"], 403);
    for (page, width) in result["phone"].as_object().unwrap() {
        assert!(width.as_u64() <= Some(390), "{page}: {width}");
    }
    // The refused rebuild changed nothing.
    let detail = get_json(&server, &format!("/api/v1/runs/{run}"));
    assert_eq!(detail["run"]["attempts"], 1, "{detail}");
    assert_eq!(detail["run"]["state"], "failed", "{detail}");
    for file in result["files"].as_array().unwrap() {
        let png = std::fs::read(shots.join(file.as_str().unwrap())).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{file} is no PNG");
    }
    assert!(result["files"].as_array().unwrap().len() >= 8, "{result}");

    // The benchmark entry works on this small run (no time asserted).
    let bench = node(
        &browser,
        &[
            "--bench",
            &server.url(&format!("/runs/{run}")),
            "--repeat",
            "1",
        ],
        &server,
    );
    let bench: Value = serde_json::from_str(bench.trim()).unwrap();
    assert_eq!(bench["nodes"], 4, "{bench}");
    assert_eq!(bench["edges"], 1, "{bench}");
    assert!(bench["median"]["graph_ms"].as_f64() > Some(0.0), "{bench}");

    // The other pages, over the same socket, with the same data.
    let project = detail["project"]["id"].as_i64().unwrap();
    let index = server.get("/");
    assert!(
        index.contains(&format!("href=\"/projects/{project}\"")),
        "{index}"
    );
    assert!(index.contains(&format!("href=\"/runs/{run}\"")), "{index}");
    assert!(index.contains("id=\"sign-in\""), "{index}");
    let page = server.get(&format!("/projects/{project}"));
    assert!(
        page.contains(REPO) && page.contains(&format!("href=\"/runs/{run}\"")),
        "{page}"
    );
    assert!(page.contains("status-failed"), "{page}");
    let workers = server.get("/workers");
    assert!(workers.contains("0 of 2 build slots in use"), "{workers}");
    let plugins = server.get("/plugins");
    assert!(
        plugins.contains("github") && plugins.contains("github-token"),
        "{plugins}"
    );
    assert!(plugins.contains("authz-default"), "{plugins}");
    let badge = server.get(&format!("/badge/{REPO}.svg"));
    assert!(
        badge.starts_with("<svg") && badge.contains(">failed<"),
        "{badge}"
    );

    let _ = github.kill();
    let _ = github.wait();
}
