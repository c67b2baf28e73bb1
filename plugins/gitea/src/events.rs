//! Webhook deliveries into change events. [`handle`] checks the body's
//! HMAC-SHA256 (`X-Gitea-Signature`, or Forgejo's `X-Forgejo-Signature`)
//! before reading anything else, then turns `push` and `pull_request`
//! deliveries into [`ChangeEvent`]s through the few payload fields Kiln
//! reads (`payload.rs`); every other event is ignored with a note, without
//! parsing its body.
//!
//! This module is pure (no host calls), so it is tested natively; it must
//! not decide what gets built beyond what the delivery says.

use kiln_plugin_sdk::{
    ChangeEvent, PullRequest, PullRequestAction, PullRequestEvent, PushEvent, Repository,
    WebhookDisposition as Disposition, WebhookError, WebhookOutcome, WebhookRequest, webhook,
};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::payload::{ListedPullRequest, PullRequestBody, PullRequestPayload, PushPayload};

/// The signature headers, Forgejo's first; a delivery must carry one and
/// every one it carries must match.
const SIGNATURE_HEADERS: [&str; 2] = ["X-Forgejo-Signature", "X-Gitea-Signature"];
/// The delivery id headers, in the order they are read.
const DELIVERY_HEADERS: [&str; 2] = ["X-Forgejo-Delivery", "X-Gitea-Delivery"];
/// The event headers: the event family (`pull_request` for every pull
/// request change), then the finer event type (`pull_request_sync`).
const EVENT_HEADERS: [&str; 4] = [
    "X-Forgejo-Event",
    "X-Gitea-Event",
    "X-Forgejo-Event-Type",
    "X-Gitea-Event-Type",
];

/// Who, besides the repository owner, may run secret-using steps on their
/// pull requests without approval. Gitea's payloads carry no author
/// association (the `permissions` on a payload's repository are not the
/// author's), so trust is the owner's plus this list.
#[derive(Debug, Default, Clone)]
pub struct Trust {
    /// Gitea user names, compared ignoring case as Gitea does.
    pub users: Vec<String>,
}

impl Trust {
    fn trusts(&self, author: &str, owner: &str) -> bool {
        author.eq_ignore_ascii_case(owner)
            || self.users.iter().any(|u| u.eq_ignore_ascii_case(author))
    }
}

/// Verifies `request` with the webhook `secret` and turns it into an outcome.
pub fn handle(
    request: &WebhookRequest,
    secret: &[u8],
    trust: &Trust,
) -> Result<WebhookOutcome, WebhookError> {
    verify(request, secret)?;
    let delivery = DELIVERY_HEADERS
        .iter()
        .find_map(|h| request.header(h))
        .map(str::to_owned);
    let event = event_name(request)?;
    let disposition = match event.as_str() {
        "push" => push(&parse(&request.body, "push payload")?)?,
        "pull_request" => pull_request(&parse(&request.body, "pull_request payload")?, trust)?,
        "create" => {
            Disposition::Ignored("create: the push delivered with it is what gets built".into())
        }
        "delete" => Disposition::Ignored("delete: a deleted ref has nothing to build".into()),
        other => Disposition::Ignored(format!("Gitea event `{other}` needs no build")),
    };
    Ok(WebhookOutcome {
        delivery,
        disposition,
    })
}

/// Checks every signature header present against the raw body.
fn verify(request: &WebhookRequest, secret: &[u8]) -> Result<(), WebhookError> {
    let mut checked = false;
    for name in SIGNATURE_HEADERS {
        let Some(signature) = request.header(name) else {
            continue;
        };
        if signature.trim().is_empty() {
            return Err(WebhookError::Unauthenticated(format!(
                "the delivery's {name} is empty: the webhook has no secret; set it on the \
                 webhook in Gitea to the value of secret `gitea-webhook-secret`"
            )));
        }
        if !webhook::verify_hmac_sha256(secret, &request.body, signature) {
            return Err(WebhookError::Unauthenticated(format!(
                "{name} does not match the body: the webhook's secret in Gitea differs from \
                 secret `gitea-webhook-secret`"
            )));
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated(
            "the delivery has no X-Gitea-Signature or X-Forgejo-Signature header: set a secret \
             on the webhook and choose the Gitea (or Forgejo) webhook type"
                .into(),
        ))
    }
}

