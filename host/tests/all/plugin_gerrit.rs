//! The `gerrit` forge plugin called through the runtime: webhooks as
//! Gerrit's `webhooks` plugin posts them (recorded shapes in
//! `plugins/gerrit/tests/fixtures`), authenticated by the token in the
//! path, and a loopback server that answers Gerrit's REST API with its
//! `)]}'` prefix and records each request: the change read again (REST
//! wins over the webhook), the Verified review, discovery and failures.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use kiln_runtime::bindings::forge_types::{
    ChangeEvent, FailedJob, Header, PullRequestAction, Repository, StatusReport, StatusState,
    WebhookDisposition, WebhookError, WebhookOutcome, WebhookRequest,
};
use kiln_runtime::context::KvStore;
use kiln_runtime::{CallError, Grant, Limits, Plugin, Runtime};
use serde_json::{Value, json};

use crate::common::{cfg, context, load, runtime};

const PLUGIN: &str = "kiln-plugin-gerrit";
const TOKEN: &str = "Zm9vYmFyLXRva2VuLWZvci1nZXJyaXQ";
const USERNAME: &str = "kiln-bot";
const PASSWORD: &str = "gerrit-http-password";
/// `Basic ` and base64 of `kiln-bot:gerrit-http-password`.
const BASIC: &str = "Basic a2lsbi1ib3Q6Z2Vycml0LWh0dHAtcGFzc3dvcmQ=";
const PATCHSET: &str = include_str!("../../../plugins/gerrit/tests/fixtures/patchset-created.json");
const REF_UPDATED: &str = include_str!("../../../plugins/gerrit/tests/fixtures/ref-updated.json");
const ABANDONED: &str =
    include_str!("../../../plugins/gerrit/tests/fixtures/change-abandoned.json");
/// REST's view of change 1234: patchset 3 is current, not the webhook's 2.
const CHANGE: &str = include_str!("../../../plugins/gerrit/tests/fixtures/change.json");
const CURRENT: &str = "7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";
/// The revision the branch update moved `main` to.
const PUSHED: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
const PUSHED_COMMIT_PATH: &str =
    "/a/projects/infra%2Fhello-flake/commits/9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
const CHANGE_PATH: &str =
    "/a/changes/infra%2Fhello-flake~1234?o=CURRENT_REVISION&o=CURRENT_COMMIT&o=DETAILED_ACCOUNTS";
/// The first two pages of the open changes of `infra/hello-flake`.
const OPEN_CHANGES_0: &str = "/a/changes/?q=status:open+project:infra%2Fhello-flake&o=CURRENT_REVISION&o=DETAILED_ACCOUNTS&S=0";
const OPEN_CHANGES_2: &str = "/a/changes/?q=status:open+project:infra%2Fhello-flake&o=CURRENT_REVISION&o=DETAILED_ACCOUNTS&S=2";

/// One request as the fake Gerrit received it.
#[derive(Debug)]
struct Received {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// How the fake Gerrit answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As Gerrit does.
    Normal,
    /// Everything 503 with `Retry-After: 12`.
    Down,
    /// Reviews refused with 403.
    Forbidden,
}

#[derive(Clone)]
struct FakeState {
    mode: Mode,
    received: mpsc::Sender<Received>,
}

/// A loopback server speaking Gerrit's REST shapes, every JSON answer
/// behind `)]}'` (see [`route`]). Every request is sent on the channel before it
/// is answered.
async fn fake_gerrit(mode: Mode) -> (String, mpsc::Receiver<Received>) {
    let (received, rx) = mpsc::channel();
    let app = axum::Router::new()
        .fallback(gerrit_answers)
        .with_state(FakeState { mode, received });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, rx)
}

