//! The forge and authz worlds called from the host: the test forge plugin
//! verifies HMAC-signed GitHub-style webhooks and posts statuses to a local
//! HTTP server; the test authz plugin implements the default policy. Traps,
//! loops and ungranted capabilities fail the call with a clear message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use kiln_runtime::bindings::authz_types::{
    Action, PullRequestRef, Resource, ResourceKind, Subject,
};
use kiln_runtime::bindings::forge_types::{
    ChangeEvent, FailedJob, Header, PullRequestAction, Repository, StatusReport, StatusState,
    WebhookDisposition, WebhookError, WebhookOutcome, WebhookRequest,
};
use kiln_runtime::{CallError, Grant, Limits, Plugin, Runtime};
use sha2::{Digest, Sha256};

use crate::common::{cfg, context, load, runtime};

const SECRET: &[u8] = b"It's a Secret to Everybody";

/// HMAC-SHA256 (RFC 2104) as lowercase hex, as GitHub signs a webhook.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

#[test]
fn hmac_matches_githubs_example() {
    assert_eq!(
        hmac_sha256_hex(SECRET, b"Hello, World!"),
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

fn webhook(event: &str, delivery: &str, body: &str, signature: Option<String>) -> WebhookRequest {
    let mut headers = vec![
        Header {
            name: "X-GitHub-Event".into(),
            value: event.into(),
        },
        Header {
            name: "X-GitHub-Delivery".into(),
            value: delivery.into(),
        },
        Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        },
    ];
    if let Some(signature) = signature {
        headers.push(Header {
            name: "X-Hub-Signature-256".into(),
            value: signature,
        });
    }
    WebhookRequest {
        method: "POST".into(),
        path: "/".into(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

fn signed(event: &str, delivery: &str, body: &str) -> WebhookRequest {
    let signature = format!("sha256={}", hmac_sha256_hex(SECRET, body.as_bytes()));
    webhook(event, delivery, body, Some(signature))
}

const REPOSITORY: &str = r#"{"full_name": "acme/widgets", "name": "widgets", "owner": {"login": "acme"},
    "clone_url": "https://forge.test/acme/widgets.git", "html_url": "https://forge.test/acme/widgets",
    "default_branch": "main", "private": true}"#;

fn push_body() -> String {
    format!(
        r#"{{"ref": "refs/heads/main", "before": "{}", "after": "{}",
            "head_commit": {{"message": "Fix the frobnicator [skip ci]"}}, "repository": {REPOSITORY}}}"#,
        "a".repeat(40),
        "b".repeat(40)
    )
}

fn pull_request_body() -> String {
    format!(
        r#"{{"action": "synchronize", "number": 42, "repository": {REPOSITORY},
            "pull_request": {{"title": "Add a widget", "user": {{"login": "mallory"}},
              "author_association": "CONTRIBUTOR", "merged": false,
              "html_url": "https://forge.test/acme/widgets/pull/42",
              "head": {{"sha": "{}", "ref": "widget", "repo": {{"full_name": "mallory/widgets",
                "clone_url": "https://forge.test/mallory/widgets.git"}}}},
              "base": {{"ref": "main"}}}}}}"#,
        "c".repeat(40)
    )
}

fn forge_grant() -> Grant {
    Grant {
        secrets: vec!["webhook-secret".into()],
        ..Grant::default()
    }
}

async fn handle(
    rt: &Runtime,
    forge: &Plugin,
    request: &WebhookRequest,
    grant: Grant,
    config: &[(&str, &str)],
) -> kiln_runtime::Called<Result<WebhookOutcome, WebhookError>> {
    rt.handle_webhook(
        forge,
        request,
        &cfg(config),
        context(
            "forge",
            grant,
            &[("webhook-secret", SECRET)],
            Default::default(),
        ),
        Limits::default(),
    )
    .await
}

