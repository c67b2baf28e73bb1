//! The `gitea` forge plugin called through the runtime: webhooks signed as
//! Gitea and Forgejo sign them (payloads from `plugins/gitea/tests/fixtures`),
//! and the REST calls against a loopback fake Gitea (axum, in Gitea's API
//! shapes under `/api/v1`) that records every request: commit statuses and
//! their state mapping, a rate limit, a refused token, the paginated topic
//! search, and nothing sent to a host not granted.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use kiln_runtime::bindings::forge_types::{
    ChangeEvent, Header, PullRequest, PullRequestAction, PushEvent, Repository, StatusReport,
    StatusState, WebhookDisposition, WebhookError, WebhookOutcome, WebhookRequest,
};
use kiln_runtime::{CallError, Grant, Limits, Plugin, Runtime};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{cfg, context, load, runtime};

const PLUGIN: &str = "kiln-plugin-gitea";
const SECRET: &[u8] = b"gitea webhook secret";
const TOKEN: &str = "gitea_test_token_5f2c";
const PUSH: &str = include_str!("../../../plugins/gitea/tests/fixtures/push.json");
const PULL_REQUEST: &str =
    include_str!("../../../plugins/gitea/tests/fixtures/pull_request_opened.json");
const DELIVERY: &str = "0f1e2d3c-4b5a-4697-8877-665544332211";

/// The hex HMAC-SHA256 of `body` under [`SECRET`], as Gitea's
/// `X-Gitea-Signature` carries it.
fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A delivery with these headers (`X-Gitea-Delivery` added) and `body`.
fn delivery(headers: &[(&str, &str)], body: &[u8]) -> WebhookRequest {
    let headers = [
        ("X-Gitea-Delivery", DELIVERY),
        ("Content-Type", "application/json"),
    ]
    .iter()
    .chain(headers)
    .map(|(name, value)| Header {
        name: (*name).into(),
        value: (*value).into(),
    })
    .collect();
    WebhookRequest {
        method: "POST".into(),
        path: "/".into(),
        headers,
        body: body.to_vec(),
    }
}

/// `body` as Gitea delivers an `event`, signed.
fn signed(event: &str, body: &Value) -> WebhookRequest {
    let body = serde_json::to_vec_pretty(body).unwrap();
    let signature = signature(&body);
    delivery(
        &[
            ("X-Gitea-Event", event),
            ("X-Gitea-Event-Type", event),
            ("X-Gitea-Signature", &signature),
        ],
        &body,
    )
}

async fn handle_with(
    rt: &Runtime,
    gitea: &Plugin,
    request: &WebhookRequest,
    config: &[(&str, &str)],
) -> Result<WebhookOutcome, WebhookError> {
    let grant = Grant {
        secrets: vec!["gitea-webhook-secret".into()],
        ..Grant::default()
    };
    let secrets: &[(&str, &[u8])] = &[("gitea-webhook-secret", SECRET)];
    rt.handle_webhook(
        gitea,
        request,
        &cfg(config),
        context("gitea", grant, secrets, Default::default()),
        Limits::default(),
    )
    .await
    .result
    .unwrap_or_else(|e| panic!("the call failed: {e}"))
}

async fn handle(
    rt: &Runtime,
    gitea: &Plugin,
    request: &WebhookRequest,
) -> Result<WebhookOutcome, WebhookError> {
    handle_with(rt, gitea, request, &[]).await
}

fn one_event(outcome: WebhookOutcome) -> ChangeEvent {
    match outcome.disposition {
        WebhookDisposition::Events(mut events) if events.len() == 1 => events.remove(0),
        other => panic!("not one event: {other:?}"),
    }
}

fn push_event(outcome: WebhookOutcome) -> PushEvent {
    match one_event(outcome) {
        ChangeEvent::Push(push) => push,
        ChangeEvent::PullRequest(pr) => panic!("a pull request: {pr:?}"),
    }
}

fn pull_request(outcome: WebhookOutcome) -> PullRequest {
    match one_event(outcome) {
        ChangeEvent::PullRequest(event) => event.pull_request,
        ChangeEvent::Push(push) => panic!("a push: {push:?}"),
    }
}

