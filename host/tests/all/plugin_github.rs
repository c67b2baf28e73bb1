//! The `github` forge plugin called through the runtime: webhooks signed as
//! GitHub signs them (recorded payloads from `plugins/github/tests/fixtures`),
//! and the REST calls against a loopback server that answers in GitHub's
//! shapes and records each request: commit statuses, a rate limit, the
//! paginated repository listing, and nothing sent to a host not granted.
//! In GitHub App mode the server verifies the App's JWT (signature, `iss`,
//! expiry) and mints installation tokens; the tests share one kv between
//! calls, as the service does, to see tokens reused, renewed and replaced,
//! check runs created once then patched, and an installation's rate limits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_runtime::bindings::forge_types::{
    ChangeEvent, Header, PullRequestAction, PullRequestEvent, Repository, StatusReport,
    StatusState, WebhookDisposition, WebhookError, WebhookOutcome, WebhookRequest,
};
use kiln_runtime::context::KvStore;
use kiln_runtime::{CallError, Grant, Limits, Plugin, Runtime};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{cfg, context, load, runtime};

const PLUGIN: &str = "kiln-plugin-github";
const SECRET: &[u8] = b"github webhook secret";
const TOKEN: &str = "ghp_test_token";
const PUSH: &str = include_str!("../../../plugins/github/tests/fixtures/push.json");
const PULL_REQUEST: &str =
    include_str!("../../../plugins/github/tests/fixtures/pull_request_opened.json");

/// `sha256=` and the HMAC-SHA256 (RFC 2104, key shorter than a block) of
/// `body` under [`SECRET`], as GitHub's `X-Hub-Signature-256`.
fn signature(body: &[u8]) -> String {
    let pad = |byte: u8| {
        SECRET
            .iter()
            .chain([0; 64].iter())
            .take(64)
            .map(move |k| k ^ byte)
    };
    let inner = Sha256::digest([pad(0x36).collect(), body.to_vec()].concat());
    let outer = Sha256::digest([pad(0x5c).collect(), inner.to_vec()].concat());
    format!("sha256={}", hex::encode(outer))
}

fn delivery(event: &str, body: &[u8], signature: Option<String>) -> WebhookRequest {
    let mut headers = vec![
        ("X-GitHub-Event", event.to_owned()),
        ("X-GitHub-Delivery", format!("{event}-delivery")),
        ("Content-Type", "application/json".to_owned()),
    ];
    if let Some(signature) = signature {
        headers.push(("X-Hub-Signature-256", signature));
    }
    WebhookRequest {
        method: "POST".into(),
        path: "/".into(),
        headers: headers
            .into_iter()
            .map(|(name, value)| Header {
                name: name.into(),
                value,
            })
            .collect(),
        body: body.to_vec(),
    }
}

fn signed(event: &str, body: &Value) -> WebhookRequest {
    let body = serde_json::to_vec(body).unwrap();
    delivery(event, &body, Some(signature(&body)))
}

async fn handle(
    rt: &Runtime,
    github: &Plugin,
    request: &WebhookRequest,
) -> Result<WebhookOutcome, WebhookError> {
    let grant = Grant {
        secrets: vec!["github-webhook-secret".into()],
        ..Grant::default()
    };
    let secrets: &[(&str, &[u8])] = &[("github-webhook-secret", SECRET)];
    rt.handle_webhook(
        github,
        request,
        &vec![],
        context("github", grant, secrets, Default::default()),
        Limits::default(),
    )
    .await
    .result
    .unwrap_or_else(|e| panic!("the call failed: {e}"))
}