/// The event family: `X-Gitea-Event` (or Forgejo's), else derived from the
/// event type header, whose pull request variants all mean `pull_request`.
fn event_name(request: &WebhookRequest) -> Result<String, WebhookError> {
    let (header, value) = EVENT_HEADERS
        .iter()
        .find_map(|h| request.header(h).map(|v| (*h, v.trim())))
        .ok_or_else(|| {
            WebhookError::Malformed(
                "the delivery has no X-Gitea-Event or X-Forgejo-Event header".into(),
            )
        })?;
    let family = if header.ends_with("-Type") {
        match value {
            "pull_request_sync"
            | "pull_request_assign"
            | "pull_request_label"
            | "pull_request_milestone"
            | "pull_request_review_request" => "pull_request",
            other => other,
        }
    } else {
        value
    };
    Ok(family.to_owned())
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(match e.classify() {
            Category::Data => format!("the {what} does not parse: {e}"),
            Category::Syntax | Category::Eof | Category::Io => format!("the body is not JSON: {e}"),
        })
    })
}

/// Whether `rev` is all zeros: the `after` of a deleted ref.
fn is_zero(rev: &str) -> bool {
    !rev.is_empty() && rev.bytes().all(|b| b == b'0')
}

/// `rev` when it is a commit id (40 hex digits, or 64 for SHA-256
/// repositories), else `malformed` naming `field`.
fn commit_id(rev: String, field: &str) -> Result<String, String> {
    if matches!(rev.len(), 40 | 64) && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(rev)
    } else {
        Err(format!(
            "`{field}` is `{rev}`, not a commit id (40 or 64 hex digits)"
        ))
    }
}

fn push(push: &PushPayload) -> Result<Disposition, WebhookError> {
    if is_zero(&push.after) {
        return Ok(Disposition::Ignored(format!(
            "push deleted {}: nothing to build",
            push.git_ref
        )));
    }
    if !push.git_ref.starts_with("refs/") {
        return Err(WebhookError::Malformed(format!(
            "`ref` is `{}`, not a full git ref (refs/…)",
            push.git_ref
        )));
    }
    // Branches and tags are both built; which ones a project builds is the
    // host's decision.
    Ok(Disposition::Events(vec![ChangeEvent::Push(PushEvent {
        repository: push.repository.to_kiln().map_err(WebhookError::Malformed)?,
        branch: push.git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        git_ref: push.git_ref.clone(),
        before: commit_id(push.before.clone(), "before").map_err(WebhookError::Malformed)?,
        rev: commit_id(push.after.clone(), "after").map_err(WebhookError::Malformed)?,
        message: push.head_commit.as_ref().map(|c| c.message.clone()),
    })]))
}

fn pull_request(event: &PullRequestPayload, trust: &Trust) -> Result<Disposition, WebhookError> {
    let pr = &event.pull_request;
    let action = match event.action.as_str() {
        "opened" => PullRequestAction::Opened,
        "synchronized" => PullRequestAction::Updated,
        // A new target branch changes what the pull request merges into.
        "edited" if event.changes.as_ref().is_some_and(|c| c.base_changed()) => {
            PullRequestAction::Updated
        }
        "reopened" => PullRequestAction::Reopened,
        "closed" if pr.merged => PullRequestAction::Merged,
        "closed" => PullRequestAction::Closed,
        other => {
            return Ok(Disposition::Ignored(format!(
                "pull_request action `{other}` needs no build"
            )));
        }
    };
    let repository = event
        .repository
        .to_kiln()
        .map_err(WebhookError::Malformed)?;
    let pull_request = convert_pull_request(
        pr,
        event.number,
        action,
        event.repository.id,
        &repository,
        trust,
    )
    .map_err(WebhookError::Malformed)?;
    Ok(Disposition::Events(vec![ChangeEvent::PullRequest(
        PullRequestEvent {
            pull_request,
            repository,
            message: None,
        },
    )]))
}

