//! Webhook deliveries into change events. [`handle`] checks
//! `X-Hub-Signature-256` against the raw body before reading anything else,
//! then turns `push` and `pull_request` deliveries into [`ChangeEvent`]s,
//! deserialised with octocrab's models of GitHub's payloads; every other
//! event is ignored with a note, without parsing its body.
//!
//! This module is pure (no host calls), so it is tested natively; it must
//! not decide what gets built beyond what the delivery says.

use kiln_plugin_sdk::{
    ChangeEvent, PullRequest, PullRequestAction, PullRequestEvent, PushEvent, Repository,
    WebhookDisposition as Disposition, WebhookError, WebhookOutcome, WebhookRequest, webhook,
};
use octocrab::models::AuthorAssociation;
use octocrab::models::webhook_events::payload::{
    PullRequestWebhookEventAction, PullRequestWebhookEventPayload, PushWebhookEventPayload,
};
use serde::Deserialize;

/// Verifies `request` with the webhook `secret` and turns it into an outcome.
pub fn handle(request: &WebhookRequest, secret: &[u8]) -> Result<WebhookOutcome, WebhookError> {
    let signature = request.header("x-hub-signature-256").ok_or_else(|| {
        WebhookError::Unauthenticated(
            "the delivery has no X-Hub-Signature-256 header: set a secret on the GitHub webhook"
                .into(),
        )
    })?;
    if !webhook::verify_hmac_sha256(secret, &request.body, signature) {
        return Err(WebhookError::Unauthenticated(
            "X-Hub-Signature-256 does not match the body: the GitHub webhook's secret differs \
             from secret `github-webhook-secret`"
                .into(),
        ));
    }
    let delivery = request.header("x-github-delivery").map(str::to_owned);
    let event = request.header("x-github-event").ok_or_else(|| {
        WebhookError::Malformed("the delivery has no X-GitHub-Event header".into())
    })?;
    let disposition = match event {
        "push" => push(&request.body)?,
        "pull_request" => pull_request(&request.body)?,
        "ping" => Disposition::Ignored("ping: the webhook reaches Kiln".into()),
        "merge_group" => Disposition::Ignored(
            "merge_group: merge queue branches are built from their push (gh-readonly-queue/*)"
                .into(),
        ),
        other => Disposition::Ignored(format!("GitHub event `{other}` needs no build")),
    };
    Ok(WebhookOutcome {
        delivery,
        disposition,
    })
}

/// A delivery that asks to build `event`.
fn build(event: ChangeEvent) -> Disposition {
    Disposition::Events(vec![event])
}

/// The parts every delivery shares. Each payload is read straight from the
/// body into its octocrab model, skipping the fields the model lacks, rather
/// than through a `serde_json::Value` tree: this runs on every delivery.
#[derive(Deserialize)]
struct Common<'a> {
    #[serde(borrow)]
    repository: Option<RepositoryFields<'a>>,
    action: Option<String>,
}

/// The fields of a delivery's `repository` that Kiln keeps. octocrab's
/// `Repository` model parses some forty URLs, which made it the largest cost
/// of a delivery (measured with `kiln bench ingest`); a test checks this
/// projection agrees with [`convert_repository`] on the fixtures.
#[derive(Deserialize)]
struct RepositoryFields<'a> {
    name: String,
    full_name: Option<String>,
    #[serde(borrow)]
    owner: Option<Owner<'a>>,
    clone_url: Option<String>,
    html_url: Option<String>,
    default_branch: Option<String>,
    private: Option<bool>,
    topics: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Owner<'a> {
    #[serde(borrow)]
    login: std::borrow::Cow<'a, str>,
}

/// The body as `T`: "not JSON" for a syntax error, else `malformed` naming `what`.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            WebhookError::Malformed(format!("the body is not JSON: {e}"))
        } else {
            WebhookError::Malformed(format!("the {what} does not parse: {e}"))
        }
    })
}

fn repository(common: Common) -> Result<Repository, WebhookError> {
    common
        .repository
        .ok_or_else(|| WebhookError::Malformed("the delivery has no `repository`".into()))?
        .into_repository()
        .map_err(WebhookError::Malformed)
}