fn note(outcome: WebhookOutcome) -> String {
    match outcome.disposition {
        WebhookDisposition::Ignored(note) => note,
        other => panic!("not ignored: {other:?}"),
    }
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_correctly_signed_deliveries_are_accepted() {
    /// Extra headers and the body of a delivery that must be refused.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8]);
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let body = serde_json::to_vec(&fixture(PUSH)).unwrap();
    let good = signature(&body);
    let outcome = handle(
        &rt,
        &gitea,
        &delivery(
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &good)],
            &body,
        ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some(DELIVERY));

    let mut tampered = body.clone();
    tampered[1] ^= 1;
    let wrong = signature(b"another body");
    let cases: [Case; 5] = [
        (&[("X-Gitea-Signature", &wrong)], &body),
        (&[("X-Gitea-Signature", &good)], &tampered),
        (&[], &body),
        (&[("X-Gitea-Signature", "")], &body),
        // GitHub's header alone (Gitea sends it too) is not enough.
        (&[("X-Hub-Signature-256", &format!("sha256={good}"))], &body),
    ];
    for (headers, body) in cases {
        let mut headers = headers.to_vec();
        headers.push(("X-Gitea-Event", "push"));
        let err = handle(&rt, &gitea, &delivery(&headers, body))
            .await
            .unwrap_err();
        assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
    }

    // Signed but not JSON: malformed, not unauthenticated.
    let garbage = b"{\"ref\": ";
    let err = handle(
        &rt,
        &gitea,
        &delivery(
            &[
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Signature", &signature(garbage)),
            ],
            garbage,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, WebhookError::Malformed(m) if m.starts_with("the body is not JSON")),
        "{err:?}"
    );

    // Without the secret granted nothing is accepted.
    let ungranted = rt
        .handle_webhook(
            &gitea,
            &signed("push", &fixture(PUSH)),
            &vec![],
            context("gitea", Grant::default(), &[], Default::default()),
            Limits::default(),
        )
        .await
        .result
        .unwrap();
    assert!(
        matches!(&ungranted, Err(WebhookError::Unauthenticated(m)) if m.contains("gitea-webhook-secret")),
        "{ungranted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_become_push_events_and_deletions_are_ignored() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let mut body = fixture(PUSH);
    let push = push_event(handle(&rt, &gitea, &signed("push", &body)).await.unwrap());
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(push.branch.as_deref(), Some("main"));
    assert_eq!(push.before, "5ed3a0ad4b1cc1e5b7ba6a1f2d3b6c0e7a9e8f41");
    assert_eq!(push.rev, "a4c1f2b09d7e3c5f81b6e0d2c9a7f3e1b5d8c640");
    assert_eq!(
        push.message.as_deref(),
        Some("Add a check for the greeting\n\nIt runs hello and compares its output.\n")
    );
    // Every field of the repository is checked by the plugin's unit tests;
    // here, that they cross the component boundary.
    let repo = &push.repository;
    assert_eq!(
        (repo.full_name.as_str(), repo.default_branch.as_str()),
        ("kiln-example/hello-flake", "main")
    );
    assert_eq!(
        repo.web_url.as_deref(),
        Some("https://gitea.example.org/kiln-example/hello-flake")
    );
    assert_eq!(repo.topics, ["build-with-buildbot", "nix"]);

    body["ref"] = "refs/tags/v1.2.0".into();
    let tag = push_event(handle(&rt, &gitea, &signed("push", &body)).await.unwrap());
    assert_eq!(tag.git_ref, "refs/tags/v1.2.0");
    assert_eq!(tag.branch, None);

    body["ref"] = "refs/heads/old".into();
    body["after"] = "0".repeat(40).into();
    body["head_commit"] = Value::Null;
    body["commits"] = json!([]);
    let outcome = handle(&rt, &gitea, &signed("push", &body)).await.unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some(DELIVERY));
    assert_eq!(
        note(outcome),
        "push deleted refs/heads/old: nothing to build"
    );

    let mut incomplete = fixture(PUSH);
    incomplete["repository"]
        .as_object_mut()
        .unwrap()
        .remove("clone_url");
    let err = handle(&rt, &gitea, &signed("push", &incomplete))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WebhookError::Malformed(m) if m.contains("missing field `clone_url`")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_carry_fork_and_trust() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let mut body = fixture(PULL_REQUEST);
    let pr = pull_request(
        handle(&rt, &gitea, &signed("pull_request", &body))
            .await
            .unwrap(),
    );
    assert_eq!(pr.number, 3);
    assert_eq!(pr.author, "contributor");
    assert!(pr.from_fork);
    assert!(!pr.author_trusted, "a stranger's fork is not trusted");
    assert!(matches!(pr.action, PullRequestAction::Opened));
    assert_eq!(pr.head_rev, "c7e2d95a0f3b48e1a6d2c9f7b3e0a5d8f1c4b297");
    assert_eq!(pr.head_branch, "french");
    assert_eq!(pr.base_branch, "main");
    assert_eq!(
        pr.head_clone_url,
        "https://gitea.example.org/contributor/hello-flake.git"
    );

    // Listed in `trusted_users` (as a TOML list or comma-separated).
    for trusted in [r#"["maintainer","contributor"]"#, "maintainer, Contributor"] {
        let outcome = handle_with(
            &rt,
            &gitea,
            &signed("pull_request", &body),
            &[("trusted_users", trusted)],
        )
        .await
        .unwrap();
        assert!(pull_request(outcome).author_trusted, "{trusted}");
    }

    // The owner, from a branch of the repository itself, pushing more commits.
    body["action"] = "synchronized".into();
    body["pull_request"]["user"]["login"] = "kiln-example".into();
    body["pull_request"]["head"]["repo"] = body["repository"].clone();
    let pr = pull_request(
        handle(&rt, &gitea, &signed("pull_request", &body))
            .await
            .unwrap(),
    );
    assert!(pr.author_trusted);
    assert!(!pr.from_fork);
    assert!(matches!(pr.action, PullRequestAction::Updated));

    body["action"] = "closed".into();
    body["pull_request"]["merged"] = true.into();
    let pr = pull_request(
        handle(&rt, &gitea, &signed("pull_request", &body))
            .await
            .unwrap(),
    );
    assert!(matches!(pr.action, PullRequestAction::Merged));

    body["action"] = "label_updated".into();
    let outcome = handle(&rt, &gitea, &signed("pull_request", &body))
        .await
        .unwrap();
    assert_eq!(
        note(outcome),
        "pull_request action `label_updated` needs no build"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forgejo_headers_and_other_events() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let body = serde_json::to_vec(&fixture(PULL_REQUEST)).unwrap();
    let signature = signature(&body);
    let forgejo = WebhookRequest {
        headers: [
            ("X-Forgejo-Delivery", "forgejo-delivery-9"),
            ("X-Forgejo-Event", "pull_request"),
            ("X-Forgejo-Event-Type", "pull_request"),
            ("X-Forgejo-Signature", signature.as_str()),
        ]
        .iter()
        .map(|(name, value)| Header {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect(),
        ..delivery(&[], &body)
    };
    let outcome = handle(&rt, &gitea, &forgejo).await.unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some("forgejo-delivery-9"));
    assert_eq!(pull_request(outcome).number, 3);

    // Forgejo signed it, but its Gitea header says otherwise: refused.
    let mut mixed = forgejo.clone();
    mixed.headers.push(Header {
        name: "X-Gitea-Signature".into(),
        value: "00".repeat(32),
    });
    let err = handle(&rt, &gitea, &mixed).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");

    for (event, expected) in [
        ("issues", "Gitea event `issues` needs no build"),
        ("release", "Gitea event `release` needs no build"),
        ("delete", "delete: a deleted ref has nothing to build"),
    ] {
        let outcome = handle(&rt, &gitea, &signed(event, &json!({"action": "x"})))
            .await
            .unwrap();
        assert_eq!(note(outcome), expected);
    }
}

/// One request as the fake Gitea received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// Path and query.
    target: String,
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the fake answers `POST …/statuses/…`.
#[derive(Debug, Clone, Copy)]
enum Statuses {
    Created,
    RateLimited,
    Forbidden,
}

#[derive(Clone)]
struct Fake {
    statuses: Statuses,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A Gitea server on loopback: its `http://127.0.0.1:PORT` address and the
/// requests it received.
struct FakeGitea {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeGitea {
    async fn start(statuses: Statuses) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = Fake {
            statuses,
            received: received.clone(),
        };
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A repository as Gitea's API shows it: the pushed fixture's, renamed.
fn repo(id: u64, name: &str, topics: Value, archived: bool) -> Value {
    let mut repo = fixture(PUSH)["repository"].clone();
    repo["id"] = id.into();
    repo["name"] = name.into();
    repo["full_name"] = format!("acme/{name}").into();
    repo["owner"]["login"] = "acme".into();
    repo["owner"]["username"] = "acme".into();
    repo["clone_url"] = format!("https://gitea.example.org/acme/{name}.git").into();
    repo["html_url"] = format!("https://gitea.example.org/acme/{name}").into();
    repo["topics"] = topics;
    repo["archived"] = archived.into();
    repo
}

/// The topic search's pages as a server with `MAX_RESPONSE_ITEMS = 30`
/// sends them (fewer than the 50 asked for, so only its `Link` header says
/// more follow): 30 results then 2, mixing exact matches, prefix matches
/// the search also returns, an archived repository and one whose topics
/// the search left out. Each page comes with its `Link` header.
fn search_page(page: &str) -> Option<(Value, String)> {
    let link = |rel: &[(&str, u32)]| {
        rel.iter()
            .map(|(rel, page)| {
                format!(
                    "<https://gitea.example.org/api/v1/repos/search?limit=30&page={page}&q=build-with-buildbot&topic=true>; rel=\"{rel}\""
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let (data, link): (Vec<Value>, String) = match page {
        "1" => (
            (1..=30)
                .map(|i| match i {
                    1 => repo(i, "widgets", json!(["build-with-buildbot"]), false),
                    2 => repo(i, "untagged-listing", Value::Null, false),
                    3 => repo(i, "old", json!(["build-with-buildbot"]), true),
                    _ => repo(
                        i,
                        &format!("near-{i}"),
                        json!(["build-with-buildbot-legacy"]),
                        false,
                    ),
                })
                .collect(),
            link(&[("next", 2), ("last", 2)]),
        ),
        "2" => (
            vec![
                repo(31, "gadgets", json!(["nix", "build-with-buildbot"]), false),
                // Listed again as results shift between pages.
                repo(1, "widgets", json!(["build-with-buildbot"]), false),
            ],
            link(&[("first", 1), ("prev", 1)]),
        ),
        "3" => (vec![], String::new()),
        _ => return None,
    };
    Some((json!({"ok": true, "data": data}), link))
}

/// A pull request of `acme/widgets` as Gitea's API lists it: the
/// fixture's webhook `pull_request`, renumbered, with head `sha`, from a
/// fork or from the base repository (id 1).
fn listed_pull(number: u64, sha: &str, from_fork: bool) -> Value {
    let mut pr = fixture(PULL_REQUEST)["pull_request"].clone();
    let widgets = repo(1, "widgets", json!(["build-with-buildbot"]), false);
    pr["number"] = number.into();
    pr["html_url"] = format!("https://gitea.example.org/acme/widgets/pulls/{number}").into();
    pr["head"]["sha"] = sha.into();
    pr["base"]["repo"] = widgets.clone();
    pr["base"]["repo_id"] = 1.into();
    if !from_fork {
        pr["head"]["repo"] = widgets;
        pr["head"]["repo_id"] = 1.into();
        pr["user"]["login"] = "acme".into();
    }
    pr
}

/// The open pull requests of `acme/widgets`, two on page 1 (a server with
/// `MAX_RESPONSE_ITEMS = 2`) and one on page 2; `X-Total-Count` says 3.
fn pulls_page(page: &str) -> Option<Value> {
    match page {
        "1" => Some(json!([
            listed_pull(3, &"a".repeat(40), true),
            listed_pull(5, &"b".repeat(40), false),
        ])),
        "2" => Some(json!([listed_pull(8, &"c".repeat(40), true)])),
        _ => None,
    }
}

fn reply(status: StatusCode, headers: &[(&'static str, &str)], body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    response
}

async fn answer(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    fake.received.lock().unwrap().push(Received {
        method: method.to_string(),
        target: target.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let not_found = || reply(StatusCode::NOT_FOUND, &[], json!({"message": "not found"}));
    if method == Method::POST && path.starts_with("/api/v1/repos/") && path.contains("/statuses/") {
        return match fake.statuses {
            Statuses::Created => reply(
                StatusCode::CREATED,
                &[],
                json!({"id": 1, "status": "pending", "context": "kiln/nix-build"}),
            ),
            Statuses::RateLimited => reply(
                StatusCode::TOO_MANY_REQUESTS,
                &[("retry-after", "7")],
                json!({"message": "rate limit exceeded"}),
            ),
            Statuses::Forbidden => reply(
                StatusCode::FORBIDDEN,
                &[],
                json!({"message": "token does not have at least one of required scope(s): [write:repository]"}),
            ),
        };
    }
    if method == Method::GET && path == "/api/v1/repos/search" {
        let expected = "q=build-with-buildbot&topic=true&limit=50&page=";
        let page = query.strip_prefix(expected).and_then(search_page);
        return page.map_or_else(not_found, |(page, link)| {
            let headers = [("link", link.as_str()), ("x-total-count", "32")];
            reply(StatusCode::OK, &headers, page)
        });
    }
    if method == Method::GET && path == "/api/v1/repos/acme/widgets/pulls" {
        let expected = "state=open&page=";
        let page = query
            .strip_prefix(expected)
            .and_then(|rest| rest.strip_suffix("&limit=50"))
            .and_then(pulls_page);
        return page.map_or_else(not_found, |pulls| {
            reply(StatusCode::OK, &[("x-total-count", "3")], pulls)
        });
    }
    if method == Method::GET && path == "/api/v1/repos/acme/untagged-listing/topics" {
        return reply(
            StatusCode::OK,
            &[],
            json!({"topics": ["build-with-buildbot", "flakes"]}),
        );
    }
    not_found()
}

fn rest_context(host: &str, granted: bool) -> kiln_runtime::CallContext {
    let grant = Grant {
        secrets: vec!["gitea-token".into()],
        hosts: if granted {
            vec![host.to_owned()]
        } else {
            vec![]
        },
        ..Grant::default()
    };
    let token = format!("{TOKEN}\n");
    context(
        "gitea",
        grant,
        &[("gitea-token", token.as_bytes())],
        Default::default(),
    )
}

fn report(state: StatusState) -> StatusReport {
    StatusReport {
        repository: Repository {
            full_name: "acme/widgets".into(),
            owner: "acme".into(),
            name: "widgets".into(),
            clone_url: "https://gitea.example.org/acme/widgets.git".into(),
            web_url: None,
            default_branch: "main".into(),
            private: false,
            topics: vec![],
        },
        rev: "c".repeat(40),
        pull_request: Some(3),
        context: "kiln/nix-build".into(),
        state,
        description: format!("2 of 9 checks failed {}\nsecond line", "x".repeat(200)),
        target_url: Some("https://kiln.test/runs/7".into()),
        summary: Some("## Failed\n- checks.x86_64-linux.hello".into()),
        failures: vec![],
    }
}

async fn report_status(
    rt: &Runtime,
    gitea: &Plugin,
    fake: &FakeGitea,
    state: StatusState,
    granted: bool,
) -> Result<(), CallError> {
    rt.report_status(
        gitea,
        &report(state),
        &cfg(&[("url", &fake.url)]),
        rest_context(fake.host(), granted),
        Limits::default(),
    )
    .await
    .result
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_is_posted_to_the_commit_with_the_token() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::Created).await;
    let states = [
        (StatusState::Running, "pending"),
        (StatusState::Failure, "failure"),
        (StatusState::Cancelled, "error"),
        (StatusState::Success, "success"),
    ];
    for (state, _) in states {
        report_status(&rt, &gitea, &fake, state, true)
            .await
            .unwrap();
    }
    let received = fake.received();
    assert_eq!(received.len(), states.len());
    for (request, (_, expected)) in received.iter().zip(states) {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.target,
            format!("/api/v1/repos/acme/widgets/statuses/{}", "c".repeat(40))
        );
        assert_eq!(
            request.header("authorization"),
            Some(format!("token {TOKEN}").as_str())
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["context", "description", "state", "target_url"]);
        assert_eq!(body["state"], expected);
        assert_eq!(body["context"], "kiln/nix-build");
        assert_eq!(body["target_url"], "https://kiln.test/runs/7");
        let description = body["description"].as_str().unwrap();
        assert_eq!(description.chars().count(), 140);
        assert!(description.starts_with("2 of 9 checks failed x") && description.ends_with('…'));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_asks_to_be_retried_after_giteas_wait() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::RateLimited).await;
    let err = report_status(&rt, &gitea, &fake, StatusState::Success, true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::RetryAfter { seconds: 7, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("HTTP 429"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
    assert_eq!(fake.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_a_clear_failure_without_the_token() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::Forbidden).await;
    let err = report_status(&rt, &gitea, &fake, StatusState::Success, true)
        .await
        .unwrap_err();
    let CallError::Failed(message) = &err else {
        panic!("not a failure: {err:?}")
    };
    assert!(
        message.starts_with(&format!(
            "Gitea at {} answered HTTP 403 (forbidden) to post status `kiln/nix-build` on acme/widgets@",
            fake.host()
        )),
        "{message}"
    );
    assert!(message.contains("write:repository"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_reaches_a_host_that_is_not_granted() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::Created).await;
    let err = report_status(&rt, &gitea, &fake, StatusState::Success, false)
        .await
        .unwrap_err();
    let denied = format!("HTTP to host `{}` is not granted", fake.host());
    assert!(err.to_string().contains(&denied), "{err}");
    let listed = rt
        .list_repositories(
            &gitea,
            &cfg(&[("url", &fake.url)]),
            rest_context(fake.host(), false),
            Limits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert!(listed.to_string().contains(&denied), "{listed}");
    assert!(
        fake.received().is_empty(),
        "a denied request reached the server: {:?}",
        fake.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_with_the_topic_are_found_across_pages() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::Created).await;
    let called = rt
        .list_repositories(
            &gitea,
            &cfg(&[("url", &format!("{}/", fake.url))]),
            rest_context(fake.host(), true),
            Limits::default(),
        )
        .await;
    let repositories = called.result.unwrap();
    assert!(
        called
            .log
            .iter()
            .any(|l| l.message == "3 repositories with topic `build-with-buildbot` in 2 pages"),
        "{:?}",
        called.log
    );
    let names: Vec<&str> = repositories.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(
        names,
        ["acme/widgets", "acme/untagged-listing", "acme/gadgets"],
        "{:#?}",
        fake.received()
            .iter()
            .map(|r| &r.target)
            .collect::<Vec<_>>()
    );
    let listing = &repositories[1];
    assert_eq!(listing.topics, ["build-with-buildbot", "flakes"]);
    assert_eq!(listing.owner, "acme");
    assert_eq!(
        listing.clone_url,
        "https://gitea.example.org/acme/untagged-listing.git"
    );
    assert_eq!(repositories[2].topics, ["nix", "build-with-buildbot"]);

    assert_gets_with_the_token(
        &fake,
        &[
            "/api/v1/repos/search?q=build-with-buildbot&topic=true&limit=50&page=1",
            "/api/v1/repos/acme/untagged-listing/topics",
            "/api/v1/repos/search?q=build-with-buildbot&topic=true&limit=50&page=2",
        ],
    );
}

/// The fake received exactly `targets`, each a `GET` with the token.
fn assert_gets_with_the_token(fake: &FakeGitea, targets: &[&str]) {
    let received = fake.received();
    let got: Vec<&str> = received.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(got, targets);
    for request in &received {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.header("authorization"),
            Some(format!("token {TOKEN}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_pull_requests_are_listed_across_pages_as_opened() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let fake = FakeGitea::start(Statuses::Created).await;
    let called = rt
        .list_pull_requests(
            &gitea,
            &report(StatusState::Success).repository,
            &cfg(&[("url", &fake.url), ("trusted_users", "someone-else")]),
            rest_context(fake.host(), true),
            Limits::default(),
        )
        .await;
    let pulls = called.result.unwrap();
    assert!(
        called
            .log
            .iter()
            .any(|l| l.message == "acme/widgets: 3 open pull requests in 2 pages"),
        "{:?}",
        called.log
    );
    let summary: Vec<(u64, &str, bool, bool)> = pulls
        .iter()
        .map(|p| (p.number, p.head_rev.as_str(), p.from_fork, p.author_trusted))
        .collect();
    let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    assert_eq!(
        summary,
        [
            (3, a.as_str(), true, false),
            (5, b.as_str(), false, true),
            (8, c.as_str(), true, false),
        ]
    );
    for pr in &pulls {
        assert!(matches!(pr.action, PullRequestAction::Opened), "{pr:?}");
        assert_eq!(pr.base_branch, "main");
        assert_eq!(pr.title, "Greet in French");
    }
    let forked = &pulls[0];
    assert_eq!(forked.author, "contributor");
    assert_eq!(forked.head_branch, "french");
    assert_eq!(
        forked.head_clone_url,
        "https://gitea.example.org/contributor/hello-flake.git"
    );
    assert_eq!(
        forked.web_url.as_deref(),
        Some("https://gitea.example.org/acme/widgets/pulls/3")
    );
    assert_eq!(pulls[1].author, "acme");
    assert_eq!(
        pulls[1].head_clone_url,
        "https://gitea.example.org/acme/widgets.git"
    );

    assert_gets_with_the_token(
        &fake,
        &[
            "/api/v1/repos/acme/widgets/pulls?state=open&page=1&limit=50",
            "/api/v1/repos/acme/widgets/pulls?state=open&page=2&limit=50",
        ],
    );
}

async fn credentials(
    rt: &Runtime,
    gitea: &Plugin,
    config: &[(&str, &str)],
    clone_url: &str,
) -> Result<kiln_runtime::bindings::forge_types::GitCredentials, CallError> {
    let mut repository = report(StatusState::Success).repository;
    repository.clone_url = clone_url.into();
    rt.clone_credentials(
        gitea,
        &repository,
        &cfg(config),
        rest_context("gitea.example.org", false),
        Limits::default(),
    )
    .await
    .result
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_credentials_are_the_token_for_the_servers_own_urls() {
    let (rt, _d) = runtime();
    let gitea = load(&rt, PLUGIN).await;
    let server = ("url", "https://gitea.example.org");
    let url = "https://gitea.example.org/acme/widgets.git";
    let given = credentials(&rt, &gitea, &[server], url).await.unwrap();
    assert_eq!(given.url, url);
    assert_eq!(given.username.as_deref(), Some("kiln"));
    assert_eq!(given.password.as_deref(), Some(TOKEN));

    let named = credentials(&rt, &gitea, &[server, ("user", "ci-bot")], url)
        .await
        .unwrap();
    assert_eq!(named.username.as_deref(), Some("ci-bot"));

    let elsewhere = "https://elsewhere.example/acme/widgets.git";
    let err = credentials(&rt, &gitea, &[server], elsewhere)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message
            .contains("cloned from elsewhere.example, not from the Gitea server gitea.example.org"),
        "{message}"
    );
    assert!(!message.contains(TOKEN), "{message}");

    let err = credentials(&rt, &gitea, &[], url).await.unwrap_err();
    assert!(err.to_string().contains("`url`"), "{err}");
}