fn one_event(outcome: WebhookOutcome) -> ChangeEvent {
    match outcome.disposition {
        WebhookDisposition::Events(mut events) if events.len() == 1 => events.remove(0),
        other => panic!("not one event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_correctly_signed_deliveries_are_accepted() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let body = serde_json::to_vec(&serde_json::from_str::<Value>(PUSH).unwrap()).unwrap();
    let outcome = handle(
        &rt,
        &github,
        &delivery("push", &body, Some(signature(&body))),
    )
    .await
    .unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some("push-delivery"));

    let mut tampered = body.clone();
    tampered[1] ^= 1;
    let wrong = signature(b"another body");
    for request in [
        delivery("push", &body, Some(wrong)),
        delivery("push", &tampered, Some(signature(&body))),
        delivery("push", &body, None),
    ] {
        let err = handle(&rt, &github, &request).await.unwrap_err();
        assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
    }
    // Signed but not JSON: malformed, not unauthenticated.
    let garbage = b"{not json";
    let err = handle(
        &rt,
        &github,
        &delivery("push", garbage, Some(signature(garbage))),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_become_push_events_and_deletions_are_ignored() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let mut body: Value = serde_json::from_str(PUSH).unwrap();
    // Merge queue branches (GitHub's, and bors' `staging` and `trying`) are
    // branch pushes like any other.
    for branch in ["gh-readonly-queue/main/pr-7-0123abcd", "staging", "trying"] {
        body["ref"] = format!("refs/heads/{branch}").into();
        let ChangeEvent::Push(push) =
            one_event(handle(&rt, &github, &signed("push", &body)).await.unwrap())
        else {
            panic!("not a push")
        };
        assert_eq!(push.branch.as_deref(), Some(branch));
        assert_eq!(push.git_ref, format!("refs/heads/{branch}"));
        assert_eq!(push.rev, "f19c884ab35c8d243bf9d857d631a5d4f190079f");
        assert_eq!(push.repository.full_name, "kiln-example/hello-flake");
    }

    body["deleted"] = true.into();
    let outcome = handle(&rt, &github, &signed("push", &body)).await.unwrap();
    assert!(
        matches!(&outcome.disposition, WebhookDisposition::Ignored(note) if note.contains("deleted")),
        "{:?}",
        outcome.disposition
    );
    let outcome = handle(
        &rt,
        &github,
        &signed("ping", &json!({"zen": "Keep it logically awesome."})),
    )
    .await
    .unwrap();
    assert!(matches!(
        outcome.disposition,
        WebhookDisposition::Ignored(_)
    ));
}

async fn pull_request(rt: &Runtime, github: &Plugin, body: &Value) -> PullRequestEvent {
    let outcome = handle(rt, github, &signed("pull_request", body)).await;
    match one_event(outcome.unwrap()) {
        ChangeEvent::PullRequest(event) => event,
        ChangeEvent::Push(push) => panic!("a push: {push:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_carry_fork_and_trust() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let mut body: Value = serde_json::from_str(PULL_REQUEST).unwrap();
    let event = pull_request(&rt, &github, &body).await;
    assert!(event.pull_request.author_trusted, "the owner is trusted");
    assert!(!event.pull_request.from_fork);
    assert!(matches!(
        event.pull_request.action,
        PullRequestAction::Opened
    ));

    body["action"] = "synchronize".into();
    body["pull_request"]["author_association"] = "CONTRIBUTOR".into();
    body["pull_request"]["user"]["login"] = "mallory".into();
    body["pull_request"]["head"]["repo"]["id"] = 4242.into();
    let event = pull_request(&rt, &github, &body).await;
    let pr = event.pull_request;
    assert_eq!(pr.author, "mallory");
    assert!(!pr.author_trusted);
    assert!(pr.from_fork);
    assert!(matches!(pr.action, PullRequestAction::Updated));
    assert_eq!(pr.number, 2);
    assert_eq!(pr.base_branch, "trunk");
}

/// One request as the fake GitHub received it.
#[derive(Debug)]
struct Received {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A loopback server that answers each request with what `answer` returns
/// for it (status, extra header lines, JSON body); `answer` gets the
/// server's base URL too. Every request is sent on the channel before it
/// is answered, so a caller that got its answer finds it there.
fn serve(
    mut answer: impl FnMut(&str, &Received) -> (u16, String, Value) + Send + 'static,
) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::channel();
    let server_base = base.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
                }
            }
            let length = headers
                .get("content-length")
                .map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let received = Received {
                method,
                target,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, extra, reply) = answer(&server_base, &received);
            let reply = reply.to_string();
            let _ = tx.send(received);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (base, rx)
}

/// A loopback server speaking GitHub's REST shapes for a personal token:
/// statuses are created (201) unless `rate_limited` (429 with
/// `Retry-After: 7`), and `/user/repos` has two pages linked with
/// `Link: rel="next"`.
fn fake_github(rate_limited: bool) -> (String, mpsc::Receiver<Received>) {
    serve(move |base, request| {
        let next = format!("{base}/user/repos?per_page=100&page=2");
        match (request.method.as_str(), request.target.as_str()) {
            ("POST", t) if t.contains("/statuses/") && rate_limited => (
                429,
                "retry-after: 7\r\n".to_owned(),
                json!({"message": "slow down"}),
            ),
            ("POST", t) if t.contains("/statuses/") => (201, String::new(), json!({"id": 1})),
            ("GET", "/user/repos?per_page=100") => (
                200,
                format!("link: <{next}>; rel=\"next\", <{next}>; rel=\"last\"\r\n"),
                json!([
                    repo("acme", "widgets", &["build-with-buildbot"]),
                    repo("acme", "docs", &[])
                ]),
            ),
            ("GET", "/user/repos?per_page=100&page=2") => (
                200,
                String::new(),
                json!([repo("acme", "gadgets", &["nix", "build-with-buildbot"])]),
            ),
            _ => not_found(),
        }
    })
}

fn not_found() -> (u16, String, Value) {
    (404, String::new(), json!({"message": "Not Found"}))
}

/// A repository as `GET /user/repos` returns it: the recorded pull
/// request's repository, renamed.
fn repo(owner: &str, name: &str, topics: &[&str]) -> Value {
    let recorded: Value = serde_json::from_str(PULL_REQUEST).unwrap();
    let mut repo = recorded["repository"].clone();
    repo["name"] = name.into();
    repo["full_name"] = format!("{owner}/{name}").into();
    repo["owner"]["login"] = owner.into();
    repo["clone_url"] = format!("https://github.com/{owner}/{name}.git").into();
    repo["topics"] = json!(topics);
    repo
}

fn rest_context(base: &str, granted: bool) -> kiln_runtime::CallContext {
    let grant = Grant {
        secrets: vec!["github-token".into()],
        hosts: if granted {
            vec![base.trim_start_matches("http://").to_owned()]
        } else {
            vec![]
        },
        ..Grant::default()
    };
    let token = format!("{TOKEN}\n");
    context(
        "github",
        grant,
        &[("github-token", token.as_bytes())],
        Default::default(),
    )
}

fn report() -> StatusReport {
    StatusReport {
        repository: Repository {
            full_name: "acme/widgets".into(),
            owner: "acme".into(),
            name: "widgets".into(),
            clone_url: "https://github.com/acme/widgets.git".into(),
            web_url: None,
            default_branch: "main".into(),
            private: false,
            topics: vec![],
        },
        rev: "c".repeat(40),
        pull_request: Some(42),
        context: "kiln/nix-build".into(),
        state: StatusState::Failure,
        description: format!("2 of 9 checks failed {}\nsecond line", "x".repeat(200)),
        target_url: Some("https://kiln.test/runs/7".into()),
        summary: None,
        failures: vec![],
    }
}

async fn report_status(
    rt: &Runtime,
    github: &Plugin,
    base: &str,
    granted: bool,
) -> Result<(), CallError> {
    rt.report_status(
        github,
        &report(),
        &cfg(&[("api", base)]),
        rest_context(base, granted),
        Limits::default(),
    )
    .await
    .result
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_is_posted_to_the_commit_with_githubs_headers() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let (base, received) = fake_github(false);
    report_status(&rt, &github, &base, true).await.unwrap();
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        format!("/repos/acme/widgets/statuses/{}", "c".repeat(40))
    );
    let header = |name: &str| request.headers.get(name).map(String::as_str);
    assert_eq!(header("authorization"), Some("Bearer ghp_test_token"));
    assert_eq!(header("user-agent"), Some("kiln"));
    assert_eq!(header("accept"), Some("application/vnd.github+json"));
    assert_eq!(header("x-github-api-version"), Some("2022-11-28"));
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["state"], "failure");
    assert_eq!(body["context"], "kiln/nix-build");
    assert_eq!(body["target_url"], "https://kiln.test/runs/7");
    let description = body["description"].as_str().unwrap();
    assert_eq!(description.chars().count(), 140);
    assert!(description.starts_with("2 of 9 checks failed x") && description.ends_with('…'));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_status_asks_to_be_retried_after_githubs_wait() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let (base, received) = fake_github(true);
    let err = report_status(&rt, &github, &base, true).await.unwrap_err();
    assert!(
        matches!(err, CallError::RetryAfter { seconds: 7, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rate-limits"), "{err}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
    received.recv_timeout(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_reaches_a_host_that_is_not_granted() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let (base, received) = fake_github(false);
    let err = report_status(&rt, &github, &base, false).await.unwrap_err();
    let host = base.trim_start_matches("http://");
    assert!(
        err.to_string()
            .contains(&format!("HTTP to host `{host}` is not granted")),
        "{err}"
    );
    let listed = rt
        .list_repositories(
            &github,
            &cfg(&[("api", &base)]),
            rest_context(&base, false),
            Limits::default(),
        )
        .await;
    assert!(listed.result.is_err());
    assert!(
        received.recv_timeout(Duration::from_millis(300)).is_err(),
        "a denied request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_with_the_topic_are_listed_across_pages() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let (base, received) = fake_github(false);
    let repositories = rt
        .list_repositories(
            &github,
            &cfg(&[("api", &base)]),
            rest_context(&base, true),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    let names: Vec<&str> = repositories.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(names, ["acme/widgets", "acme/gadgets"]);
    assert_eq!(
        repositories[1].clone_url,
        "https://github.com/acme/gadgets.git"
    );
    assert_eq!(repositories[1].topics, ["nix", "build-with-buildbot"]);
    let targets: Vec<String> = received.try_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/user/repos?per_page=100",
            "/user/repos?per_page=100&page=2"
        ]
    );

    let docs = rt
        .list_repositories(
            &github,
            &cfg(&[("api", &base), ("topic", "nix")]),
            rest_context(&base, true),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].full_name, "acme/gadgets");
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_credentials_are_the_token_as_x_access_token() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let credentials = rt
        .clone_credentials(
            &github,
            &report().repository,
            &vec![],
            rest_context("http://127.0.0.1:1", false),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    assert_eq!(credentials.url, "https://github.com/acme/widgets.git");
    assert_eq!(credentials.username.as_deref(), Some("x-access-token"));
    assert_eq!(credentials.password.as_deref(), Some(TOKEN));
}

// GitHub App mode: a fake GitHub that verifies the App's JWT (RS256 with
// the App's public key, through `openssl dgst -verify`, plus `iss` and the
// expiry window), mints installation tokens with a chosen lifetime, and
// accepts only live installation tokens.

/// The App's id as configured.
const APP_ID: u64 = 4242;
/// The installation on `acme`.
const INSTALLATION: u64 = 77;
const COMMIT: &str = "cccccccccccccccccccccccccccccccccccccccc";

/// An RSA key pair made with openssl: the private key in PKCS#1 PEM (as
/// GitHub hands out App keys) and the public key's file.
struct AppKey {
    dir: tempfile::TempDir,
    private: Vec<u8>,
}

impl AppKey {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("app.pem");
        crate::common::sh(
            std::process::Command::new("openssl")
                .args(["genrsa", "-traditional", "-out"])
                .arg(&private)
                .arg("2048"),
        );
        crate::common::sh(
            std::process::Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(dir.path().join("app.pub.pem")),
        );
        let private = std::fs::read(&private).unwrap();
        Self { dir, private }
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("app.pub.pem")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Base64url without padding, as JWTs use it.
fn base64url(text: &str) -> Result<Vec<u8>, String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("`{}` is not base64url", c as char)),
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Ok(out)
}

/// Checks an `Authorization` header carrying the App's JWT as GitHub does:
/// an RS256 signature by the App's key, `iss` the App, issued at most
/// ten minutes before it expires and valid now.
fn verify_jwt(authorization: Option<&String>, public: &Path) -> Result<(), String> {
    let jwt = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .ok_or("no `Authorization: Bearer` header")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("{} parts, not 3", parts.len()));
    };
    let json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&base64url(part)?).map_err(|e| e.to_string())
    };
    let header = json(header)?;
    if header["alg"] != "RS256" {
        return Err(format!("alg is {}", header["alg"]));
    }
    let dir = tempfile::tempdir().unwrap();
    let (input, sig) = (dir.path().join("input"), dir.path().join("sig"));
    std::fs::write(&input, &jwt[..jwt.rfind('.').unwrap()]).unwrap();
    std::fs::write(&sig, base64url(signature)?).unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&sig)
        .arg(&input)
        .output()
        .unwrap();
    if !verified.status.success() {
        return Err(format!(
            "the RS256 signature does not verify: {}",
            String::from_utf8_lossy(&verified.stdout).trim()
        ));
    }
    let claims = json(claims)?;
    if claims["iss"] != APP_ID {
        return Err(format!("iss is {}", claims["iss"]));
    }
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("no iat")?,
        claims["exp"].as_u64().ok_or("no exp")?,
    );
    let now = unix_now();
    if !(now - 65..=now - 55).contains(&iat) {
        return Err(format!("iat is {iat}, not a minute before {now}"));
    }
    if exp <= now || exp - iat > 600 {
        return Err(format!("exp {exp} is not within ten minutes of iat {iat}"));
    }
    Ok(())
}