impl RepositoryFields<'_> {
    /// Kiln's view of the repository; an error names the missing field.
    fn into_repository(self) -> Result<Repository, String> {
        let owner = self
            .owner
            .map(|o| o.login.into_owned())
            .ok_or_else(|| format!("repository `{}` has no owner", self.name))?;
        let full_name = self
            .full_name
            .unwrap_or_else(|| format!("{owner}/{}", self.name));
        let missing = |field: &str| format!("repository `{full_name}` has no `{field}`");
        Ok(Repository {
            clone_url: self.clone_url.ok_or_else(|| missing("clone_url"))?,
            web_url: self.html_url,
            default_branch: self
                .default_branch
                .ok_or_else(|| missing("default_branch"))?,
            // A repository whose visibility is not stated is treated as private.
            private: self.private.unwrap_or(true),
            topics: self.topics.unwrap_or_default(),
            owner,
            name: self.name,
            full_name,
        })
    }
}

/// Kiln's view of a GitHub repository; an error names the missing field.
pub fn convert_repository(repo: octocrab::models::Repository) -> Result<Repository, String> {
    RepositoryFields {
        name: repo.name,
        full_name: repo.full_name,
        owner: repo.owner.map(|o| Owner {
            login: o.login.into(),
        }),
        clone_url: repo.clone_url.map(|u| u.to_string()),
        html_url: repo.html_url.map(|u| u.to_string()),
        default_branch: repo.default_branch,
        private: repo.private,
        topics: repo.topics,
    }
    .into_repository()
}

fn push(body: &[u8]) -> Result<Disposition, WebhookError> {
    let common: Common = parse(body, "push payload")?;
    let push: PushWebhookEventPayload = parse(body, "push payload")?;
    if push.deleted {
        return Ok(Disposition::Ignored(format!(
            "push deleted {}: nothing to build",
            push.r#ref
        )));
    }
    // Branches, merge queue branches (`gh-readonly-queue/<base>/pr-…`, bors'
    // `staging` and `trying`) and tags are all built; which ones a project
    // builds is the host's decision.
    Ok(build(ChangeEvent::Push(PushEvent {
        repository: repository(common)?,
        branch: push.r#ref.strip_prefix("refs/heads/").map(str::to_owned),
        git_ref: push.r#ref,
        before: push.before,
        rev: push.after,
        message: push.head_commit.map(|c| c.message),
    })))
}

/// Whether GitHub's author association lets the author run secret-using
/// steps without approval.
fn trusted(association: Option<&AuthorAssociation>) -> bool {
    matches!(
        association,
        Some(
            AuthorAssociation::Owner | AuthorAssociation::Member | AuthorAssociation::Collaborator
        )
    )
}

fn pull_request(body: &[u8]) -> Result<Disposition, WebhookError> {
    let common: Common = parse(body, "pull_request payload")?;
    let event: PullRequestWebhookEventPayload = parse(body, "pull_request payload")?;
    let pr = event.pull_request;
    let merged = pr.merged.unwrap_or(false) || pr.merged_at.is_some();
    let action = match event.action {
        PullRequestWebhookEventAction::Opened => PullRequestAction::Opened,
        PullRequestWebhookEventAction::Synchronize => PullRequestAction::Updated,
        PullRequestWebhookEventAction::Reopened => PullRequestAction::Reopened,
        PullRequestWebhookEventAction::Closed if merged => PullRequestAction::Merged,
        PullRequestWebhookEventAction::Closed => PullRequestAction::Closed,
        _ => {
            let name = common.action.as_deref().unwrap_or("?");
            return Ok(Disposition::Ignored(format!(
                "pull_request action `{name}` needs no build"
            )));
        }
    };
    let repository = repository(common)?;
    let pull_request = convert_pull_request(&pr, event.number, action, &repository.clone_url)
        .map_err(WebhookError::Malformed)?;
    Ok(build(ChangeEvent::PullRequest(PullRequestEvent {
        pull_request,
        repository,
        message: None,
    })))
}

