//! `kiln bench serve`: the `kiln serve` service, three figures.
//!
//! 1. End to end: a flake of fresh salted checks (three quarters
//!    independent, a quarter each depending on one of those) in a git
//!    repository with a bare remote; the real `kiln serve` binary (this
//!    executable) with the first-party `github` plugin pointed at a stand-in
//!    GitHub; one signed push webhook; the time until every status on that
//!    commit is final. The floor, measured in the same run before and
//!    after on two more salted copies (the faster counts): one
//!    `nix eval --json` of every drvPath and one
//!    `nix-store --realise -j MAX_JOBS` of them.
//! 2. Persistence: synthetic job updates (no Nix) recorded as `queued`
//!    the way the runner's writer does (bursts drained from a channel, one
//!    `store::write_jobs` transaction each; once all in one burst, once in
//!    bursts of at most 256) into SQLite, then the run's statuses computed
//!    as the reporter does; wall time and peak RSS, and
//!    `kiln bench scheduler`'s figure for the same job count.
//! 3. `GET /api/v1/runs/{id}` of a finished run of thousands of jobs, from
//!    a second process (`--load-client`, this executable again) holding
//!    keep-alive connections and sending at a fixed rate; p50/p99 latency
//!    and the rate achieved, one-at-a-time latency, and for scale the same
//!    rows read with sqlx, encoded as JSON, and built as JSON by SQLite.
//!
//! The stand-in GitHub is an axum server inside this process rather than
//! `tests/servers/github.py`: the benchmark then runs from an installed
//! binary, with no repository checkout or Python, and the time of each
//! status post is taken where it arrives. Figures are printed, never
//! asserted; a run that does not build what it should is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use clap::Args;
use kiln_engine::job::JobStatus;
use kiln_engine::report::JobReport;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::serve::db::Database;
use crate::serve::pipeline::report::desired;
use crate::serve::pipeline::store::{self, Attach, JobWrite};

const REPO: &str = "bench/widget";
const TOKEN: &str = "ghp_kiln_bench_serve_token";

/// Arguments of `kiln bench serve`.
#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Checks in the end-to-end flake (a quarter depend on another check).
    #[arg(long, default_value_t = 200)]
    checks: usize,
    /// Build slots of `kiln serve` and of the floor's `nix-store -j`.
    #[arg(long, default_value_t = 2)]
    max_jobs: usize,
    /// Job updates recorded by the persistence figure.
    #[arg(long, default_value_t = 50_000)]
    jobs_persist: usize,
    /// Jobs of the run the API figure reads.
    #[arg(long, default_value_t = 5_000)]
    run_jobs: usize,
    /// Requests per second the load client aims for.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// How long the load client sends, in seconds.
    #[arg(long, default_value_t = 10)]
    load_secs: u64,
    /// Keep-alive connections of the load client.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Skip the end-to-end figure.
    #[arg(long)]
    skip_end_to_end: bool,
    /// Skip the persistence figure.
    #[arg(long)]
    skip_persist: bool,
    /// Skip the API figure.
    #[arg(long)]
    skip_load: bool,
    /// Internal: be the load client, sending GETs to this URL, and print
    /// one JSON line of results.
    #[arg(long, hide = true)]
    load_client: Option<String>,
}