/// The UTC time of Unix second `t` as GitHub writes it.
fn iso(t: u64) -> String {
    crate::common::sh(
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ", "-d"])
            .arg(format!("@{t}")),
    )
    .trim()
    .to_owned()
}

/// How the fake App server rate-limits statuses.
#[derive(Clone, Copy, PartialEq)]
enum Limit {
    None,
    /// 403 with a body about a secondary rate limit and no headers.
    Secondary,
    /// 403 with `x-ratelimit-remaining: 0` and a reset two minutes ahead.
    Primary,
}

/// What the fake App server does and has seen.
struct AppState {
    /// The lifetime of the tokens it mints, seconds.
    token_life: u64,
    /// Every token minted: (token, installation, expiry).
    minted: Vec<(String, u64, u64)>,
    /// Tokens refused from now on.
    revoked: Vec<String>,
    /// Why JWTs were refused.
    jwt_errors: Vec<String>,
    /// Check runs created: (id, name).
    check_runs: Vec<(u64, String)>,
    limit: Limit,
}

type Shared = Arc<Mutex<AppState>>;

/// The installation a live token belongs to.
fn installation_of(state: &AppState, request: &Received) -> Option<u64> {
    let token = request.headers.get("authorization")?;
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("token "))?;
    let now = unix_now();
    state
        .minted
        .iter()
        .find(|(t, _, exp)| t == token && *exp > now && !state.revoked.contains(t))
        .map(|(_, installation, _)| *installation)
}