async fn gerrit_answers(
    State(fake): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A server sees the origin form: the path and the query.
    let target = uri.to_string();
    let (status, text) = route(fake.mode, method.as_str(), &target);
    let _ = fake.received.send(Received {
        method: method.to_string(),
        target,
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    // JSON answers start with the line against script inclusion; errors
    // are plain text.
    let (content_type, body) = if status == 200 {
        ("application/json; charset=utf-8", format!(")]}}'\n{text}"))
    } else {
        ("text/plain; charset=utf-8", text)
    };
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", content_type)],
        body,
    )
        .into_response();
    if fake.mode == Mode::Down {
        response
            .headers_mut()
            .insert("retry-after", "12".parse().unwrap());
    }
    response
}

/// Gerrit's answer to `method target`: change 1234 of `infra/hello-flake`
/// (patchset 3 current, owner `ada` in group `nix-maintainers`), the
/// project's HEAD `trunk` (others' `main`), reviews, and two pages of
/// projects.
fn route(mode: Mode, method: &str, target: &str) -> (u16, String) {
    let review = format!("/a/changes/infra%2Fhello-flake~1234/revisions/{CURRENT}/review");
    match (mode, method, target) {
        (Mode::Down, _, _) => (503, "Service Unavailable".into()),
        (Mode::Forbidden, "POST", t) if t == review => {
            (403, "Applying label \"Verified\": -1 is restricted".into())
        }
        (_, "POST", t) if t == review => (200, json!({"labels": {}}).to_string()),
        (_, "POST", t) if t.starts_with("/a/changes/infra%2Fhello-flake~77/") => {
            (409, "change is abandoned".into())
        }
        (_, "GET", CHANGE_PATH) => (200, CHANGE.to_owned()),
        (_, "GET", "/a/projects/infra%2Fhello-flake/HEAD") => (200, "\"refs/heads/trunk\"".into()),
        (_, "GET", t) if t.starts_with("/a/projects/") && t.ends_with("/HEAD") => {
            (200, "\"refs/heads/main\"".into())
        }
        (_, "GET", PUSHED_COMMIT_PATH) => (
            200,
            json!({
                "commit": PUSHED,
                "parents": [{"commit": "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796"}],
                "subject": "flake.lock: update nixpkgs",
                "message": "flake.lock: update nixpkgs\n\nChange-Id: I0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b\n"
            })
            .to_string(),
        ),
        (_, "GET", OPEN_CHANGES_0) => {
            // Change 1234 and one by another owner, then more on page 2.
            let mut other = fixture(CHANGE);
            other["_number"] = 1240.into();
            other["owner"] = json!({"_account_id": 1000077, "username": "grace"});
            other["current_revision"] = "b".repeat(40).into();
            other["revisions"] = json!({
                "b".repeat(40): {"_number": 1, "ref": "refs/changes/40/1240/1", "kind": "REWORK"}
            });
            other["_more_changes"] = true.into();
            (200, json!([fixture(CHANGE), other]).to_string())
        }
        (_, "GET", OPEN_CHANGES_2) => {
            let mut third = fixture(CHANGE);
            third["_number"] = 1301.into();
            third["branch"] = "release".into();
            third["current_revision"] = "c".repeat(40).into();
            third["revisions"] = json!({
                "c".repeat(40): {"_number": 2, "ref": "refs/changes/01/1301/2", "kind": "REWORK"}
            });
            (200, json!([third]).to_string())
        }
        (_, "GET", "/a/accounts/1000077/groups") => (
            200,
            json!([{"id": "global%3ARegistered-Users", "name": "Registered Users"}]).to_string(),
        ),
        (_, "GET", "/a/accounts/1000042/groups") => (
            200,
            json!([
                {"id": "global%3ARegistered-Users", "name": "Registered Users"},
                {"id": "4fd2c8a9e7b1", "name": "nix-maintainers", "owner": "Administrators"}
            ])
            .to_string(),
        ),
        (_, "GET", "/a/projects/?d&type=CODE&state=ACTIVE&n=500&S=0") => (
            200,
            json!({
                "infra/hello-flake": {"id": "infra%2Fhello-flake", "state": "ACTIVE",
                    "description": "Hello, flake. [build-with-buildbot]"},
                "infra/docs": {"id": "infra%2Fdocs", "state": "ACTIVE",
                    "description": "Documentation", "_more_projects": true}
            })
            .to_string(),
        ),
        (_, "GET", "/a/projects/?d&type=CODE&state=ACTIVE&n=500&S=500") => (
            200,
            json!({"tools": {"id": "tools", "state": "ACTIVE"}}).to_string(),
        ),
        _ => (404, "Not found".into()),
    }
}

/// A base URL where nothing listens.
fn nothing_listening() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn gerrit_context(base: &str) -> kiln_runtime::CallContext {
    gerrit_context_with(base, Arc::default())
}

/// [`gerrit_context`] with the kv store `kv`, kept across calls.
fn gerrit_context_with(base: &str, kv: Arc<KvStore>) -> kiln_runtime::CallContext {
    let grant = Grant {
        secrets: vec![
            "gerrit-webhook-token".into(),
            "gerrit-username".into(),
            "gerrit-password".into(),
        ],
        hosts: vec![base.trim_start_matches("http://").to_owned()],
        kv: true,
        ..Grant::default()
    };
    let token = format!("{TOKEN}\n");
    context(
        "gerrit",
        grant,
        &[
            ("gerrit-webhook-token", token.as_bytes()),
            ("gerrit-username", USERNAME.as_bytes()),
            ("gerrit-password", PASSWORD.as_bytes()),
        ],
        kv,
    )
}

/// The plugin's settings: `pairs` and `url = base`.
fn settings(base: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut settings = cfg(pairs);
    settings.push(("url".into(), base.into()));
    settings
}

fn webhook(path: &str, body: &[u8]) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: path.into(),
        headers: vec![Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        }],
        body: body.to_vec(),
    }
}