/// `kiln bench serve`.
pub fn main(args: ServeBenchArgs) -> ExitCode {
    if let Some(url) = &args.load_client {
        return match load_client(url, &args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kiln bench serve --load-client: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln bench serve: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Persistence first: its peak RSS is then this process's own.
    let figures: [(&str, bool); 3] = [
        ("persist", args.skip_persist),
        ("end to end", args.skip_end_to_end),
        ("api", args.skip_load),
    ];
    let mut failed = false;
    for (name, skip) in figures {
        if skip {
            println!("serve {name}: skipped");
            continue;
        }
        let result = match name {
            "persist" => rt.block_on(persist(&args)),
            "end to end" => end_to_end(&rt, &args),
            _ => rt.block_on(api_load(&args)),
        };
        if let Err(e) = result {
            eprintln!("kiln bench serve: {name}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------
// Shared pieces.

/// Salt making each flake's derivations new to the store.
fn salt(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}-{nanos:x}-{}", std::process::id())
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss
}

fn run_tool(cmd: &mut Command, doing: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{doing}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{doing}: {:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    run_tool(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Kiln bench",
                "-c",
                "user.email=bench@kiln.invalid",
            ])
            .args(["-c", "commit.gpgsign=false"])
            .args(args),
        &format!("git {}", args.first().copied().unwrap_or_default()),
    )
}

/// A repository record in the shape the pipeline stores (`ProjectRow`).
fn repository(clone_url: &str) -> Value {
    let (owner, name) = REPO.split_once('/').unwrap_or(("bench", REPO));
    json!({
        "full_name": REPO,
        "owner": owner,
        "name": name,
        "clone_url": clone_url,
        "default_branch": "main",
        "private": false,
    })
}

/// A `kiln serve` child, killed on drop; stdout and stderr go to files.
pub(super) struct ServeProcess {
    child: Child,
    pub(super) addr: String,
    stderr: PathBuf,
}

impl ServeProcess {
    pub(super) fn start(dir: &Path, config: &Path, data_dir: &Path) -> Result<Self, String> {
        Self::start_with_env(dir, config, data_dir, &[])
    }

    /// Start it with extra environment variables.
    pub(super) fn start_with_env(
        dir: &Path,
        config: &Path,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to run `kiln serve`: {e}"))?;
        let stdout = dir.join("serve.stdout");
        let stderr = dir.join("serve.stderr");
        let file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env_remove("KILN_DATABASE_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot start `kiln serve`: {e}"))?;
        let mut serve = ServeProcess {
            child,
            addr: String::new(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some((first, _)) = text.split_once('\n') {
                serve.addr = first
                    .strip_prefix("kiln serve: listening on http://")
                    .ok_or_else(|| format!("`kiln serve` printed {first:?}, not its address"))?
                    .to_owned();
                return Ok(serve);
            }
            if let Ok(Some(status)) = serve.child.try_wait() {
                return Err(format!(
                    "`kiln serve` exited with {status}: {}",
                    serve.stderr_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`kiln serve` printed no address in 300 s: {}",
                    serve.stderr_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its stderr, for error messages.
    pub(super) fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// 1. End to end.

/// One status the stand-in GitHub accepted.
#[derive(Debug, Clone)]
struct Posted {
    sha: String,
    context: String,
    state: String,
    description: String,
    at: Instant,
}

/// The stand-in GitHub's record.
#[derive(Debug, Default)]
struct StandIn {
    statuses: Mutex<Vec<Posted>>,
    refused: Mutex<Vec<String>>,
}

impl StandIn {
    fn refuse(&self, what: String) -> (StatusCode, axum::Json<Value>) {
        let message = what.clone();
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "message": message })),
        )
    }

    /// The latest status of each context on `sha`.
    fn latest(&self, sha: &str) -> BTreeMap<String, Posted> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.sha == sha)
            .map(|s| (s.context.clone(), s.clone()))
            .collect()
    }
}

/// `POST /repos/{owner}/{repo}/statuses/{sha}`, checked as GitHub does.
async fn post_status(
    State(gh): State<Arc<StandIn>>,
    UrlPath((owner, repo, sha)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        let refused = gh.refuse(format!("{owner}/{repo}: bad credentials"));
        return (StatusCode::UNAUTHORIZED, refused.1);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return gh.refuse(format!("{owner}/{repo}@{sha}: the body is not JSON"));
    };
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let (state, context, description) = (field("state"), field("context"), field("description"));
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return gh.refuse(format!("no commit {sha}"));
    }
    if !["pending", "success", "failure", "error"].contains(&state.as_str())
        || context.is_empty()
        || description.chars().count() > 140
    {
        return gh.refuse(format!("{sha}: invalid status {body}"));
    }
    let mut statuses = gh.statuses.lock().unwrap_or_else(|e| e.into_inner());
    statuses.push(Posted {
        sha: sha.clone(),
        context: context.clone(),
        state: state.clone(),
        description,
        at: Instant::now(),
    });
    let id = statuses.len();
    (
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "state": state, "context": context, "sha": sha })),
    )
}