/// Kiln's view of GitHub pull request `number` (octocrab's model, as in a
/// webhook or `GET /repos/{owner}/{repo}/pulls`); `base_clone_url` is the
/// base repository's, used when the head repository is gone.
pub fn convert_pull_request(
    pr: &octocrab::models::pulls::PullRequest,
    number: u64,
    action: PullRequestAction,
    base_clone_url: &str,
) -> Result<PullRequest, String> {
    let author = pr
        .user
        .as_ref()
        .map(|u| u.login.clone())
        .ok_or_else(|| format!("pull request #{number} has no `user`"))?;
    // A head repository that is gone (a deleted fork) counts as a fork; its
    // commits stay reachable from the base repository's `refs/pull/N/head`.
    let base_id = pr.base.repo.as_ref().map(|r| r.id);
    let head_repo = pr.head.repo.as_ref();
    let from_fork = head_repo.is_none_or(|head| Some(head.id) != base_id);
    let head_clone_url = head_repo
        .and_then(|r| r.clone_url.as_ref())
        .map_or_else(|| base_clone_url.to_owned(), |u| u.to_string());
    Ok(PullRequest {
        number,
        title: pr.title.clone().unwrap_or_default(),
        author,
        author_trusted: trusted(pr.author_association.as_ref()),
        from_fork,
        head_rev: pr.head.sha.clone(),
        head_branch: pr.head.ref_field.clone(),
        head_clone_url,
        base_branch: pr.base.ref_field.clone(),
        action,
        web_url: pr.html_url.as_ref().map(|u| u.to_string()),
    })
}