/// A loopback GitHub for an App installed on `acme` (installation 77, two
/// pages of repositories) and `beta` (79, on the second page of
/// installations), with a suspended installation (78) between them.
fn fake_app(key: &AppKey) -> (String, mpsc::Receiver<Received>, Shared) {
    let state = Arc::new(Mutex::new(AppState {
        token_life: 3600,
        minted: Vec::new(),
        revoked: Vec::new(),
        jwt_errors: Vec::new(),
        check_runs: Vec::new(),
        limit: Limit::None,
    }));
    let shared = state.clone();
    let public = key.public();
    let (base, rx) = serve(move |base, request| {
        let mut state = state.lock().unwrap();
        let target = request.target.as_str();
        let jwt = || verify_jwt(request.headers.get("authorization"), &public);
        let refused = |why: String, state: &mut AppState| {
            state.jwt_errors.push(why);
            (
                401,
                String::new(),
                json!({"message": "A JSON web token could not be decoded"}),
            )
        };
        let unauthorized = || (401, String::new(), json!({"message": "Bad credentials"}));
        let installation = installation_of(&state, request);
        match (request.method.as_str(), target) {
            ("GET", "/repos/acme/widgets/installation" | "/repos/acme/gadgets/installation") => {
                match jwt() {
                    Ok(()) => (
                        200,
                        String::new(),
                        json!({"id": INSTALLATION, "account": {"login": "acme"}}),
                    ),
                    Err(why) => refused(why, &mut state),
                }
            }
            ("POST", t)
                if t.starts_with("/app/installations/") && t.ends_with("/access_tokens") =>
            {
                if let Err(why) = jwt() {
                    return refused(why, &mut state);
                }
                let id: u64 = t["/app/installations/".len()..t.len() - "/access_tokens".len()]
                    .parse()
                    .unwrap();
                let token = format!("ghs_{}", state.minted.len() + 1);
                let expires = unix_now() + state.token_life;
                state.minted.push((token.clone(), id, expires));
                (
                    201,
                    String::new(),
                    json!({"token": token, "expires_at": iso(expires), "permissions": {"checks": "write"}}),
                )
            }
            ("GET", "/app/installations?per_page=100") => match jwt() {
                Ok(()) => (
                    200,
                    format!(
                        "link: <{base}/app/installations?per_page=100&page=2>; rel=\"next\"\r\n"
                    ),
                    json!([
                        {"id": INSTALLATION, "account": {"login": "acme"}, "suspended_at": null},
                        {"id": 78, "account": {"login": "gone"}, "suspended_at": "2026-01-01T00:00:00Z"},
                    ]),
                ),
                Err(why) => refused(why, &mut state),
            },
            ("GET", "/app/installations?per_page=100&page=2") => match jwt() {
                Ok(()) => (
                    200,
                    String::new(),
                    json!([{"id": 79, "account": {"login": "beta"}}]),
                ),
                Err(why) => refused(why, &mut state),
            },
            ("GET", t) if t.starts_with("/installation/repositories") => {
                let page2 = format!("{base}/installation/repositories?per_page=100&page=2");
                match (installation, t.ends_with("page=2")) {
                    (Some(INSTALLATION), false) => (
                        200,
                        format!("link: <{page2}>; rel=\"next\"\r\n"),
                        json!({"total_count": 3, "repositories": [
                            repo("acme", "widgets", &["build-with-buildbot"]),
                            repo("acme", "docs", &[]),
                        ]}),
                    ),
                    (Some(INSTALLATION), true) => (
                        200,
                        String::new(),
                        json!({"total_count": 3, "repositories": [
                            repo("acme", "gadgets", &["build-with-buildbot"]),
                        ]}),
                    ),
                    (Some(79), false) => (
                        200,
                        String::new(),
                        json!({"total_count": 1, "repositories": [
                            repo("beta", "tools", &["build-with-buildbot"]),
                        ]}),
                    ),
                    _ => unauthorized(),
                }
            }
            _ if !target.starts_with("/repos/acme/") => not_found(),
            _ if installation != Some(INSTALLATION) => unauthorized(),
            ("POST", t) if t.contains("/statuses/") => match state.limit {
                Limit::None => (201, String::new(), json!({"id": 1})),
                Limit::Secondary => (
                    403,
                    String::new(),
                    json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
                ),
                Limit::Primary => (
                    403,
                    format!(
                        "x-ratelimit-remaining: 0\r\nx-ratelimit-reset: {}\r\n",
                        unix_now() + 120
                    ),
                    json!({"message": "API rate limit exceeded for installation ID 77."}),
                ),
            },
            ("POST", "/repos/acme/widgets/check-runs") => {
                let id = state.check_runs.len() as u64 + 1;
                let body: Value = serde_json::from_str(&request.body).unwrap();
                state
                    .check_runs
                    .push((id, body["name"].as_str().unwrap().to_owned()));
                (201, String::new(), json!({"id": id, "name": body["name"]}))
            }
            ("PATCH", t) if t.starts_with("/repos/acme/widgets/check-runs/") => {
                let id: u64 = t.rsplit('/').next().unwrap().parse().unwrap();
                if state.check_runs.iter().any(|(known, _)| *known == id) {
                    (200, String::new(), json!({"id": id}))
                } else {
                    not_found()
                }
            }
            _ => not_found(),
        }
    });
    (base, rx, shared)
}

