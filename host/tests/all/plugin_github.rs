//! The `github` forge plugin called through the runtime: webhooks signed as
//! GitHub signs them (recorded payloads from `plugins/github/tests/fixtures`),
//! and the REST calls against a loopback server that answers in GitHub's
//! shapes and records each request: commit statuses, a rate limit, the
//! paginated repository listing, and nothing sent to a host not granted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use kiln_runtime::bindings::forge_types::{
    ChangeEvent, Header, PullRequestAction, PullRequestEvent, Repository, StatusReport,
    StatusState, WebhookDisposition, WebhookError, WebhookOutcome, WebhookRequest,
};
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
    body["ref"] = "refs/heads/gh-readonly-queue/main/pr-7-0123abcd".into();
    let ChangeEvent::Push(push) =
        one_event(handle(&rt, &github, &signed("push", &body)).await.unwrap())
    else {
        panic!("not a push")
    };
    assert_eq!(
        push.branch.as_deref(),
        Some("gh-readonly-queue/main/pr-7-0123abcd")
    );
    assert_eq!(push.rev, "f19c884ab35c8d243bf9d857d631a5d4f190079f");
    assert_eq!(push.repository.full_name, "kiln-example/hello-flake");

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

/// A loopback server speaking GitHub's REST shapes: statuses are created
/// (201) unless `rate_limited` (429 with `Retry-After: 7`), and
/// `/user/repos` has two pages linked with `Link: rel="next"`. Every
/// request is sent on the channel.
fn fake_github(rate_limited: bool) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::channel();
    let next = format!("{base}/user/repos?per_page=100&page=2");
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
            let (status, extra, reply) = match (method.as_str(), target.as_str()) {
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
                _ => (404, String::new(), json!({"message": "Not Found"})),
            };
            let reply = reply.to_string();
            // Recorded before answering, so a caller that got its answer finds it.
            let _ = tx.send(Received {
                method,
                target,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (base, rx)
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