/// Start the stand-in GitHub on `rt`; returns its record and port.
fn start_stand_in(rt: &tokio::runtime::Runtime) -> Result<(Arc<StandIn>, u16), String> {
    let gh = Arc::new(StandIn::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("cannot bind the stand-in GitHub: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("stand-in GitHub: {e}"))?
        .port();
    let record = gh.clone();
    let app = axum::Router::new()
        .route(
            "/repos/{owner}/{repo}/statuses/{sha}",
            axum::routing::post(post_status),
        )
        .fallback(move |uri: axum::http::Uri| {
            let gh = record.clone();
            async move {
                let refused = gh.refuse(format!("unexpected request {uri}"));
                (StatusCode::NOT_FOUND, refused.1)
            }
        })
        .with_state(gh.clone());
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((gh, port))
}

/// A flake of `checks` salted checks for `system`: `c…` independent, `d…`
/// each depending on one `c…`.
fn write_flake(dir: &Path, system: &str, checks: usize, salt: &str) -> Result<(), String> {
    let dependent = checks / 4;
    let independent = (checks - dependent).max(1);
    let mut attrs = String::new();
    for i in 0..independent {
        attrs.push_str(&format!("        c{i} = mk \"c{i}\" [ ];\n"));
    }
    for i in 0..dependent {
        attrs.push_str(&format!(
            "        d{i} = mk \"d{i}\" [ c{} ];\n",
            i % independent
        ));
    }
    let text = format!(
        "{{\n  outputs = {{ self }}:\n    let\n      mk = name: deps: derivation {{\n        \
         inherit name deps;\n        system = \"{system}\";\n        builder = \"/bin/sh\";\n        \
         args = [ \"-c\" \"echo {salt} ${{name}} > $out\" ];\n      }};\n    in {{\n      \
         checks.{system} = rec {{\n{attrs}      }};\n    }};\n}}\n"
    );
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("flake.nix"), text)
        .map_err(|e| format!("cannot write the benchmark flake in {}: {e}", dir.display()))
}

/// HMAC-SHA256 (RFC 2104), for the webhook signature.
pub(super) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Run a Nix command to completion; its stdout, or an error naming `what`.
async fn nix_output(mut cmd: tokio::process::Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| format!("floor: cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "floor: {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The floor: one `nix eval --json` of every drvPath of `dir`'s checks and
/// one `nix-store --realise -j MAX_JOBS` of them. Returns the derivations.
async fn floor(
    nix: &kiln_nix::Nix,
    dir: &Path,
    system: &str,
    max_jobs: usize,
) -> Result<usize, String> {
    let mut eval = nix.command("nix");
    eval.args(["eval", "--json", "--apply"])
        .arg("cs: map (n: cs.${n}.drvPath) (builtins.attrNames cs)")
        .arg(format!("path:{}#checks.{system}", dir.display()));
    let drvs: Vec<String> = serde_json::from_slice(&nix_output(eval, "nix eval").await?)
        .map_err(|e| format!("floor: nix eval --json printed no list of paths: {e}"))?;
    let mut realise = nix.command("nix-store");
    realise
        .arg("--realise")
        .args(&drvs)
        .args(["-j", &max_jobs.to_string(), "--quiet"]);
    nix_output(realise, "nix-store --realise").await?;
    Ok(drvs.len())
}

fn end_to_end(rt: &tokio::runtime::Runtime, args: &ServeBenchArgs) -> Result<(), String> {
    let checks = args.checks.max(1);
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let dir = tmp.path();
    let nix = rt
        .block_on(kiln_nix::Nix::detect())
        .map_err(|e| format!("Nix: {e}"))?;
    let system = rt
        .block_on(nix.current_system())
        .map_err(|e| format!("Nix: {e}"))?;

    // The project: a work tree and its bare remote.
    let work = dir.join("work");
    let remote = dir.join("remote.git");
    write_flake(&work, &system, checks, &salt("kiln-bench-serve"))?;
    git(&work, &["init", "-q", "-b", "main"])?;
    git(&work, &["add", "flake.nix"])?;
    git(&work, &["commit", "-q", "-m", "Add benchmark checks"])?;
    let rev = git(&work, &["rev-parse", "HEAD"])?;
    run_tool(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&remote),
        "git clone --bare",
    )?;
    let clone_url = format!("file://{}", remote.display());

    // The stand-in GitHub and the service.
    let (gh, port) = start_stand_in(rt)?;
    let secret = format!("bench secret {}", salt("webhook"));
    let file = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    let config = format!(
        "[serve]\nsystems = [\"{system}\"]\nmax_jobs = {max_jobs}\npoll_interval_secs = 0\n\n\
         [forges.github]\nplugin = \"github\"\napi = \"http://127.0.0.1:{port}\"\n\
         projects = [\"{REPO}\"]\ndiscover = false\n\n\
         [grants.github]\nsecrets = [\"github-webhook-secret\", \"github-token\"]\n\
         hosts = [\"127.0.0.1:{port}\"]\n\n\
         [secrets.github-webhook-secret]\nfile = {secret_file:?}\n\n\
         [secrets.github-token]\nfile = {token_file:?}\n",
        max_jobs = args.max_jobs.max(1),
        secret_file = file("webhook-secret", &secret)?.display().to_string(),
        token_file = file("token", TOKEN)?.display().to_string(),
    );
    let config = file("kiln.toml", &config)?;
    eprintln!("starting kiln serve…");
    let serve = ServeProcess::start(dir, &config, &dir.join("data"))?;

    // The floor, on its own salted copy, while the service idles; again
    // after the service's run on a third copy, and the faster counts.
    let max_jobs = args.max_jobs.max(1);
    let measure_floor = |tag: &str| -> Result<Duration, String> {
        eprintln!("measuring the floor ({checks} checks)…");
        let floor_dir = dir.join(tag);
        write_flake(&floor_dir, &system, checks, &salt(tag))?;
        let start = Instant::now();
        let drvs = rt.block_on(floor(&nix, &floor_dir, &system, max_jobs))?;
        if drvs != checks {
            return Err(format!("the floor evaluated {drvs} of {checks} checks"));
        }
        Ok(start.elapsed())
    };
    let floor_before = measure_floor("kiln-bench-floor-a")?;

    // One signed push webhook, then wait for final statuses.
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/github/tests/fixtures/push.json"
    ))
    .map_err(|e| format!("the push fixture is not JSON: {e}"))?;
    let mut repo = body["repository"].clone();
    let (owner, name) = REPO.split_once('/').unwrap_or(("bench", REPO));
    repo["name"] = json!(name);
    repo["full_name"] = json!(REPO);
    repo["owner"]["login"] = json!(owner);
    repo["owner"]["name"] = json!(owner);
    repo["clone_url"] = json!(clone_url);
    repo["default_branch"] = json!("main");
    repo["private"] = json!(false);
    body["ref"] = json!("refs/heads/main");
    body["after"] = json!(rev);
    body["repository"] = repo;
    body["head_commit"]["id"] = json!(rev);
    body["head_commit"]["message"] = json!("Add benchmark checks");
    let body = body.to_string();
    let signature = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body.as_bytes()))
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    eprintln!("sending the push webhook…");
    let start = Instant::now();
    let mut answer = agent
        .post(format!("http://{}/webhooks/github", serve.addr))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", salt("delivery"))
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .map_err(|e| format!("POST /webhooks/github to {}: {e}", serve.addr))?;
    let code = answer.status().as_u16();
    if code != 202 {
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        return Err(format!(
            "kiln serve at {} answered the push webhook with {code}: {text}",
            serve.addr
        ));
    }
    let deadline = start + Duration::from_secs(300 + 3 * checks as u64);
    let latest = loop {
        let latest = gh.latest(&rev);
        let is_final = |c: &str| latest.get(c).is_some_and(|s| s.state != "pending");
        if is_final("kiln/nix-eval")
            && is_final("kiln/nix-build")
            && latest.values().all(|s| s.state != "pending")
        {
            break latest;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no final statuses on {rev} after {:.0} s: {:?}; refused: {:?}; kiln serve: {}",
                start.elapsed().as_secs_f64(),
                latest
                    .values()
                    .map(|s| (&s.context, &s.state))
                    .collect::<Vec<_>>(),
                gh.refused.lock().unwrap_or_else(|e| e.into_inner()),
                serve.stderr_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let end = latest.values().map(|s| s.at).max().unwrap_or(start);
    let kiln = end.duration_since(start);
    let posted = gh.statuses.lock().unwrap_or_else(|e| e.into_inner()).len();
    let first = gh
        .statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first()
        .map(|s| s.at.duration_since(start));
    drop(serve);
    let build = &latest["kiln/nix-build"];
    if build.state != "success" || !build.description.starts_with(&format!("{checks} built")) {
        return Err(format!(
            "kiln serve did not build the {checks} fresh checks: kiln/nix-build is {} ({})",
            build.state, build.description
        ));
    }
    let floor_after = measure_floor("kiln-bench-floor-b")?;
    let floor_time = floor_before.min(floor_after);
    let budget = 1.25 * floor_time.as_secs_f64() + 1.0;
    let k = kiln.as_secs_f64();
    println!(
        "serve end to end: {checks} fresh checks ({} independent, {} dependent), max_jobs {}, \
         one signed push webhook to `kiln serve` (github plugin, in-process stand-in GitHub)",
        checks - checks / 4,
        checks / 4,
        args.max_jobs.max(1)
    );
    println!(
        "  kiln serve, webhook to every status final: {k:.2} s (first status after {:.2} s, \
         {posted} statuses posted; {})",
        first.map_or(0.0, |d| d.as_secs_f64()),
        build.description
    );
    println!(
        "  floor, nix eval --json + nix-store --realise -j {max_jobs}: {:.2} s \
         (the faster of {:.2} s before and {:.2} s after, each on its own salted copy)",
        floor_time.as_secs_f64(),
        floor_before.as_secs_f64(),
        floor_after.as_secs_f64()
    );
    println!(
        "  ratio kiln / floor {:.2}; target ≤ 1.25 × floor + 1 s = {budget:.2} s: {}",
        k / floor_time.as_secs_f64(),
        if k <= budget { "met" } else { "NOT met" }
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Persistence.

/// A project, and a running run of it with one active target, in `db`.
pub(super) async fn running_run(db: &Database, tag: &str) -> Result<(i64, i64), String> {
    let doing = |what: &str, e: sqlx::Error| format!("{what}: {e}");
    let project = store::upsert_project(
        db,
        "github",
        &repository("file:///nonexistent/bench.git"),
        "configured",
    )
    .await
    .map_err(|e| doing("storing the project", e))?;
    let digest = hex::encode(Sha256::digest(salt(tag).as_bytes()));
    let rev = digest[..40].to_owned();
    let attached = store::attach(
        db,
        &Attach {
            project: project.id,
            event: None,
            kind: "push",
            branch: Some("main".into()),
            pull_request: None,
            head_rev: rev.clone(),
            eval_rev: rev,
            tree: digest[24..].to_owned(),
            message: Some(format!("kiln bench serve ({tag})")),
            trusted: true,
            error: None,
        },
    )
    .await
    .map_err(|e| doing("recording the run", e))?;
    let row = store::claim_run(db, attached.run)
        .await
        .map_err(|e| doing("starting the run", e))?
        .ok_or_else(|| format!("run {} was not queued", attached.run))?;
    Ok((row.id, row.attempts))
}

/// A synthetic job as the engine reports it.
pub(super) fn job(system: &str, i: usize, status: JobStatus) -> JobReport {
    let name = format!("job-{i:06}");
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
    let built = status == JobStatus::Succeeded;
    JobReport {
        attr: format!("{system}.{name}"),
        system: system.to_owned(),
        drv_path: Some(format!("/nix/store/{hash}-{name}.drv")),
        outputs: [("out".to_owned(), format!("/nix/store/{hash}-{name}"))].into(),
        status,
        error: None,
        failed_dependency: None,
        attempts: u32::from(built),
        duration_ms: if built { 1200 } else { 0 },
        log_path: None,
        post_build: Vec::new(),
    }
}

/// The runner's writer: drain what is queued (at most `cap` updates, to
/// stand for jobs arriving over time) into one burst, keep the latest
/// update of each job, one `write_jobs` transaction per burst. Returns
/// (transactions, largest burst).
async fn write_bursts(
    db: &Database,
    run: i64,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u32, JobReport)>,
    cap: usize,
) -> Result<(usize, usize), String> {
    let (mut transactions, mut largest) = (0, 0);
    while let Some(first) = rx.recv().await {
        let mut latest: BTreeMap<u32, JobReport> = BTreeMap::new();
        latest.insert(first.0, first.1);
        while latest.len() < cap
            && let Ok((idx, job)) = rx.try_recv()
        {
            latest.insert(idx, job);
        }
        let writes: Vec<JobWrite> = latest
            .into_iter()
            .map(|(idx, job)| JobWrite {
                idx,
                finished_at: job.status.is_final().then(crate::serve::pipeline::now_ms),
                started_at: None,
                job,
            })
            .collect();
        store::write_jobs(db, run, &writes)
            .await
            .map_err(|e| format!("recording {} jobs of run {run}: {e}", writes.len()))?;
        transactions += 1;
        largest = largest.max(writes.len());
    }
    Ok((transactions, largest))
}

/// The reporter's refresh: the run's facts, then each active target's
/// statuses. Returns how many statuses the target shows.
async fn refresh_statuses(db: &Database, run: i64) -> Result<usize, String> {
    let facts = store::run_facts(db, run, 21)
        .await
        .map_err(|e| format!("reading run {run}: {e}"))?
        .ok_or_else(|| format!("run {run} is gone"))?;
    let mut shown = 0;
    for (target, pull_request) in store::active_targets(db, run)
        .await
        .map_err(|e| format!("reading the targets of run {run}: {e}"))?
    {
        let want = desired(&facts, "http://127.0.0.1:8010", 20, pull_request);
        shown += want.len();
        store::upsert_statuses(db, target, &want)
            .await
            .map_err(|e| format!("recording the statuses of run {run}: {e}"))?;
    }
    Ok(shown)
}

/// What one persistence measurement found.
struct Persisted {
    transactions: usize,
    largest: usize,
    persisted: Duration,
    statuses: Duration,
    shown: usize,
}

/// `n` queued jobs through the writer (bursts of at most `cap`) and the
/// status refresh, into a fresh SQLite database.
async fn persist_once(n: usize, cap: usize) -> Result<Persisted, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let db = Database::open(None, &tmp.path().join("kiln.sqlite3"))
        .await
        .map_err(|e| format!("cannot open SQLite in {}: {e}", tmp.path().display()))?;
    let (run, _) = running_run(&db, "persist").await?;
    let jobs: Vec<JobReport> = (0..n)
        .map(|i| job("x86_64-linux", i, JobStatus::Queued))
        .collect();

    let start = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // The engine's side: every job reported as it is evaluated.
    let producer = tokio::spawn(async move {
        for (i, job) in jobs.into_iter().enumerate() {
            if tx.send((i as u32, job)).is_err() {
                break;
            }
            if i % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
        }
    });
    let (transactions, largest) = write_bursts(&db, run, rx, cap).await?;
    producer
        .await
        .map_err(|e| format!("the job producer failed: {e}"))?;
    store::set_evaluated(&db, run, None)
        .await
        .map_err(|e| format!("recording the evaluation of run {run}: {e}"))?;
    let persisted = start.elapsed();
    let shown = refresh_statuses(&db, run).await?;
    let statuses = start.elapsed() - persisted;

    let facts = store::run_facts(&db, run, 0)
        .await
        .map_err(|e| format!("reading run {run}: {e}"))?
        .ok_or_else(|| format!("run {run} is gone"))?;
    let queued = facts.counts.get("queued").copied().unwrap_or(0);
    if queued != n as i64 {
        return Err(format!(
            "{queued} of {n} jobs are recorded as queued: {:?}",
            facts.counts
        ));
    }
    if let Database::Sqlite(pool) = &db {
        pool.close().await;
    }
    Ok(Persisted {
        transactions,
        largest,
        persisted,
        statuses,
        shown,
    })
}

async fn persist(args: &ServeBenchArgs) -> Result<(), String> {
    let n = args.jobs_persist.max(1);
    println!(
        "serve persist: {n} job updates (queued, no Nix) through the runner's burst writer \
         (store::write_jobs) and the reporter's status refresh, SQLite in WAL with synchronous=FULL"
    );
    for (label, cap) in [
        (
            "all at once (the writer drains the whole queue)",
            usize::MAX,
        ),
        ("streamed in bursts of at most 256", 256),
    ] {
        let p = persist_once(n, cap).await?;
        let total = p.persisted + p.statuses;
        println!(
            "  {label}: persisted in {:.2} s ({} transactions, largest {} jobs), {} statuses \
             computed in {:.1} ms; total {:.2} s, target ≤ 5 s: {}",
            p.persisted.as_secs_f64(),
            p.transactions,
            p.largest,
            p.shown,
            p.statuses.as_secs_f64() * 1000.0,
            total.as_secs_f64(),
            if total.as_secs_f64() <= 5.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    println!(
        "  peak RSS of this process {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
    println!("  the engine's scheduler on the same number of jobs (`kiln bench scheduler`):");
    let _ = kiln_engine::bench::scheduler_bench(kiln_engine::bench::SchedulerBenchArgs {
        jobs: vec![n],
        edges_per_job: 10,
        batch: 256,
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. GET /api/v1/runs/{id} under load.

/// Close `db` (from [`scratch_database`]) and start `kiln serve` over its
/// data directory `data`, with a configuration that polls no forge.
pub(super) async fn serve_database(
    db: Database,
    dir: &Path,
    data: &Path,
) -> Result<ServeProcess, String> {
    if let Database::Sqlite(pool) = &db {
        pool.close().await;
    }
    let config = dir.join("kiln.toml");
    std::fs::write(&config, "[serve]\npoll_interval_secs = 0\n")
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    ServeProcess::start(dir, &config, data)
}

/// A temporary directory with a `data/` directory holding a new SQLite
/// database, opened.
pub(super) async fn scratch_database() -> Result<(tempfile::TempDir, PathBuf, Database), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let db = Database::open(None, &data.join("kiln.sqlite3"))
        .await
        .map_err(|e| format!("cannot open SQLite in {}: {e}", data.display()))?;
    Ok((tmp, data, db))
}

async fn api_load(args: &ServeBenchArgs) -> Result<(), String> {
    let n = args.run_jobs.max(1);
    let (tmp, data, db) = scratch_database().await?;
    let (run, attempt) = running_run(&db, "api").await?;
    let writes: Vec<JobWrite> = (0..n)
        .map(|i| JobWrite {
            idx: i as u32,
            job: job("x86_64-linux", i, JobStatus::Succeeded),
            started_at: Some(crate::serve::pipeline::now_ms() - 1200),
            finished_at: Some(crate::serve::pipeline::now_ms()),
        })
        .collect();
    store::write_jobs(&db, run, &writes)
        .await
        .map_err(|e| format!("recording {n} jobs: {e}"))?;
    store::set_evaluated(&db, run, None)
        .await
        .map_err(|e| format!("recording the evaluation: {e}"))?;
    let summary =
        kiln_engine::report::Summary::of(&writes.into_iter().map(|w| w.job).collect::<Vec<_>>());
    let summary = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
    store::finish_run(&db, run, attempt, "succeeded", None, Some(&summary))
        .await
        .map_err(|e| format!("finishing run {run}: {e}"))?;
    let (read, encode, as_json) = read_jobs_as_json(&db, run, n).await?;
    let serve = serve_database(db, tmp.path(), &data).await?;
    let url = format!("http://{}/api/v1/runs/{run}", serve.addr);

    // One read first: the run must come back whole.
    let mut answer = ureq::get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}; kiln serve: {}", serve.stderr_tail()))?;
    let body = answer
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    let detail: Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url} answered no JSON: {e}"))?;
    // The detail counts every job (and lists the failed ones, none here).
    let got: u64 = detail["job_counts"]
        .as_object()
        .map_or(0, |c| c.values().filter_map(Value::as_u64).sum());
    if got != n as u64 {
        return Err(format!("GET {url} counted {got} of {n} jobs"));
    }

    // Unloaded: one request at a time on one keep-alive connection.
    let agent = ureq::Agent::new_with_defaults();
    let mut alone = Vec::new();
    for _ in 0..20 {
        let sent = Instant::now();
        let mut r = agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        std::io::copy(&mut r.body_mut().as_reader(), &mut std::io::sink())
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        alone.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    alone.sort_by(f64::total_cmp);

    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable for the load client: {e}"))?;
    let out = Command::new(exe)
        .args(["bench", "serve", "--load-client", &url])
        .args(["--rate", &args.rate.to_string()])
        .args(["--load-secs", &args.load_secs.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the load client: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the load client exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let r: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the load client printed no JSON: {e}"))?;
    drop(serve);
    println!(
        "serve api: GET /api/v1/runs/{{id}} of a finished run of {n} jobs ({} KiB per answer), \
         {} keep-alive connections from a second process aiming at {} requests/s for {} s",
        body.len() / 1024,
        args.connections,
        args.rate,
        args.load_secs
    );
    println!(
        "  achieved {:.0} requests/s ({} answered 200, {} errors, {} sent late by > 10 ms); \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r["rate"].as_f64().unwrap_or(0.0),
        r["ok"],
        r["errors"],
        r["late"],
        r["p50_ms"].as_f64().unwrap_or(0.0),
        r["p99_ms"].as_f64().unwrap_or(0.0),
        r["max_ms"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  one request at a time on one connection: p50 {:.1} ms, max {:.1} ms (20 requests)",
        alone[alone.len() / 2],
        alone[alone.len() - 1]
    );
    println!(
        "  for scale, in this process: reading the {n} job rows with sqlx {:.1} ms, \
         decoding and writing them as JSON {:.1} ms; SQLite building the same JSON in one row \
         (json_group_array) {:.1} ms",
        read.as_secs_f64() * 1000.0,
        encode.as_secs_f64() * 1000.0,
        as_json.as_secs_f64() * 1000.0
    );
    if let Some(e) = r["first_error"].as_str() {
        println!("  first error: {e}");
    }
    Ok(())
}

/// The work a read of the run's jobs cannot avoid, measured here: its `n`
/// job rows read with sqlx (median of 5), and decoded and written as JSON
/// objects; and the same read as one JSON text that SQLite builds
/// (median of 5). Returns (read, encode, read as JSON).
async fn read_jobs_as_json(
    db: &Database,
    run: i64,
    n: usize,
) -> Result<(Duration, Duration, Duration), String> {
    use sqlx::Row as _;
    let Database::Sqlite(pool) = db else {
        return Err("the API figure needs SQLite".into());
    };
    let mut reads = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        rows = sqlx::query("SELECT * FROM jobs WHERE run_id = $1 ORDER BY idx")
            .bind(run)
            .fetch_all(pool)
            .await
            .map_err(|e| format!("reading the jobs of run {run}: {e}"))?;
        reads.push(start.elapsed());
    }
    if rows.len() != n {
        return Err(format!("run {run} has {} of {n} jobs", rows.len()));
    }
    reads.sort();
    let start = Instant::now();
    let objects: Vec<Value> = rows
        .iter()
        .map(|r| {
            let int = |c: &str| r.try_get::<Option<i64>, _>(c).ok().flatten();
            let text = |c: &str| r.try_get::<Option<String>, _>(c).ok().flatten();
            let mut o = serde_json::Map::new();
            for c in ["id", "run_id", "idx", "attempts", "duration_ms"] {
                o.insert(c.into(), json!(int(c)));
            }
            for c in ["started_at", "finished_at"] {
                o.insert(c.into(), json!(int(c)));
            }
            for c in ["attr", "system", "drv_path", "status", "error"] {
                o.insert(c.into(), json!(text(c)));
            }
            for c in ["failed_dependency", "log_path", "post_build"] {
                o.insert(c.into(), json!(text(c)));
            }
            let outputs = text("outputs").unwrap_or_default();
            o.insert(
                "outputs".into(),
                serde_json::from_str(&outputs).unwrap_or(Value::Null),
            );
            Value::Object(o)
        })
        .collect();
    let text = serde_json::to_vec(&objects).map_err(|e| e.to_string())?;
    let encode = start.elapsed();
    std::hint::black_box(text);

    // The same rows as one JSON text built by SQLite: one row crosses sqlx.
    let mut whole = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let text: String = sqlx::query_scalar(
            "SELECT json_group_array(json_object('id', id, 'run_id', run_id, 'idx', idx, \
             'attr', attr, 'system', system, 'drv_path', drv_path, 'status', status, \
             'error', error, 'failed_dependency', failed_dependency, 'attempts', attempts, \
             'duration_ms', duration_ms, 'started_at', started_at, 'finished_at', finished_at, \
             'log_path', log_path, 'post_build', json(post_build), 'outputs', json(outputs))) \
             FROM (SELECT * FROM jobs WHERE run_id = $1 ORDER BY idx)",
        )
        .bind(run)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("reading the jobs of run {run} as JSON: {e}"))?;
        whole.push(start.elapsed());
        std::hint::black_box(text);
    }
    whole.sort();
    Ok((reads[reads.len() / 2], encode, whole[whole.len() / 2]))
}

/// The load client: `connections` threads, each with its own keep-alive
/// connection, take request slots spaced `1 / rate` apart and send each at
/// its time (or at once when behind). Latency is from send to the last
/// byte of the answer. Returns one JSON line.
fn load_client(url: &str, args: &ServeBenchArgs) -> Result<String, String> {
    let rate = args.rate.max(1);
    let window = Duration::from_secs(args.load_secs.max(1));
    let total = rate * window.as_secs();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (next, url) = (next.clone(), url.to_owned());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let mut lat = Vec::new();
                let (mut errors, mut late, mut first_error) = (0u64, 0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    // Slots not reached when the window closes are not sent.
                    if i >= total || start.elapsed() >= window {
                        break;
                    }
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else if now - due > Duration::from_millis(10) {
                        late += 1;
                    }
                    let sent = Instant::now();
                    let outcome =
                        agent
                            .get(&url)
                            .call()
                            .map_err(|e| e.to_string())
                            .and_then(|mut r| {
                                let code = r.status().as_u16();
                                std::io::copy(&mut r.body_mut().as_reader(), &mut std::io::sink())
                                    .map_err(|e| e.to_string())?;
                                if code == 200 {
                                    Ok(())
                                } else {
                                    Err(format!("status {code}"))
                                }
                            });
                    match outcome {
                        Ok(()) => lat.push(sent.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (lat, errors, late, first_error)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let (mut errors, mut late, mut first_error) = (0, 0, None);
    for t in threads {
        let (l, e, la, fe) = t.join().map_err(|_| "a load thread panicked")?;
        lat.extend(l);
        errors += e;
        late += la;
        first_error = first_error.or(fe);
    }
    let elapsed = start.elapsed();
    lat.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let pct = |p: f64| ms(lat.get(((lat.len() as f64 - 1.0) * p).round().max(0.0) as usize));
    Ok(json!({
        "ok": lat.len(),
        "errors": errors,
        "late": late,
        "rate": lat.len() as f64 / elapsed.as_secs_f64(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": ms(lat.last()),
        "first_error": first_error,
    })
    .to_string())
}