/// A context for App mode with `key` as the App's key, sharing `kv`
/// between calls as the service does.
fn app_context(base: &str, key: &[u8], kv: &Arc<KvStore>) -> kiln_runtime::CallContext {
    let grant = Grant {
        secrets: vec!["github-app-private-key".into()],
        hosts: vec![base.trim_start_matches("http://").to_owned()],
        kv: true,
        ..Grant::default()
    };
    context(
        "github",
        grant,
        &[("github-app-private-key", key)],
        kv.clone(),
    )
}

fn app_config(base: &str, report: &str) -> Vec<(String, String)> {
    cfg(&[
        ("api", base),
        ("app_id", &APP_ID.to_string()),
        ("report", report),
    ])
}

fn description(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "queued",
        StatusState::Running => "building",
        StatusState::Success => "all built",
        StatusState::Failure | StatusState::Error => "failed",
        StatusState::Cancelled => "cancelled",
    }
}

/// A report on acme/widgets at [`COMMIT`] in `state` for `context`.
fn app_report(context: &str, state: StatusState) -> StatusReport {
    let mut report = report();
    report.rev = COMMIT.into();
    report.context = context.into();
    report.state = state;
    report.description = format!("{context}: {}", description(state));
    report
}

/// One App-mode test: the plugin loaded, the fake GitHub with the App's
/// key, and one kv shared by all calls, as the service shares it.
struct AppTest {
    rt: Runtime,
    _dir: tempfile::TempDir,
    github: Plugin,
    key: AppKey,
    base: String,
    received: mpsc::Receiver<Received>,
    state: Shared,
    kv: Arc<KvStore>,
}