fn json_webhook(body: &Value) -> WebhookRequest {
    webhook(&format!("/{TOKEN}"), &serde_json::to_vec(body).unwrap())
}

async fn handle(
    rt: &Runtime,
    gerrit: &Plugin,
    base: &str,
    config: &[(&str, &str)],
    request: &WebhookRequest,
) -> Result<WebhookOutcome, WebhookError> {
    let called = rt
        .handle_webhook(
            gerrit,
            request,
            &settings(base, config),
            gerrit_context(base),
            Limits::default(),
        )
        .await;
    let log: Vec<String> = called.log.iter().map(|l| format!("{l:?}")).collect();
    assert!(
        !log.iter()
            .any(|l| l.contains(PASSWORD) || l.contains(TOKEN)),
        "a secret was logged: {log:?}"
    );
    called
        .result
        .unwrap_or_else(|e| panic!("the call failed: {e}"))
}

/// The one event `outcome` asks to build, or the note it was ignored with.
fn event_or_note(outcome: WebhookOutcome) -> Result<ChangeEvent, String> {
    assert_eq!(outcome.delivery, None, "Gerrit sends no delivery id");
    let mut events = match outcome.disposition {
        WebhookDisposition::Ignored(note) => return Err(note),
        WebhookDisposition::Events(events) => events,
    };
    assert_eq!(events.len(), 1, "{events:?}");
    Ok(events.remove(0))
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patchset_is_built_as_rest_shows_it_not_as_the_webhook_says() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    // The webhook names patchset 2, another owner and branch; REST says
    // patchset 3 is current, owned by `ada`, on `main`.
    let mut body = fixture(PATCHSET);
    body["change"]["owner"]["username"] = "mallory".into();
    body["change"]["branch"] = "release".into();
    let outcome = handle(
        &rt,
        &gerrit,
        &base,
        &[("trusted_group", "nix-maintainers")],
        &json_webhook(&body),
    )
    .await
    .unwrap();
    let ChangeEvent::PullRequest(event) = event_or_note(outcome).unwrap() else {
        panic!("not a pull request")
    };
    let pr = &event.pull_request;
    assert_eq!(pr.number, 1234);
    assert_eq!(pr.head_rev, CURRENT);
    assert_eq!(pr.head_branch, "refs/changes/34/1234/3");
    assert_eq!(pr.base_branch, "main");
    assert_eq!(pr.author, "ada");
    assert!(pr.author_trusted, "ada is in nix-maintainers");
    assert!(!pr.from_fork);
    assert_eq!(pr.action, PullRequestAction::Updated);
    assert_eq!(pr.title, "hello: build with the new stdenv");
    assert_eq!(
        pr.web_url.as_deref(),
        Some(format!("{base}/c/infra/hello-flake/+/1234").as_str())
    );
    assert_eq!(pr.head_clone_url, format!("{base}/infra/hello-flake"));
    let repo = &event.repository;
    assert_eq!(repo.full_name, "infra/hello-flake");
    assert_eq!(
        (repo.owner.as_str(), repo.name.as_str()),
        ("infra", "hello-flake")
    );
    assert_eq!(repo.default_branch, "trunk", "from the project's HEAD");
    assert!(
        event
            .message
            .as_deref()
            .unwrap()
            .contains("Change-Id: I8e2f")
    );

    let requests: Vec<Received> = received.try_iter().collect();
    let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            CHANGE_PATH,
            "/a/projects/infra%2Fhello-flake/HEAD",
            "/a/accounts/1000042/groups"
        ]
    );
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.headers.get("authorization").map(String::as_str),
            Some(BASIC)
        );
    }

    // A group is named by name or by UUID (shown URL-encoded); membership
    // of another group is no trust.
    for (group, trusted) in [("global:Registered-Users", true), ("Administrators", false)] {
        let outcome = handle(
            &rt,
            &gerrit,
            &base,
            &[("trusted_group", group), ("default_branch", "main")],
            &json_webhook(&fixture(PATCHSET)),
        )
        .await;
        let ChangeEvent::PullRequest(event) = event_or_note(outcome.unwrap()).unwrap() else {
            panic!("not a pull request")
        };
        assert_eq!(event.pull_request.author_trusted, trusted, "{group}");
    }
    received.try_iter().for_each(drop);

    // Without `trusted_group` nobody is trusted, and groups are not asked;
    // a configured default branch spares the HEAD request.
    let outcome = handle(
        &rt,
        &gerrit,
        &base,
        &[
            ("default_branch", "main"),
            ("git_url", &format!("{base}/a")),
        ],
        &json_webhook(&fixture(PATCHSET)),
    )
    .await
    .unwrap();
    let ChangeEvent::PullRequest(event) = event_or_note(outcome).unwrap() else {
        panic!("not a pull request")
    };
    assert!(!event.pull_request.author_trusted);
    assert_eq!(event.repository.default_branch, "main");
    assert_eq!(
        event.repository.clone_url,
        format!("{base}/a/infra/hello-flake")
    );
    let targets: Vec<String> = received.try_iter().map(|r| r.target).collect();
    assert_eq!(targets, [CHANGE_PATH]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_token_is_refused_before_anything_else() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let body = PATCHSET.as_bytes();
    for path in [
        "/".to_owned(),
        String::new(),
        format!("/{}", &TOKEN[..TOKEN.len() - 1]),
        format!("/{TOKEN}x"),
        format!("/?token={TOKEN}"),
        format!("/other/{TOKEN}"),
    ] {
        let err = handle(&rt, &gerrit, &base, &[], &webhook(&path, body))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WebhookError::Unauthenticated(m) if m.contains("gerrit-webhook-token")),
            "{path}: {err:?}"
        );
        // Not even parsed: garbage is refused the same way.
        let err = handle(&rt, &gerrit, &base, &[], &webhook(&path, b"{not json"))
            .await
            .unwrap_err();
        assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
    }
    assert!(
        received.recv_timeout(Duration::from_millis(300)).is_err(),
        "an unauthenticated webhook reached Gerrit's REST API"
    );
    // The right token with a query string and a trailing slash is accepted.
    let request = webhook(&format!("/{TOKEN}/?source=gerrit"), REF_UPDATED.as_bytes());
    let outcome = handle(&rt, &gerrit, &base, &[("default_branch", "main")], &request).await;
    assert!(matches!(
        event_or_note(outcome.unwrap()).unwrap(),
        ChangeEvent::Push(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_uninteresting_events_make_no_rest_call() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let token_path = format!("/{TOKEN}");
    let err = handle(
        &rt,
        &gerrit,
        &base,
        &[],
        &webhook(&token_path, b"{not json"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
    let mut no_change = fixture(PATCHSET);
    no_change.as_object_mut().unwrap().remove("change");
    let err = handle(&rt, &gerrit, &base, &[], &json_webhook(&no_change))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WebhookError::Malformed(m) if m.contains("patchset-created")),
        "{err:?}"
    );

    let mut change_ref = fixture(REF_UPDATED);
    change_ref["refUpdate"]["refName"] = "refs/changes/34/1234/3".into();
    let note = event_or_note(
        handle(&rt, &gerrit, &base, &[], &json_webhook(&change_ref))
            .await
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        note.starts_with("refs/changes/34/1234/3 is a change's"),
        "{note}"
    );
    let mut deleted = fixture(REF_UPDATED);
    deleted["refUpdate"]["newRev"] = "0".repeat(40).into();
    let note = event_or_note(
        handle(&rt, &gerrit, &base, &[], &json_webhook(&deleted))
            .await
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(note, "refs/heads/main was deleted: nothing to build");
    let note = event_or_note(
        handle(
            &rt,
            &gerrit,
            &base,
            &[],
            &json_webhook(&json!({"type": "reviewer-added", "eventCreatedOn": 1})),
        )
        .await
        .unwrap(),
    )
    .unwrap_err();
    assert_eq!(note, "Gerrit event `reviewer-added` needs no build");
    assert!(
        received.recv_timeout(Duration::from_millis(300)).is_err(),
        "an event that needs no REST made a request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_update_is_a_push_with_the_projects_head_as_default() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let outcome = handle(
        &rt,
        &gerrit,
        &base,
        &[],
        &json_webhook(&fixture(REF_UPDATED)),
    )
    .await
    .unwrap();
    let ChangeEvent::Push(push) = event_or_note(outcome).unwrap() else {
        panic!("not a push")
    };
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(push.branch.as_deref(), Some("main"));
    assert_eq!(push.before, "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796");
    assert_eq!(push.rev, PUSHED);
    assert_eq!(push.repository.full_name, "infra/hello-flake");
    assert_eq!(push.repository.default_branch, "trunk");
    assert!(
        push.message
            .as_deref()
            .is_some_and(|m| m.starts_with("flake.lock: update nixpkgs\n")),
        "{:?}",
        push.message
    );
    let targets: Vec<String> = received.try_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/a/projects/infra%2Fhello-flake/HEAD", PUSHED_COMMIT_PATH]
    );

    // A tag is a push without a branch; a commit Gerrit does not show is
    // built without its message.
    let mut tag = fixture(REF_UPDATED);
    tag["refUpdate"]["refName"] = "refs/tags/v1.0".into();
    tag["refUpdate"]["newRev"] = CURRENT.into();
    let outcome = handle(
        &rt,
        &gerrit,
        &base,
        &[("default_branch", "main")],
        &json_webhook(&tag),
    )
    .await
    .unwrap();
    let ChangeEvent::Push(push) = event_or_note(outcome).unwrap() else {
        panic!("not a push")
    };
    assert_eq!(
        (push.git_ref.as_str(), push.branch),
        ("refs/tags/v1.0", None)
    );
    assert_eq!(push.message, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn gerrit_down_asks_to_retry_and_a_missing_change_is_ignored() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (down, received) = fake_gerrit(Mode::Down).await;
    let err = handle(&rt, &gerrit, &down, &[], &json_webhook(&fixture(PATCHSET)))
        .await
        .unwrap_err();
    let WebhookError::RetryAfter(retry) = err else {
        panic!("not a retry: {err:?}")
    };
    assert_eq!(retry.seconds, 12);
    assert!(retry.reason.contains("HTTP 503"), "{}", retry.reason);
    assert!(
        retry.reason.contains("read change infra/hello-flake~1234"),
        "{}",
        retry.reason
    );
    received.recv_timeout(Duration::from_secs(10)).unwrap();

    let nowhere = nothing_listening();
    let err = handle(
        &rt,
        &gerrit,
        &nowhere,
        &[],
        &json_webhook(&fixture(PATCHSET)),
    )
    .await
    .unwrap_err();
    let WebhookError::RetryAfter(retry) = err else {
        panic!("not a retry: {err:?}")
    };
    assert_eq!(retry.seconds, 30);
    assert!(
        retry
            .reason
            .starts_with("cannot reach Gerrit at 127.0.0.1:"),
        "{}",
        retry.reason
    );

    let (base, _received) = fake_gerrit(Mode::Normal).await;
    let mut gone = fixture(PATCHSET);
    gone["change"]["number"] = 999.into();
    let note = event_or_note(
        handle(&rt, &gerrit, &base, &[], &json_webhook(&gone))
            .await
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        note.contains("HTTP 404 to read change infra/hello-flake~999"),
        "{note}"
    );
    // REST shows change 1234 open, so an abandonment is stale.
    let note = event_or_note(
        handle(&rt, &gerrit, &base, &[], &json_webhook(&fixture(ABANDONED)))
            .await
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        note,
        "change-abandoned for change infra/hello-flake~1234, but Gerrit now shows it NEW: \
         nothing to do"
    );
}

fn report(context: &str, state: StatusState) -> StatusReport {
    StatusReport {
        repository: Repository {
            full_name: "infra/hello-flake".into(),
            owner: "infra".into(),
            name: "hello-flake".into(),
            clone_url: "https://review.example.org/infra/hello-flake".into(),
            web_url: None,
            default_branch: "main".into(),
            private: true,
            topics: vec![],
        },
        rev: CURRENT.into(),
        pull_request: Some(1234),
        context: context.into(),
        state,
        description: "2 of 9 checks failed".into(),
        target_url: Some("https://kiln.example.org/runs/7".into()),
        summary: None,
        failures: vec![
            FailedJob {
                attr: "x86_64-linux.hello".into(),
                url: Some("https://kiln.example.org/runs/7/jobs/3".into()),
            },
            FailedJob {
                attr: "aarch64-linux.tests.unit".into(),
                url: Some("https://kiln.example.org/runs/7/jobs/5".into()),
            },
        ],
    }
}

async fn report_status(
    rt: &Runtime,
    gerrit: &Plugin,
    base: &str,
    config: &[(&str, &str)],
    report: &StatusReport,
) -> Result<(), CallError> {
    report_status_with(rt, gerrit, base, config, report, Arc::default()).await
}

/// [`report_status`] with the kv store `kv`.
async fn report_status_with(
    rt: &Runtime,
    gerrit: &Plugin,
    base: &str,
    config: &[(&str, &str)],
    report: &StatusReport,
    kv: Arc<KvStore>,
) -> Result<(), CallError> {
    let settings = settings(base, config);
    let context = gerrit_context_with(base, kv);
    let called = rt
        .report_status(gerrit, report, &settings, context, Limits::default())
        .await;
    called.result
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_build_votes_minus_one_listing_each_failed_check() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let failed = report("kiln/nix-build", StatusState::Failure);
    report_status(&rt, &gerrit, &base, &[], &failed)
        .await
        .unwrap();
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        format!("/a/changes/infra%2Fhello-flake~1234/revisions/{CURRENT}/review")
    );
    let header = |name: &str| request.headers.get(name).map(String::as_str);
    assert_eq!(header("authorization"), Some(BASIC));
    assert_eq!(
        header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["labels"], json!({"Verified": -1}));
    assert_eq!(body["tag"], "autogenerated:kiln");
    assert_eq!(body["notify"], "OWNER");
    let message = body["message"].as_str().unwrap();
    for line in [
        "* x86_64-linux.hello: https://kiln.example.org/runs/7/jobs/3",
        "* aarch64-linux.tests.unit: https://kiln.example.org/runs/7/jobs/5",
        "Details: https://kiln.example.org/runs/7",
        "2 of 9 checks failed",
    ] {
        assert!(
            message.lines().any(|l| l == line),
            "{line:?} not in {message}"
        );
    }

    // Success votes +1 on the configured label, notifying as configured.
    let mut passed = report("kiln/nix-build", StatusState::Success);
    passed.failures.clear();
    passed.description = "9 checks passed".into();
    report_status(
        &rt,
        &gerrit,
        &base,
        &[("label", "Build-Verified"), ("notify", "NONE")],
        &passed,
    )
    .await
    .unwrap();
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["labels"], json!({"Build-Verified": 1}));
    assert_eq!(body["notify"], "NONE");
    assert!(!body["message"].as_str().unwrap().contains("Failed checks"));

    // A failed evaluation votes -1 with its error.
    let mut eval = report("kiln/nix-eval", StatusState::Error);
    eval.failures.clear();
    eval.description = "evaluation failed".into();
    eval.summary = Some("error: undefined variable 'helo'".into());
    report_status(&rt, &gerrit, &base, &[], &eval)
        .await
        .unwrap();
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["labels"], json!({"Verified": -1}));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("undefined variable 'helo'")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn intermediate_per_attribute_and_push_reports_post_nothing() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let mut push = report("kiln/nix-build", StatusState::Failure);
    push.pull_request = None;
    for report in [
        report("kiln/nix-build/x86_64-linux.hello", StatusState::Pending),
        report("kiln/nix-build/x86_64-linux.hello", StatusState::Failure),
        report("kiln/nix-build", StatusState::Running),
        report("kiln/nix-build", StatusState::Cancelled),
        report("kiln/nix-eval", StatusState::Pending),
        report("kiln/nix-eval", StatusState::Success),
        push,
    ] {
        report_status(&rt, &gerrit, &base, &[], &report)
            .await
            .unwrap();
    }
    assert!(
        received.recv_timeout(Duration::from_millis(300)).is_err(),
        "a report that means nothing to Gerrit was posted"
    );

    // With `start_message`, the first start posts a message without a vote,
    // once per revision.
    let config = [("start_message", "true")];
    let kv = Arc::<KvStore>::default();
    for state in [StatusState::Pending, StatusState::Running] {
        let started = report("kiln/nix-eval", state);
        report_status_with(&rt, &gerrit, &base, &config, &started, kv.clone())
            .await
            .unwrap();
    }
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert!(body.get("labels").is_none(), "{body}");
    assert_eq!(body["notify"], "NONE");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Kiln started building 7e6d5c4b3a."),
        "{body}"
    );
    assert!(received.recv_timeout(Duration::from_millis(300)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_failing_reviews_say_what_happened_without_the_password() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let failed = report("kiln/nix-build", StatusState::Failure);
    let (base, _received) = fake_gerrit(Mode::Forbidden).await;
    let err = report_status(&rt, &gerrit, &base, &[], &failed)
        .await
        .unwrap_err();
    let CallError::Failed(message) = &err else {
        panic!("not a failure: {err:?}")
    };
    let host = base.trim_start_matches("http://");
    assert!(
        message.starts_with(&format!(
            "Gerrit at {host} answered HTTP 403 to vote Verified -1 on change infra/hello-flake~1234"
        )),
        "{message}"
    );
    assert!(
        !message.contains(PASSWORD) && !message.contains("a2lsbi1i"),
        "{message}"
    );

    // A vote on a change abandoned meanwhile is refused with 409: nothing to
    // fix, so the report succeeds after the attempt.
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let mut abandoned = failed.clone();
    abandoned.pull_request = Some(77);
    report_status(&rt, &gerrit, &base, &[], &abandoned)
        .await
        .unwrap();
    let request = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        request.target,
        format!("/a/changes/infra%2Fhello-flake~77/revisions/{CURRENT}/review")
    );

    let (down, _received) = fake_gerrit(Mode::Down).await;
    let err = report_status(&rt, &gerrit, &down, &[], &failed)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::RetryAfter { seconds: 12, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn projects_are_discovered_by_marker_or_by_name() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let list = |config: Vec<(String, String)>| {
        let (rt, gerrit, base) = (&rt, &gerrit, &base);
        async move {
            rt.list_repositories(gerrit, &config, gerrit_context(base), Limits::default())
                .await
                .result
                .unwrap()
        }
    };
    let found = list(cfg(&[("url", &base)])).await;
    let names: Vec<&str> = found.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(names, ["infra/hello-flake"]);
    assert_eq!(found[0].default_branch, "trunk");
    assert_eq!(found[0].topics, ["build-with-buildbot"]);
    let targets: Vec<String> = received.try_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/a/projects/?d&type=CODE&state=ACTIVE&n=500&S=0",
            "/a/projects/?d&type=CODE&state=ACTIVE&n=500&S=500",
            "/a/projects/infra%2Fhello-flake/HEAD",
        ]
    );

    for patterns in ["tools, infra/d*", r#"["tools", "infra/d*"]"#] {
        let found = list(cfg(&[("url", &base), ("discover_projects", patterns)])).await;
        let names: Vec<&str> = found.iter().map(|r| r.full_name.as_str()).collect();
        assert_eq!(names, ["infra/docs", "tools"], "{patterns}");
    }
    let found = list(cfg(&[("url", &base), ("discover_projects", "tools")])).await;
    assert_eq!(found[0].clone_url, format!("{base}/tools"));
    assert_eq!(found[0].owner, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_changes_are_listed_across_pages_as_opened_pull_requests() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let (base, received) = fake_gerrit(Mode::Normal).await;
    let repository = report("kiln/nix-build", StatusState::Success).repository;
    let called = rt
        .list_pull_requests(
            &gerrit,
            &repository,
            &settings(&base, &[("trusted_group", "nix-maintainers")]),
            gerrit_context(&base),
            Limits::default(),
        )
        .await;
    let open = called.result.unwrap();
    assert!(
        called
            .log
            .iter()
            .any(|l| l.message == "infra/hello-flake: 3 open changes in 2 pages"),
        "{:?}",
        called.log
    );
    let summary: Vec<(u64, &str, &str, &str, &str, bool)> = open
        .iter()
        .map(|p| {
            (
                p.number,
                p.head_rev.as_str(),
                p.head_branch.as_str(),
                p.base_branch.as_str(),
                p.author.as_str(),
                p.author_trusted,
            )
        })
        .collect();
    let (b, c) = ("b".repeat(40), "c".repeat(40));
    assert_eq!(
        summary,
        [
            (1234, CURRENT, "refs/changes/34/1234/3", "main", "ada", true),
            (
                1240,
                b.as_str(),
                "refs/changes/40/1240/1",
                "main",
                "grace",
                false
            ),
            (
                1301,
                c.as_str(),
                "refs/changes/01/1301/2",
                "release",
                "ada",
                true
            ),
        ]
    );
    for pr in &open {
        assert!(matches!(pr.action, PullRequestAction::Opened), "{pr:?}");
        assert!(!pr.from_fork);
        assert_eq!(pr.head_clone_url, format!("{base}/infra/hello-flake"));
    }
    assert_eq!(
        open[0].web_url.as_deref(),
        Some(format!("{base}/c/infra/hello-flake/+/1234").as_str())
    );

    let requests: Vec<Received> = received.try_iter().collect();
    let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
    // Each owner's groups are read once.
    assert_eq!(
        targets,
        [
            OPEN_CHANGES_0,
            "/a/accounts/1000042/groups",
            "/a/accounts/1000077/groups",
            OPEN_CHANGES_2,
        ]
    );
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.headers.get("authorization").map(String::as_str),
            Some(BASIC)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_credentials_are_the_accounts_http_password() {
    let (rt, _d) = runtime();
    let gerrit = load(&rt, PLUGIN).await;
    let base = "https://review.example.org";
    let repository = report("kiln/nix-build", StatusState::Success).repository;
    let credentials = |repository: Repository| {
        let rt = &rt;
        let gerrit = &gerrit;
        async move {
            rt.clone_credentials(
                gerrit,
                &repository,
                &cfg(&[("url", base)]),
                gerrit_context(base),
                Limits::default(),
            )
            .await
            .result
        }
    };
    let given = credentials(repository.clone()).await.unwrap();
    assert_eq!(given.url, "https://review.example.org/infra/hello-flake");
    assert_eq!(given.username.as_deref(), Some(USERNAME));
    assert_eq!(given.password.as_deref(), Some(PASSWORD));

    let mut elsewhere = repository;
    elsewhere.clone_url = "https://review.example.org.evil.test/infra/hello-flake".into();
    let err = credentials(elsewhere).await.unwrap_err();
    assert!(err.to_string().contains("refusing to send"), "{err}");
    assert!(!err.to_string().contains(PASSWORD), "{err}");
}