/// The plugin's verdict on a call that must not have failed.
fn verdict(
    called: kiln_runtime::Called<Result<WebhookOutcome, WebhookError>>,
) -> Result<WebhookOutcome, WebhookError> {
    called
        .result
        .unwrap_or_else(|e| panic!("the call failed: {e}"))
}

fn events(outcome: WebhookOutcome) -> Vec<ChangeEvent> {
    match outcome.disposition {
        WebhookDisposition::Events(events) => events,
        WebhookDisposition::Ignored(note) => panic!("ignored: {note}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_becomes_a_push_event_with_its_delivery_id() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("push", "delivery-1", &push_body());
    let called = handle(&rt, &forge, &request, forge_grant(), &[]).await;
    assert!(
        called
            .log
            .iter()
            .any(|l| l.message.contains("push delivery delivery-1")),
        "{:?}",
        called.log
    );
    let outcome = verdict(called).unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some("delivery-1"));
    let [ChangeEvent::Push(push)] = &events(outcome)[..] else {
        panic!("not one push")
    };
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(push.branch.as_deref(), Some("main"));
    assert_eq!(push.before, "a".repeat(40));
    assert_eq!(push.rev, "b".repeat(40));
    assert_eq!(
        push.message.as_deref(),
        Some("Fix the frobnicator [skip ci]")
    );
    assert_eq!(push.repository.full_name, "acme/widgets");
    assert_eq!(push.repository.owner, "acme");
    assert!(push.repository.private);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_pull_request_from_a_fork_becomes_a_pull_request_event() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("pull_request", "delivery-2", &pull_request_body());
    let outcome = verdict(handle(&rt, &forge, &request, forge_grant(), &[]).await).unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some("delivery-2"));
    let [ChangeEvent::PullRequest(event)] = &events(outcome)[..] else {
        panic!("not one pull request")
    };
    let pr = &event.pull_request;
    assert_eq!(pr.number, 42);
    assert_eq!(pr.author, "mallory");
    assert!(!pr.author_trusted);
    assert!(pr.from_fork);
    assert_eq!(pr.head_rev, "c".repeat(40));
    assert_eq!(pr.head_branch, "widget");
    assert_eq!(pr.base_branch, "main");
    assert!(matches!(pr.action, PullRequestAction::Updated));
    assert_eq!(event.repository.full_name, "acme/widgets");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ping_is_ignored_with_its_delivery_id() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("ping", "delivery-3", "{}");
    let outcome = verdict(handle(&rt, &forge, &request, forge_grant(), &[]).await).unwrap();
    assert_eq!(outcome.delivery.as_deref(), Some("delivery-3"));
    assert!(
        matches!(&outcome.disposition, WebhookDisposition::Ignored(note) if note == "ping"),
        "{:?}",
        outcome.disposition
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_signature_is_unauthenticated() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let body = push_body();
    let wrong = format!(
        "sha256={}",
        hmac_sha256_hex(b"not the secret", body.as_bytes())
    );
    for request in [
        webhook("push", "d", &body, Some(wrong)),
        webhook("push", "d", &body, Some("sha256=zz".into())),
        webhook("push", "d", &body, None),
    ] {
        let err = verdict(handle(&rt, &forge, &request, forge_grant(), &[]).await).unwrap_err();
        assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
    }
    // Tampering with a signed body breaks the signature too.
    let mut request = signed("push", "d", &body);
    request.body[2] ^= 1;
    let err = verdict(handle(&rt, &forge, &request, forge_grant(), &[]).await).unwrap_err();
    assert!(
        matches!(&err, WebhookError::Unauthenticated(m) if m.contains("does not match")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_secret_granted_a_webhook_is_unauthenticated_and_says_why() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("push", "d", &push_body());
    let err = verdict(handle(&rt, &forge, &request, Grant::default(), &[]).await).unwrap_err();
    let WebhookError::Unauthenticated(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("denied by Kiln: secret `webhook-secret` is not granted"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authentic_but_malformed_body_is_malformed() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    for body in ["{not json", r#"{"ref": "refs/heads/main"}"#] {
        let request = signed("push", "d", body);
        let err = verdict(handle(&rt, &forge, &request, forge_grant(), &[]).await).unwrap_err();
        assert!(matches!(err, WebhookError::Malformed(_)), "{body}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_can_ask_to_be_retried() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("push", "d", &push_body());
    let err = verdict(handle(&rt, &forge, &request, forge_grant(), &[("mode", "retry")]).await)
        .unwrap_err();
    assert!(
        matches!(&err, WebhookError::RetryAfter(r) if r.seconds == 30),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_or_looping_forge_plugin_fails_the_call_naming_it() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let request = signed("push", "d", &push_body());
    let trapped = handle(&rt, &forge, &request, forge_grant(), &[("mode", "trap")]).await;
    let err = trapped.result.unwrap_err();
    assert!(
        matches!(&err, CallError::Trap { plugin, message }
            if plugin == "kiln-test-forge" && message.contains("deliberate panic")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("plugin `kiln-test-forge` trapped"),
        "{err}"
    );

    let looped = rt
        .list_repositories(
            &forge,
            &cfg(&[("mode", "loop")]),
            context("forge", Grant::default(), &[], Default::default()),
            Limits {
                cpu_ms: 200,
                ..Limits::default()
            },
        )
        .await;
    let err = looped.result.unwrap_err();
    assert!(
        matches!(&err, CallError::CpuBudget { plugin, cpu_ms: 200 } if plugin == "kiln-test-forge"),
        "{err:?}"
    );

    // The runtime is unharmed: the next call works.
    let listed = rt
        .list_repositories(
            &forge,
            &vec![],
            context("forge", Grant::default(), &[], Default::default()),
            Limits::default(),
        )
        .await;
    let repositories = listed.result.unwrap();
    assert_eq!(repositories.len(), 1);
    assert_eq!(repositories[0].full_name, "test/repo");
}

#[tokio::test(flavor = "multi_thread")]
async fn forge_calls_on_a_post_build_plugin_are_refused() {
    let (rt, _d) = runtime();
    let noop = load(&rt, "kiln-test-noop").await;
    let request = signed("push", "d", &push_body());
    let called = handle(&rt, &noop, &request, Grant::default(), &[]).await;
    assert!(
        matches!(
            called.result,
            Err(CallError::WrongWorld {
                actual: "post-build",
                wanted: "forge",
                ..
            })
        ),
        "{:?}",
        called.result
    );
    let forge = load(&rt, "kiln-test-forge").await;
    let called = rt
        .decide(
            &forge,
            None,
            Action::Read,
            &resource(ResourceKind::Instance, None, true),
            &vec![],
            context("forge", Grant::default(), &[], Default::default()),
            Limits::default(),
        )
        .await;
    assert!(
        matches!(
            called.result,
            Err(CallError::WrongWorld {
                actual: "forge",
                wanted: "authz",
                ..
            })
        ),
        "{:?}",
        called.result
    );
}

fn repository() -> Repository {
    Repository {
        full_name: "acme/widgets".into(),
        owner: "acme".into(),
        name: "widgets".into(),
        clone_url: "https://forge.test/acme/widgets.git".into(),
        web_url: None,
        default_branch: "main".into(),
        private: true,
        topics: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_credentials_carry_the_granted_token() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let secrets: &[(&str, &[u8])] = &[("clone-token", b"ghs_installation\n")];
    let grant = Grant {
        secrets: vec!["clone-token".into()],
        ..Grant::default()
    };
    let called = rt
        .clone_credentials(
            &forge,
            &repository(),
            &vec![],
            context("forge", grant, secrets, Default::default()),
            Limits::default(),
        )
        .await;
    let credentials = called.result.unwrap();
    assert_eq!(credentials.url, "https://forge.test/acme/widgets.git");
    assert_eq!(credentials.username.as_deref(), Some("x-access-token"));
    assert_eq!(credentials.password.as_deref(), Some("ghs_installation"));
    assert_eq!(credentials.valid_for_seconds, Some(3600));

    let denied = rt
        .clone_credentials(
            &forge,
            &repository(),
            &vec![],
            context("forge", Grant::default(), secrets, Default::default()),
            Limits::default(),
        )
        .await;
    let err = denied.result.unwrap_err().to_string();
    assert!(
        err.contains("denied by Kiln: secret `clone-token` is not granted"),
        "{err}"
    );
    assert!(!err.contains("ghs_installation"), "{err}");
}

/// A loopback HTTP server answering each request with `status` (and a
/// `retry-after: 7` header); sends each request's head and body on the
/// channel.
fn status_server(status: u16) -> (u16, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nretry-after: 7\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, rx)
}

fn report() -> StatusReport {
    StatusReport {
        repository: repository(),
        rev: "b".repeat(40),
        pull_request: Some(42),
        context: "kiln/nix-build".into(),
        state: StatusState::Failure,
        description: "1 of 3 jobs failed".into(),
        target_url: Some("https://kiln.test/runs/7".into()),
        summary: Some("## 1 failed\n- `x86_64-linux.hello`".into()),
        failures: vec![FailedJob {
            attr: "x86_64-linux.hello".into(),
            url: Some("https://kiln.test/runs/7/jobs/x86_64-linux.hello".into()),
        }],
    }
}

async fn report_to(rt: &Runtime, forge: &Plugin, port: u16, grant: Grant) -> Result<(), CallError> {
    let url = format!("http://127.0.0.1:{port}/statuses");
    rt.report_status(
        forge,
        &report(),
        &cfg(&[("status_url", &url)]),
        context("forge", grant, &[], Default::default()),
        Limits::default(),
    )
    .await
    .result
}

#[tokio::test(flavor = "multi_thread")]
async fn report_status_reaches_the_forge_only_when_its_host_is_granted() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let (port, received) = status_server(201);

    let err = report_to(&rt, &forge, port, Grant::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("HTTP to host `127.0.0.1:{port}` is not granted")),
        "{err}"
    );
    assert!(
        received.try_recv().is_err(),
        "a denied request reached the server"
    );

    let grant = Grant {
        hosts: vec![format!("127.0.0.1:{port}")],
        ..Grant::default()
    };
    report_to(&rt, &forge, port, grant).await.unwrap();
    let (head, body) = received
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(head.starts_with("POST /statuses "), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["repository"], "acme/widgets");
    assert_eq!(json["context"], "kiln/nix-build");
    assert_eq!(json["state"], "failure");
    assert_eq!(json["pull_request"], 42);
    assert_eq!(json["target_url"], "https://kiln.test/runs/7");
    assert_eq!(json["summary"], "## 1 failed\n- `x86_64-linux.hello`");
    assert_eq!(json["failures"][0]["attr"], "x86_64-linux.hello");
    assert_eq!(
        json["failures"][0]["url"],
        "https://kiln.test/runs/7/jobs/x86_64-linux.hello"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_status_asks_to_be_retried() {
    let (rt, _d) = runtime();
    let forge = load(&rt, "kiln-test-forge").await;
    let (port, received) = status_server(429);
    let grant = Grant {
        hosts: vec![format!("127.0.0.1:{port}")],
        ..Grant::default()
    };
    let err = report_to(&rt, &forge, port, grant).await.unwrap_err();
    assert!(
        matches!(err, CallError::RetryAfter { seconds: 7, .. }),
        "{err:?}"
    );
    assert!(received.try_recv().is_ok());
}

fn resource(kind: ResourceKind, owner: Option<&str>, public: bool) -> Resource {
    Resource {
        kind,
        project: owner.map(|o| format!("{o}/widgets")),
        owner: owner.map(str::to_owned),
        public,
        run: Some(7),
        branch: None,
        pull_request: None,
    }
}

fn subject(name: &str, provider: &str, organisations: &[&str], admin: bool) -> Subject {
    Subject {
        id: name.into(),
        name: name.into(),
        provider: provider.into(),
        organisations: organisations.iter().map(|o| (*o).to_owned()).collect(),
        teams: vec![],
        admin,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_policy_decides_with_reasons() {
    let (rt, _d) = runtime();
    let authz = load(&rt, "kiln-test-authz").await;
    let admin = subject("root", "token", &[], true);
    let member = subject("alice", "github", &["acme"], false);
    let outsider = subject("mallory", "github", &["evil"], false);
    let private_run = resource(ResourceKind::Run, Some("acme"), false);
    let public_run = resource(ResourceKind::Run, Some("acme"), true);
    let pr_run = Resource {
        branch: Some("widget".into()),
        pull_request: Some(PullRequestRef {
            number: 42,
            author: "mallory".into(),
            author_provider: "github".into(),
        }),
        ..private_run.clone()
    };
    let cases: &[(Option<&Subject>, Action, &Resource, bool, &str)] = &[
        (
            Some(&admin),
            Action::Administer,
            &private_run,
            true,
            "root is an administrator",
        ),
        (
            Some(&admin),
            Action::Rebuild,
            &private_run,
            true,
            "root is an administrator",
        ),
        (
            Some(&member),
            Action::Rebuild,
            &private_run,
            true,
            "alice is a member of acme",
        ),
        (
            Some(&member),
            Action::Cancel,
            &private_run,
            true,
            "alice is a member of acme",
        ),
        (
            Some(&member),
            Action::Administer,
            &private_run,
            false,
            "alice may not administer run 7 of acme/widgets: only administrators may",
        ),
        (
            Some(&outsider),
            Action::Rebuild,
            &private_run,
            false,
            "mallory may not rebuild run 7 of acme/widgets: only members of acme and administrators may",
        ),
        (
            Some(&outsider),
            Action::Read,
            &private_run,
            false,
            "mallory may not read run 7 of acme/widgets: only members of acme and administrators may",
        ),
        (
            Some(&outsider),
            Action::Read,
            &public_run,
            true,
            "run 7 of acme/widgets is public",
        ),
        (
            None,
            Action::Read,
            &public_run,
            true,
            "run 7 of acme/widgets is public",
        ),
        (
            None,
            Action::Read,
            &private_run,
            false,
            "sign in to read run 7 of acme/widgets",
        ),
        (
            None,
            Action::Rebuild,
            &public_run,
            false,
            "sign in to rebuild run 7 of acme/widgets",
        ),
        (
            Some(&outsider),
            Action::Rebuild,
            &pr_run,
            true,
            "mallory wrote pull request #42",
        ),
        (
            Some(&outsider),
            Action::Approve,
            &pr_run,
            false,
            "mallory may not approve run 7 of acme/widgets: only members of acme and administrators may",
        ),
    ];
    for (who, action, what, allow, reason) in cases {
        let called = rt
            .decide(
                &authz,
                *who,
                *action,
                what,
                &vec![],
                context("authz", Grant::default(), &[], Default::default()),
                Limits::default(),
            )
            .await;
        let decision = called.result.unwrap();
        let case = format!("{:?} {action:?} {what:?}", who.map(|s| &s.name));
        assert_eq!(decision.allow, *allow, "{case}: {}", decision.reason);
        assert_eq!(decision.reason, *reason, "{case}");
    }

    // The same login from another provider is not the pull request's author.
    let impostor = subject("mallory", "oidc:https://id.test", &[], false);
    let called = rt
        .decide(
            &authz,
            Some(&impostor),
            Action::Rebuild,
            &pr_run,
            &vec![],
            context("authz", Grant::default(), &[], Default::default()),
            Limits::default(),
        )
        .await;
    assert!(!called.result.unwrap().allow);
}