/// The open pull requests of one page of `GET /repos/{owner}/{repo}/pulls`.
pub fn open_pull_requests(page: &[u8], base_clone_url: &str) -> Result<Vec<PullRequest>, String> {
    let pulls: Vec<octocrab::models::pulls::PullRequest> =
        serde_json::from_slice(page).map_err(|e| format!("does not parse: {e}"))?;
    pulls
        .iter()
        .map(|pr| convert_pull_request(pr, pr.number, PullRequestAction::Opened, base_clone_url))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::{Header, WebhookDisposition};
    use serde_json::Value;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const PUSH: &str = include_str!("../tests/fixtures/push.json");
    const PULL_REQUEST: &str = include_str!("../tests/fixtures/pull_request_opened.json");
    const PING: &str = include_str!("../tests/fixtures/ping.json");

    fn request(event: &str, body: &[u8], signature: Option<String>) -> WebhookRequest {
        let mut headers = vec![
            Header {
                name: "X-GitHub-Event".into(),
                value: event.into(),
            },
            Header {
                name: "X-GitHub-Delivery".into(),
                value: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            },
        ];
        if let Some(value) = signature {
            headers.push(Header {
                name: "X-Hub-Signature-256".into(),
                value,
            });
        }
        WebhookRequest {
            method: "POST".into(),
            path: "/".into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn signed(event: &str, body: &Value) -> WebhookRequest {
        let body = serde_json::to_vec(body).unwrap();
        let signature = format!("sha256={}", webhook::hmac_sha256_hex(SECRET, &body));
        request(event, &body, Some(signature))
    }

    fn fixture(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn one_event(outcome: WebhookOutcome) -> ChangeEvent {
        assert_eq!(
            outcome.delivery.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        match outcome.disposition {
            WebhookDisposition::Events(mut events) if events.len() == 1 => events.remove(0),
            other => panic!("not one event: {other:?}"),
        }
    }

    fn ignored(outcome: WebhookOutcome) -> String {
        match outcome.disposition {
            WebhookDisposition::Ignored(note) => note,
            other => panic!("not ignored: {other:?}"),
        }
    }

    #[test]
    fn the_signature_is_checked_before_the_body_is_read() {
        let garbage = b"{not json";
        let wrong = format!("sha256={}", webhook::hmac_sha256_hex(b"other", garbage));
        for signature in [None, Some(wrong), Some("sha256=zz".into())] {
            let err = handle(&request("push", garbage, signature), SECRET).unwrap_err();
            assert!(matches!(err, WebhookError::Unauthenticated(_)), "{err:?}");
        }
        let good = format!("sha256={}", webhook::hmac_sha256_hex(SECRET, garbage));
        let err = handle(&request("push", garbage, Some(good)), SECRET).unwrap_err();
        assert!(
            matches!(&err, WebhookError::Malformed(m) if m.starts_with("the body is not JSON")),
            "{err:?}"
        );
    }

    #[test]
    fn a_tag_push_has_its_ref_and_no_branch() {
        let ChangeEvent::Push(push) =
            one_event(handle(&signed("push", &fixture(PUSH)), SECRET).unwrap())
        else {
            panic!("not a push")
        };
        assert_eq!(push.git_ref, "refs/tags/v0.2.1");
        assert_eq!(push.branch, None);
        assert_eq!(push.before, "0".repeat(40));
        assert_eq!(push.rev, "f19c884ab35c8d243bf9d857d631a5d4f190079f");
        assert_eq!(push.repository.full_name, "kiln-example/hello-flake");
        assert_eq!(push.repository.owner, "kiln-example");
        assert_eq!(push.repository.name, "hello-flake");
        assert_eq!(
            push.repository.clone_url,
            "https://github.com/kiln-example/hello-flake.git"
        );
        assert_eq!(push.repository.default_branch, "main");
        assert!(push.message.is_some());
    }

    #[test]
    fn branch_and_merge_queue_pushes_name_their_branch() {
        for branch in [
            "main",
            "gh-readonly-queue/main/pr-7-0123abcd",
            "staging",
            "trying",
        ] {
            let mut body = fixture(PUSH);
            body["ref"] = format!("refs/heads/{branch}").into();
            body["created"] = false.into();
            let ChangeEvent::Push(push) =
                one_event(handle(&signed("push", &body), SECRET).unwrap())
            else {
                panic!("not a push")
            };
            assert_eq!(push.branch.as_deref(), Some(branch));
            assert_eq!(push.git_ref, format!("refs/heads/{branch}"));
        }
    }

    #[test]
    fn a_deleted_ref_is_ignored_with_a_reason() {
        let mut body = fixture(PUSH);
        body["ref"] = "refs/heads/old".into();
        body["deleted"] = true.into();
        body["after"] = "0".repeat(40).into();
        body["head_commit"] = Value::Null;
        let note = ignored(handle(&signed("push", &body), SECRET).unwrap());
        assert_eq!(note, "push deleted refs/heads/old: nothing to build");
    }

    #[test]
    fn a_pull_request_from_the_owner_is_trusted_and_not_a_fork() {
        let ChangeEvent::PullRequest(event) =
            one_event(handle(&signed("pull_request", &fixture(PULL_REQUEST)), SECRET).unwrap())
        else {
            panic!("not a pull request")
        };
        let pr = &event.pull_request;
        assert_eq!(pr.number, 2);
        assert_eq!(pr.author, "kiln-example");
        assert!(pr.author_trusted);
        assert!(!pr.from_fork);
        assert!(matches!(pr.action, PullRequestAction::Opened));
        assert_eq!(pr.head_clone_url, event.repository.clone_url);
        assert_eq!(event.repository.full_name, "kiln-example/hello-pr");
        assert_eq!(pr.head_rev.len(), 40);
    }

    #[test]
    fn fork_and_trust_follow_the_head_repository_and_association() {
        let cases = [
            ("MEMBER", false, true),
            ("COLLABORATOR", false, true),
            ("CONTRIBUTOR", true, false),
            ("FIRST_TIME_CONTRIBUTOR", true, false),
            ("NONE", true, false),
        ];
        for (association, fork, trusted) in cases {
            let mut body = fixture(PULL_REQUEST);
            body["action"] = "synchronize".into();
            body["pull_request"]["author_association"] = association.into();
            if fork {
                let head = &mut body["pull_request"]["head"]["repo"];
                head["id"] = 4242.into();
                head["full_name"] = "mallory/hello-pr".into();
                head["clone_url"] = "https://github.com/mallory/hello-pr.git".into();
            }
            let ChangeEvent::PullRequest(event) =
                one_event(handle(&signed("pull_request", &body), SECRET).unwrap())
            else {
                panic!("not a pull request")
            };
            let pr = event.pull_request;
            assert_eq!(pr.author_trusted, trusted, "{association}");
            assert_eq!(pr.from_fork, fork, "{association}");
            assert!(matches!(pr.action, PullRequestAction::Updated));
            if fork {
                assert_eq!(pr.head_clone_url, "https://github.com/mallory/hello-pr.git");
            }
        }
        // A fork deleted since is still a fork.
        let mut body = fixture(PULL_REQUEST);
        body["pull_request"]["head"]["repo"] = Value::Null;
        let ChangeEvent::PullRequest(event) =
            one_event(handle(&signed("pull_request", &body), SECRET).unwrap())
        else {
            panic!("not a pull request")
        };
        assert!(event.pull_request.from_fork);
    }

    #[test]
    fn closed_reopened_and_other_actions() {
        let action = |name: &str, merged: bool| {
            let mut body = fixture(PULL_REQUEST);
            body["action"] = name.into();
            body["pull_request"]["merged"] = merged.into();
            handle(&signed("pull_request", &body), SECRET).unwrap()
        };
        let pr_action = |outcome| match one_event(outcome) {
            ChangeEvent::PullRequest(e) => e.pull_request.action,
            ChangeEvent::Push(_) => panic!("a push"),
        };
        assert!(matches!(
            pr_action(action("closed", true)),
            PullRequestAction::Merged
        ));
        assert!(matches!(
            pr_action(action("closed", false)),
            PullRequestAction::Closed
        ));
        assert!(matches!(
            pr_action(action("reopened", false)),
            PullRequestAction::Reopened
        ));
        assert_eq!(
            ignored(action("labeled", false)),
            "pull_request action `labeled` needs no build"
        );
    }

    #[test]
    fn ping_and_other_events_are_ignored_unparsed() {
        assert_eq!(
            ignored(handle(&signed("ping", &fixture(PING)), SECRET).unwrap()),
            "ping: the webhook reaches Kiln"
        );
        let body = Value::String("anything".into());
        assert_eq!(
            ignored(handle(&signed("issues", &body), SECRET).unwrap()),
            "GitHub event `issues` needs no build"
        );
    }

    /// A page of `GET /pulls` gives each pull request as the webhook would,
    /// as `opened`.
    #[test]
    fn open_pull_requests_are_read_like_their_webhooks() {
        let event = fixture(PULL_REQUEST);
        let page = serde_json::to_vec(&serde_json::json!([event["pull_request"]])).unwrap();
        let listed = open_pull_requests(&page, "https://fallback.test/x.git").unwrap();
        let ChangeEvent::PullRequest(hooked) =
            one_event(handle(&signed("pull_request", &event), SECRET).unwrap())
        else {
            panic!("not a pull request")
        };
        assert_eq!(listed.len(), 1);
        let (l, h) = (&listed[0], &hooked.pull_request);
        assert!(matches!(l.action, PullRequestAction::Opened));
        assert_eq!(
            (
                l.number,
                &l.head_rev,
                &l.head_branch,
                &l.base_branch,
                &l.author
            ),
            (
                h.number,
                &h.head_rev,
                &h.head_branch,
                &h.base_branch,
                &h.author
            )
        );
        assert_eq!(
            (l.from_fork, l.author_trusted, &l.head_clone_url),
            (h.from_fork, h.author_trusted, &h.head_clone_url)
        );
        assert!(open_pull_requests(b"{}", "x").is_err());
    }

    /// The projection read from each delivery agrees with octocrab's model.
    #[test]
    fn the_repository_projection_matches_octocrabs_model() {
        for text in [PUSH, PULL_REQUEST] {
            let value = fixture(text);
            let model: octocrab::models::Repository =
                serde_json::from_value(value["repository"].clone()).unwrap();
            let expected = convert_repository(model).unwrap();
            let common: Common = serde_json::from_str(text).unwrap();
            let got = repository(common).unwrap();
            assert_eq!(format!("{got:?}"), format!("{expected:?}"));
            assert!(!got.clone_url.is_empty() && !got.owner.is_empty());
        }
    }

    #[test]
    fn authentic_but_incomplete_payloads_are_malformed() {
        let mut no_repo = fixture(PUSH);
        no_repo.as_object_mut().unwrap().remove("repository");
        let mut no_after = fixture(PUSH);
        no_after.as_object_mut().unwrap().remove("after");
        for (event, body) in [
            ("push", no_repo),
            ("push", no_after),
            ("pull_request", fixture(PUSH)),
        ] {
            let err = handle(&signed(event, &body), SECRET).unwrap_err();
            assert!(
                matches!(err, WebhookError::Malformed(_)),
                "{event}: {err:?}"
            );
        }
    }
}