impl AppTest {
    async fn new() -> Self {
        let (rt, dir) = runtime();
        let github = load(&rt, PLUGIN).await;
        let key = AppKey::new();
        let (base, received, state) = fake_app(&key);
        Self {
            rt,
            _dir: dir,
            github,
            key,
            base,
            received,
            state,
            kv: Arc::new(KvStore::default()),
        }
    }

    /// Reports `report` as `kind` (`statuses` or `checks`).
    async fn report(&self, kind: &str, report: &StatusReport) -> Result<(), CallError> {
        self.report_with_key(&self.key.private, kind, report).await
    }

    /// Reports `report` with `key` as the App's key.
    async fn report_with_key(
        &self,
        key: &[u8],
        kind: &str,
        report: &StatusReport,
    ) -> Result<(), CallError> {
        self.rt
            .report_status(
                &self.github,
                report,
                &app_config(&self.base, kind),
                app_context(&self.base, key, &self.kv),
                Limits::default(),
            )
            .await
            .result
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.state.lock().unwrap()
    }
}

/// The method and target of each request received so far.
fn requests(received: &mpsc::Receiver<Received>) -> Vec<(String, String)> {
    received.try_iter().map(|r| (r.method, r.target)).collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(m, t)| ((*m).to_owned(), (*t).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_reports_with_one_installation_token_while_it_lives() {
    let t = AppTest::new().await;
    let status = format!("/repos/acme/widgets/statuses/{COMMIT}");
    let report = app_report("kiln/nix-build", StatusState::Success);

    t.report("statuses", &report).await.unwrap();
    let first: Vec<Received> = t.received.try_iter().collect();
    let targets: Vec<(&str, &str)> = first
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        targets,
        [
            ("GET", "/repos/acme/widgets/installation"),
            ("POST", "/app/installations/77/access_tokens"),
            ("POST", status.as_str()),
        ]
    );
    assert_eq!(
        first[2].headers.get("authorization").map(String::as_str),
        Some("Bearer ghs_1")
    );
    let body: Value = serde_json::from_str(&first[2].body).unwrap();
    assert_eq!(body["state"], "success");
    assert_eq!(body["context"], "kiln/nix-build");

    // A second report in the token's life: no lookup, no new token.
    t.report("statuses", &report).await.unwrap();
    assert_eq!(requests(&t.received), pairs(&[("POST", &status)]));
    {
        let state = t.state();
        assert_eq!(state.minted.len(), 1);
        assert!(state.jwt_errors.is_empty(), "{:?}", state.jwt_errors);
    }

    // Clone credentials are the same token, reusable while it lives.
    let credentials =
        t.rt.clone_credentials(
            &t.github,
            &report.repository,
            &app_config(&t.base, "statuses"),
            app_context(&t.base, &t.key.private, &t.kv),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    assert_eq!(credentials.username.as_deref(), Some("x-access-token"));
    assert_eq!(credentials.password.as_deref(), Some("ghs_1"));
    let valid = credentials.valid_for_seconds.unwrap();
    assert!((3400..=3540).contains(&valid), "{valid}");
    assert!(
        requests(&t.received).is_empty(),
        "clone credentials asked GitHub"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_renewed_and_a_refused_one_replaced_once() {
    let t = AppTest::new().await;
    let status = format!("/repos/acme/widgets/statuses/{COMMIT}");
    let report = app_report("kiln/nix-build", StatusState::Running);
    let mint = ("POST", "/app/installations/77/access_tokens");

    // Usable for two or three seconds past the five minutes kept in hand.
    t.state().token_life = 303;
    t.report("statuses", &report).await.unwrap();
    assert_eq!(requests(&t.received).len(), 3);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    t.state().token_life = 3600;
    t.report("statuses", &report).await.unwrap();
    assert_eq!(requests(&t.received), pairs(&[mint, ("POST", &status)]));

    // GitHub revokes the cached token: it is dropped and replaced, once.
    t.state().revoked.push("ghs_2".into());
    t.report("statuses", &report).await.unwrap();
    let seen: Vec<Received> = t.received.try_iter().collect();
    let auth: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| {
            let a = r.headers.get("authorization").map_or("", String::as_str);
            (
                r.target.as_str(),
                a.strip_prefix("Bearer ").unwrap_or("JWT?"),
            )
        })
        .collect();
    assert_eq!(auth.len(), 3, "{auth:?}");
    assert_eq!(auth[0], (status.as_str(), "ghs_2"));
    assert_eq!(auth[1].0, mint.1);
    assert_eq!(auth[2], (status.as_str(), "ghs_3"));

    // A new token GitHub refuses too is an error, not a loop.
    t.state().revoked.push("ghs_3".into());
    t.state().revoked.push("ghs_4".into());
    let err = t.report("statuses", &report).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert!(
        err.to_string().contains("uninstalled or suspended"),
        "{err}"
    );
    assert!(!err.to_string().contains("ghs_"), "{err}");
    assert_eq!(requests(&t.received).len(), 3);
    let state = t.state();
    assert_eq!(state.minted.len(), 4);
    assert!(state.jwt_errors.is_empty(), "{:?}", state.jwt_errors);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_signed_with_another_key_is_refused() {
    let t = AppTest::new().await;
    let other = AppKey::new();
    let report = app_report("kiln/nix-build", StatusState::Pending);
    let err = t
        .report_with_key(&other.private, "statuses", &report)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(message.contains("`github-app-private-key`"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    assert_eq!(
        requests(&t.received),
        pairs(&[("GET", "/repos/acme/widgets/installation")])
    );
    let errors = t.state().jwt_errors.clone();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("does not verify"), "{errors:?}");

    let err = t
        .report_with_key(b"not a key", "statuses", &report)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("secret `github-app-private-key` is not a PEM RSA private key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_runs_are_created_once_then_patched() {
    let t = AppTest::new().await;
    // Reports `report` and returns the check-run requests it made (the
    // first report also finds the installation and mints its token).
    let send = async |report: StatusReport| {
        t.report("checks", &report).await.unwrap();
        let seen: Vec<Received> = t
            .received
            .try_iter()
            .filter(|r| r.target.contains("/check-runs"))
            .collect();
        seen
    };
    let build = "kiln/nix-build";

    let queued = send(app_report(build, StatusState::Pending)).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].method.as_str(), queued[0].target.as_str()),
        ("POST", "/repos/acme/widgets/check-runs")
    );
    let body: Value = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(body["name"], build);
    assert_eq!(body["head_sha"], COMMIT);
    assert_eq!(body["status"], "queued");
    assert_eq!(body["details_url"], "https://kiln.test/runs/7");
    assert_eq!(body["output"]["title"], "kiln/nix-build: queued");
    assert_eq!(body["output"]["summary"], "kiln/nix-build: queued");
    assert!(body.get("conclusion").is_none());
    assert_eq!(
        queued[0].headers.get("authorization").map(String::as_str),
        Some("Bearer ghs_1")
    );

    let running = send(app_report(build, StatusState::Running)).await;
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].method.as_str(), running[0].target.as_str()),
        ("PATCH", "/repos/acme/widgets/check-runs/1")
    );
    let body: Value = serde_json::from_str(&running[0].body).unwrap();
    assert_eq!(body["status"], "in_progress");
    assert!(body.get("head_sha").is_none());

    let mut failed = app_report(build, StatusState::Failure);
    failed.summary = Some("**1 of 3 failed**".into());
    let done = send(failed).await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].method.as_str(), done[0].target.as_str()),
        ("PATCH", "/repos/acme/widgets/check-runs/1")
    );
    let body: Value = serde_json::from_str(&done[0].body).unwrap();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["conclusion"], "failure");
    assert_eq!(body["output"]["summary"], "**1 of 3 failed**");

    // Another context is another run; a rebuild of a finished one is new too.
    let other = send(app_report(
        "kiln/check/x86_64-linux.hello",
        StatusState::Running,
    ))
    .await;
    assert_eq!(
        (other[0].method.as_str(), other[0].target.as_str()),
        ("POST", "/repos/acme/widgets/check-runs")
    );
    let rebuild = send(app_report(build, StatusState::Running)).await;
    assert_eq!(
        (rebuild[0].method.as_str(), rebuild[0].target.as_str()),
        ("POST", "/repos/acme/widgets/check-runs")
    );
    let cancelled = send(app_report(build, StatusState::Cancelled)).await;
    assert_eq!(cancelled[0].target, "/repos/acme/widgets/check-runs/3");
    let body: Value = serde_json::from_str(&cancelled[0].body).unwrap();
    assert_eq!(body["conclusion"], "cancelled");

    let state = t.state();
    let names: Vec<&str> = state.check_runs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, [build, "kiln/check/x86_64-linux.hello", build]);
    assert_eq!(state.minted.len(), 1, "one token for all of them");
    assert!(state.jwt_errors.is_empty(), "{:?}", state.jwt_errors);
}