/// Kiln's view of pull request `number` (a webhook's `pull_request`, or an
/// entry of `GET /repos/{owner}/{repo}/pulls`, the same object) into
/// `repository`, whose Gitea id is `base_id`; an error names what is
/// missing.
pub fn convert_pull_request(
    pr: &PullRequestBody,
    number: u64,
    action: PullRequestAction,
    base_id: u64,
    repository: &Repository,
    trust: &Trust,
) -> Result<PullRequest, String> {
    let author = pr.user.name().ok_or_else(|| {
        format!(
            "pull request #{number} of {} has an author without `login`",
            repository.full_name
        )
    })?;
    // A head repository that is gone (a deleted fork) counts as a fork; its
    // commits stay reachable from the base repository's `refs/pull/N/head`.
    let from_fork = pr.head.repo.as_ref().is_none_or(|head| head.id != base_id);
    let head_clone_url = pr
        .head
        .repo
        .as_ref()
        .map_or_else(|| repository.clone_url.clone(), |r| r.clone_url.clone());
    Ok(PullRequest {
        number,
        title: pr.title.clone(),
        author: author.to_owned(),
        author_trusted: trust.trusts(author, &repository.owner),
        from_fork,
        head_rev: commit_id(pr.head.sha.clone(), "pull_request.head.sha")?,
        head_branch: pr.head.git_ref.clone(),
        head_clone_url,
        base_branch: pr.base.git_ref.clone(),
        action,
        web_url: pr.html_url.clone().filter(|u| !u.is_empty()),
    })
}