#[tokio::test(flavor = "multi_thread")]
async fn app_mode_without_the_kv_grant_says_so_before_asking_github() {
    let t = AppTest::new().await;
    let mut context = app_context(&t.base, &t.key.private, &t.kv);
    context.grant = Arc::new(Grant {
        kv: false,
        ..(*context.grant).clone()
    });
    let err =
        t.rt.report_status(
            &t.github,
            &app_report("kiln/nix-build", StatusState::Running),
            &app_config(&t.base, "statuses"),
            context,
            Limits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert!(
        err.to_string().contains("grant this plugin `kv = true`"),
        "{err}"
    );
    assert!(requests(&t.received).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_runs_without_an_app_are_a_config_error() {
    let (rt, _d) = runtime();
    let github = load(&rt, PLUGIN).await;
    let (base, received) = fake_github(false);
    let err = rt
        .report_status(
            &github,
            &report(),
            &cfg(&[("api", &base), ("report", "checks")]),
            rest_context(&base, true),
            Limits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`report = \"checks\"` needs GitHub App mode"),
        "{err}"
    );
    assert!(received.recv_timeout(Duration::from_millis(300)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_of_an_app_ask_to_retry_after_githubs_wait() {
    let t = AppTest::new().await;
    let report = app_report("kiln/nix-build", StatusState::Success);

    t.state().limit = Limit::Secondary;
    let err = t.report("statuses", &report).await.unwrap_err();
    assert!(
        matches!(err, CallError::RetryAfter { seconds: 60, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("secondary rate limit"), "{err}");
    assert!(
        err.to_string()
            .contains("rate-limits this App installation"),
        "{err}"
    );

    t.state().limit = Limit::Primary;
    let err = t.report("statuses", &report).await.unwrap_err();
    let CallError::RetryAfter { seconds, .. } = err else {
        panic!("not retry-after: {err:?}")
    };
    assert!((115..=120).contains(&seconds), "{seconds}");
    assert!(t.received.try_iter().count() >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_discovers_repositories_across_installations_and_pages() {
    let t = AppTest::new().await;
    let repositories =
        t.rt.list_repositories(
            &t.github,
            &app_config(&t.base, "statuses"),
            app_context(&t.base, &t.key.private, &t.kv),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    let names: Vec<&str> = repositories.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(names, ["acme/widgets", "acme/gadgets", "beta/tools"]);
    assert_eq!(
        requests(&t.received),
        pairs(&[
            ("GET", "/app/installations?per_page=100"),
            ("GET", "/app/installations?per_page=100&page=2"),
            ("POST", "/app/installations/77/access_tokens"),
            ("GET", "/installation/repositories?per_page=100"),
            ("GET", "/installation/repositories?per_page=100&page=2"),
            ("POST", "/app/installations/79/access_tokens"),
            ("GET", "/installation/repositories?per_page=100"),
        ])
    );
    assert!(t.state().jwt_errors.is_empty());

    // Discovery remembered the installation and its token.
    let mut report = app_report("kiln/nix-build", StatusState::Success);
    report.repository = repositories[1].clone();
    t.report("statuses", &report).await.unwrap();
    assert_eq!(
        requests(&t.received),
        pairs(&[("POST", &format!("/repos/acme/gadgets/statuses/{COMMIT}"))])
    );
}