/// The pull requests of one page of `GET /repos/{owner}/{repo}/pulls` of
/// `repository`, each read as its webhook is, with action `opened`.
pub fn open_pull_requests(
    pulls: &[ListedPullRequest],
    repository: &Repository,
    trust: &Trust,
) -> Result<Vec<PullRequest>, String> {
    pulls
        .iter()
        .map(|listed| {
            let base = &listed.body.base;
            let base_id = base
                .repo
                .as_ref()
                .map(|r| r.id)
                .or(base.repo_id)
                .ok_or_else(|| {
                    format!(
                        "pull request #{} has neither `base.repo` nor `base.repo_id`",
                        listed.number
                    )
                })?;
            convert_pull_request(
                &listed.body,
                listed.number,
                PullRequestAction::Opened,
                base_id,
                repository,
                trust,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::Header;
    use serde_json::Value;

    const SECRET: &[u8] = b"gitea webhook secret";
    const PUSH: &str = include_str!("../tests/fixtures/push.json");
    const PULL_REQUEST: &str = include_str!("../tests/fixtures/pull_request_opened.json");
    const DELIVERY: &str = "4e2f3a9c-8b1d-4c7e-9f60-2a5b7d1e3c84";

    fn request(headers: &[(&str, &str)], body: &[u8]) -> WebhookRequest {
        WebhookRequest {
            method: "POST".into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            body: body.to_vec(),
        }
    }

    /// `body` as Gitea delivers `event`, signed with [`SECRET`].
    fn signed(event: &str, body: &Value) -> WebhookRequest {
        let body = serde_json::to_vec(body).unwrap();
        let signature = webhook::hmac_sha256_hex(SECRET, &body);
        request(
            &[
                ("X-Gitea-Event", event),
                ("X-Gitea-Delivery", DELIVERY),
                ("X-Gitea-Signature", &signature),
            ],
            &body,
        )
    }

    fn fixture(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn run(request: &WebhookRequest) -> Result<WebhookOutcome, WebhookError> {
        handle(request, SECRET, &Trust::default())
    }

    fn one_event(outcome: WebhookOutcome) -> ChangeEvent {
        match outcome.disposition {
            Disposition::Events(mut events) if events.len() == 1 => events.remove(0),
            other => panic!("not one event: {other:?}"),
        }
    }

    fn ignored(outcome: WebhookOutcome) -> String {
        match outcome.disposition {
            Disposition::Ignored(note) => note,
            other => panic!("not ignored: {other:?}"),
        }
    }

    fn pull_request_with(body: &Value, trust: &Trust) -> PullRequest {
        match one_event(handle(&signed("pull_request", body), SECRET, trust).unwrap()) {
            ChangeEvent::PullRequest(event) => event.pull_request,
            ChangeEvent::Push(push) => panic!("a push: {push:?}"),
        }
    }

    fn malformed(result: Result<WebhookOutcome, WebhookError>) -> String {
        match result {
            Err(WebhookError::Malformed(message)) => message,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn the_signature_is_checked_before_the_body_is_read() {
        let garbage = b"{not json";
        let wrong = webhook::hmac_sha256_hex(b"other", garbage);
        let good = webhook::hmac_sha256_hex(SECRET, garbage);
        for headers in [
            vec![("X-Gitea-Event", "push")],
            vec![("X-Gitea-Event", "push"), ("X-Gitea-Signature", "")],
            vec![("X-Gitea-Event", "push"), ("X-Gitea-Signature", &wrong)],
            vec![("X-Gitea-Event", "push"), ("X-Gitea-Signature", "zz")],
            // Every signature present must match.
            vec![
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Signature", &good),
                ("X-Forgejo-Signature", &wrong),
            ],
        ] {
            let err = run(&request(&headers, garbage)).unwrap_err();
            assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
        }
        let m = malformed(run(&request(
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &good)],
            garbage,
        )));
        assert!(m.starts_with("the body is not JSON"), "{m}");
    }

    #[test]
    fn a_branch_push_names_its_branch_revisions_and_message() {
        let outcome = run(&signed("push", &fixture(PUSH))).unwrap();
        assert_eq!(outcome.delivery.as_deref(), Some(DELIVERY));
        let ChangeEvent::Push(push) = one_event(outcome) else {
            panic!("not a push")
        };
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.branch.as_deref(), Some("main"));
        assert_eq!(push.before, "5ed3a0ad4b1cc1e5b7ba6a1f2d3b6c0e7a9e8f41");
        assert_eq!(push.rev, "a4c1f2b09d7e3c5f81b6e0d2c9a7f3e1b5d8c640");
        assert!(
            push.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Add a check for the greeting\n")),
            "{:?}",
            push.message
        );
        let repo = push.repository;
        assert_eq!(repo.full_name, "kiln-example/hello-flake");
        assert_eq!(repo.owner, "kiln-example");
        assert_eq!(repo.name, "hello-flake");
        assert_eq!(
            repo.clone_url,
            "https://gitea.example.org/kiln-example/hello-flake.git"
        );
        assert_eq!(
            repo.web_url.as_deref(),
            Some("https://gitea.example.org/kiln-example/hello-flake")
        );
        assert_eq!(repo.default_branch, "main");
        assert!(!repo.private);
        assert_eq!(repo.topics, ["build-with-buildbot", "nix"]);
    }

    #[test]
    fn a_tag_push_has_no_branch_and_a_deleted_ref_is_ignored() {
        let mut body = fixture(PUSH);
        body["ref"] = "refs/tags/v1.0".into();
        body["before"] = "0".repeat(40).into();
        let ChangeEvent::Push(push) = one_event(run(&signed("push", &body)).unwrap()) else {
            panic!("not a push")
        };
        assert_eq!(push.git_ref, "refs/tags/v1.0");
        assert_eq!(push.branch, None);
        assert_eq!(push.before, "0".repeat(40));

        body["ref"] = "refs/heads/old".into();
        body["after"] = "0".repeat(40).into();
        body["head_commit"] = Value::Null;
        assert_eq!(
            ignored(run(&signed("push", &body)).unwrap()),
            "push deleted refs/heads/old: nothing to build"
        );
    }

    #[test]
    fn forgejo_headers_and_the_event_type_header_are_understood() {
        let body = serde_json::to_vec(&fixture(PULL_REQUEST)).unwrap();
        let signature = webhook::hmac_sha256_hex(SECRET, &body);
        let forgejo = request(
            &[
                ("X-Forgejo-Event", "pull_request"),
                ("X-Forgejo-Delivery", "forgejo-1"),
                ("X-Forgejo-Signature", &signature),
            ],
            &body,
        );
        let outcome = run(&forgejo).unwrap();
        assert_eq!(outcome.delivery.as_deref(), Some("forgejo-1"));
        assert!(matches!(one_event(outcome), ChangeEvent::PullRequest(_)));

        let typed = request(
            &[
                ("x-gitea-event-type", "pull_request_sync"),
                ("x-gitea-signature", &signature),
            ],
            &body,
        );
        let outcome = run(&typed).unwrap();
        assert_eq!(outcome.delivery, None);
        assert!(matches!(one_event(outcome), ChangeEvent::PullRequest(_)));

        let m = malformed(run(&request(&[("X-Gitea-Signature", &signature)], &body)));
        assert!(m.contains("no X-Gitea-Event"), "{m}");
    }

    #[test]
    fn a_pull_request_from_a_fork_by_a_stranger_is_untrusted() {
        let pr = pull_request_with(&fixture(PULL_REQUEST), &Trust::default());
        assert_eq!(pr.number, 3);
        assert_eq!(pr.title, "Greet in French");
        assert_eq!(pr.author, "contributor");
        assert!(!pr.author_trusted);
        assert!(pr.from_fork);
        assert!(matches!(pr.action, PullRequestAction::Opened));
        assert_eq!(pr.head_rev, "c7e2d95a0f3b48e1a6d2c9f7b3e0a5d8f1c4b297");
        assert_eq!(pr.head_branch, "french");
        assert_eq!(
            pr.head_clone_url,
            "https://gitea.example.org/contributor/hello-flake.git"
        );
        assert_eq!(pr.base_branch, "main");
        assert_eq!(
            pr.web_url.as_deref(),
            Some("https://gitea.example.org/kiln-example/hello-flake/pulls/3")
        );
    }

    #[test]
    fn the_owner_and_listed_users_are_trusted() {
        let mut body = fixture(PULL_REQUEST);
        let listed = Trust {
            users: vec!["someone".into(), "Contributor".into()],
        };
        assert!(pull_request_with(&body, &listed).author_trusted);

        body["pull_request"]["user"]["login"] = "kiln-example".into();
        let base = body["repository"].clone();
        body["pull_request"]["head"]["repo"] = base;
        let pr = pull_request_with(&body, &Trust::default());
        assert!(pr.author_trusted);
        assert!(!pr.from_fork);
        assert_eq!(
            pr.head_clone_url,
            "https://gitea.example.org/kiln-example/hello-flake.git"
        );

        // Same repository (AGit flow) by someone else: not trusted for that.
        body["pull_request"]["user"]["login"] = "contributor".into();
        let pr = pull_request_with(&body, &Trust::default());
        assert!(!pr.from_fork);
        assert!(!pr.author_trusted);

        // A deleted fork is still a fork, cloned from the base repository.
        body["pull_request"]["head"]["repo"] = Value::Null;
        let pr = pull_request_with(&body, &Trust::default());
        assert!(pr.from_fork);
        assert_eq!(
            pr.head_clone_url,
            "https://gitea.example.org/kiln-example/hello-flake.git"
        );
    }

    /// A page of `GET /pulls` gives each pull request as its webhook does,
    /// as `opened`.
    #[test]
    fn open_pull_requests_are_read_like_their_webhooks() {
        let event = fixture(PULL_REQUEST);
        let trust = Trust {
            users: vec!["contributor".into()],
        };
        let hooked = pull_request_with(&event, &trust);
        let repository = pull_request_event_repository(&event);
        let page = serde_json::to_vec(&serde_json::json!([event["pull_request"]])).unwrap();
        let pulls: Vec<ListedPullRequest> = serde_json::from_slice(&page).unwrap();
        let listed = open_pull_requests(&pulls, &repository, &trust).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(matches!(listed[0].action, PullRequestAction::Opened));
        assert_eq!(format!("{:?}", listed[0]), format!("{hooked:?}"));
        assert!(listed[0].author_trusted && listed[0].from_fork);

        // Without `base.repo`, its `repo_id` says which repository is the base.
        let mut same = event["pull_request"].clone();
        same["head"]["repo"] = event["repository"].clone();
        same["base"]["repo"] = Value::Null;
        let pulls: Vec<ListedPullRequest> =
            serde_json::from_value(serde_json::json!([same])).unwrap();
        let listed = open_pull_requests(&pulls, &repository, &Trust::default()).unwrap();
        assert!(!listed[0].from_fork && !listed[0].author_trusted);
        same["base"]["repo_id"] = Value::Null;
        let pulls: Vec<ListedPullRequest> =
            serde_json::from_value(serde_json::json!([same])).unwrap();
        let err = open_pull_requests(&pulls, &repository, &Trust::default()).unwrap_err();
        assert!(err.contains("#3 has neither `base.repo`"), "{err}");
    }

    fn pull_request_event_repository(event: &Value) -> Repository {
        let repo: crate::payload::Repo =
            serde_json::from_value(event["repository"].clone()).unwrap();
        repo.to_kiln().unwrap()
    }

    #[test]
    fn actions_map_onto_kilns() {
        let action = |name: &str, merged: bool, changes: Value| {
            let mut body = fixture(PULL_REQUEST);
            body["action"] = name.into();
            body["pull_request"]["merged"] = merged.into();
            body["changes"] = changes;
            run(&signed("pull_request", &body)).unwrap()
        };
        let kiln = |outcome| match one_event(outcome) {
            ChangeEvent::PullRequest(e) => e.pull_request.action,
            ChangeEvent::Push(_) => panic!("a push"),
        };
        let none = Value::Null;
        assert!(matches!(
            kiln(action("synchronized", false, none.clone())),
            PullRequestAction::Updated
        ));
        assert!(matches!(
            kiln(action("reopened", false, none.clone())),
            PullRequestAction::Reopened
        ));
        assert!(matches!(
            kiln(action("closed", true, none.clone())),
            PullRequestAction::Merged
        ));
        assert!(matches!(
            kiln(action("closed", false, none.clone())),
            PullRequestAction::Closed
        ));
        let retargeted = serde_json::json!({"ref": {"from": "develop"}});
        assert!(matches!(
            kiln(action("edited", false, retargeted)),
            PullRequestAction::Updated
        ));
        let retitled = serde_json::json!({"title": {"from": "Greet"}});
        assert_eq!(
            ignored(action("edited", false, retitled)),
            "pull_request action `edited` needs no build"
        );
        assert_eq!(
            ignored(action("label_updated", false, none)),
            "pull_request action `label_updated` needs no build"
        );
    }

    #[test]
    fn other_events_are_ignored_unparsed() {
        let anything = Value::String("anything".into());
        for (event, note) in [
            ("issues", "Gitea event `issues` needs no build"),
            (
                "create",
                "create: the push delivered with it is what gets built",
            ),
            ("delete", "delete: a deleted ref has nothing to build"),
        ] {
            assert_eq!(ignored(run(&signed(event, &anything)).unwrap()), note);
        }
    }

    #[test]
    fn authentic_but_incomplete_payloads_are_malformed_naming_the_field() {
        let mut no_repo = fixture(PUSH);
        no_repo.as_object_mut().unwrap().remove("repository");
        let m = malformed(run(&signed("push", &no_repo)));
        assert!(m.contains("missing field `repository`"), "{m}");

        let mut no_after = fixture(PUSH);
        no_after.as_object_mut().unwrap().remove("after");
        let m = malformed(run(&signed("push", &no_after)));
        assert!(
            m.starts_with("the push payload does not parse: missing field `after`"),
            "{m}"
        );

        let mut short = fixture(PUSH);
        short["after"] = "abc".into();
        let m = malformed(run(&signed("push", &short)));
        assert_eq!(m, "`after` is `abc`, not a commit id (40 or 64 hex digits)");

        let m = malformed(run(&signed("pull_request", &fixture(PUSH))));
        assert!(
            m.starts_with("the pull_request payload does not parse"),
            "{m}"
        );
    }
}
