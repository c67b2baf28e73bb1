//! Gerrit's webhooks, as its `webhooks` plugin posts them (the JSON of
//! `stream-events`): the path token checked before anything else, then the
//! event decoded into what Kiln must confirm over REST ([`Parsed`]).
//!
//! Gerrit signs nothing: the webhook URL carries a secret token as its last
//! path segment (`https://kiln.example.org/webhooks/gerrit/<token>`), and
//! the token is the only proof the request came from Gerrit. Everything a
//! build depends on is read again over REST (`lib.rs`); this module only
//! says which change or ref the event names.

use kiln_plugin_sdk::{PullRequestAction, WebhookError, WebhookRequest};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A revision of all zeros: a ref that was created (before) or deleted (after).
const ZERO_REV: &str = "0000000000000000000000000000000000000000";

/// Whether the request's path is `/<token>` (a query string and a trailing
/// `/` allowed). The digests are compared, all bytes every time, so the
/// timing tells neither the token's bytes nor its length.
pub fn authentic(request: &WebhookRequest, token: &[u8]) -> bool {
    let path = request.path.split(['?', '#']).next().unwrap_or("");
    let given = path.trim_matches('/');
    if token.is_empty() {
        return false;
    }
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(token);
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// What an authenticated event asks for, before REST confirms it.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing to build, and why.
    Ignored(String),
    /// A branch or tag of `project` moved.
    Push {
        project: String,
        git_ref: String,
        before: String,
        rev: String,
    },
    /// Change `number` of `project` got a patchset, was merged, abandoned
    /// or restored. `revision` is the webhook's patchset revision; REST says
    /// which is current.
    Change {
        project: String,
        number: u64,
        action: ChangeAction,
        revision: String,
    },
}

/// What happened to a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    /// `patchset-created`: build the current patchset.
    Patchset,
    /// `change-merged`.
    Merged,
    /// `change-abandoned`.
    Abandoned,
    /// `change-restored`.
    Restored,
}

impl ChangeAction {
    /// The change status REST must show for this event still to hold.
    pub fn expected_status(self) -> &'static str {
        match self {
            Self::Patchset | Self::Restored => "NEW",
            Self::Merged => "MERGED",
            Self::Abandoned => "ABANDONED",
        }
    }

    /// The pull request action, given the current patchset's number.
    pub fn pull_request_action(self, patchset: u64) -> PullRequestAction {
        match self {
            Self::Patchset if patchset <= 1 => PullRequestAction::Opened,
            Self::Patchset => PullRequestAction::Updated,
            Self::Merged => PullRequestAction::Merged,
            Self::Abandoned => PullRequestAction::Closed,
            Self::Restored => PullRequestAction::Reopened,
        }
    }

    /// The event's name, for notes.
    pub fn event(self) -> &'static str {
        match self {
            Self::Patchset => "patchset-created",
            Self::Merged => "change-merged",
            Self::Abandoned => "change-abandoned",
            Self::Restored => "change-restored",
        }
    }
}

#[derive(Deserialize)]
struct ChangeAttribute {
    project: String,
    number: u64,
}

#[derive(Deserialize)]
struct PatchSetAttribute {
    revision: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeEventPayload {
    change: ChangeAttribute,
    patch_set: PatchSetAttribute,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdate {
    old_rev: String,
    new_rev: String,
    ref_name: String,
    project: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdatedPayload {
    ref_update: RefUpdate,
}

/// Decodes an authenticated body.
pub fn parse(body: &[u8]) -> Result<Parsed, WebhookError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not JSON: {e}")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| WebhookError::Malformed("the event has no `type`".into()))?;
    let action = match kind {
        "patchset-created" => ChangeAction::Patchset,
        "change-merged" => ChangeAction::Merged,
        "change-abandoned" => ChangeAction::Abandoned,
        "change-restored" => ChangeAction::Restored,
        "ref-updated" => return ref_updated(&value),
        other => {
            return Ok(Parsed::Ignored(format!(
                "Gerrit event `{other}` needs no build"
            )));
        }
    };
    let event: ChangeEventPayload = model(&value, kind)?;
    Ok(Parsed::Change {
        project: event.change.project,
        number: event.change.number,
        action,
        revision: event.patch_set.revision,
    })
}

/// `value` as `T`, or `malformed` naming the event.
fn model<T: DeserializeOwned>(value: &Value, kind: &str) -> Result<T, WebhookError> {
    T::deserialize(value)
        .map_err(|e| WebhookError::Malformed(format!("the `{kind}` event does not parse: {e}")))
}

fn ref_updated(value: &Value) -> Result<Parsed, WebhookError> {
    let update = model::<RefUpdatedPayload>(value, "ref-updated")?.ref_update;
    // Gerrit before 2.13 named branches without `refs/heads/`.
    let git_ref = if update.ref_name.starts_with("refs/") {
        update.ref_name
    } else {
        format!("refs/heads/{}", update.ref_name)
    };
    let ignored = |why: &str| {
        Ok(Parsed::Ignored(format!(
            "{git_ref} {why}: nothing to build"
        )))
    };
    if git_ref.starts_with("refs/changes/") {
        return ignored("is a change's patchset or metadata (patchset-created builds changes)");
    }
    if !(git_ref.starts_with("refs/heads/") || git_ref.starts_with("refs/tags/")) {
        return ignored("is Gerrit metadata, not a branch or tag");
    }
    if update.new_rev == ZERO_REV {
        return ignored("was deleted");
    }
    Ok(Parsed::Push {
        project: update.project,
        git_ref,
        before: update.old_rev,
        rev: update.new_rev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCHSET: &str = include_str!("../tests/fixtures/patchset-created.json");
    const REF_UPDATED: &str = include_str!("../tests/fixtures/ref-updated.json");
    const MERGED: &str = include_str!("../tests/fixtures/change-merged.json");
    const ABANDONED: &str = include_str!("../tests/fixtures/change-abandoned.json");
    const COMMENT: &str = include_str!("../tests/fixtures/comment-added.json");

    fn request(path: &str) -> WebhookRequest {
        WebhookRequest {
            method: "POST".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn fixture(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn parse_value(value: &Value) -> Result<Parsed, WebhookError> {
        parse(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn only_the_exact_token_authenticates() {
        let token = b"s3cret-token";
        for good in ["/s3cret-token", "/s3cret-token/", "/s3cret-token?x=1"] {
            assert!(authentic(&request(good), token), "{good}");
        }
        for bad in [
            "/",
            "",
            "/s3cret-toke",
            "/s3cret-token2",
            "/S3CRET-TOKEN",
            "/x/s3cret-token",
            "/?s3cret-token",
        ] {
            assert!(!authentic(&request(bad), token), "{bad}");
        }
        // An empty token configured authenticates nothing, not even `/`.
        assert!(!authentic(&request("/"), b""));
    }

    #[test]
    fn change_events_name_the_change_and_action() {
        let cases = [
            (PATCHSET, ChangeAction::Patchset),
            (MERGED, ChangeAction::Merged),
            (ABANDONED, ChangeAction::Abandoned),
        ];
        for (text, action) in cases {
            let Parsed::Change {
                project,
                number,
                action: got,
                revision,
            } = parse(text.as_bytes()).unwrap()
            else {
                panic!("not a change: {text}")
            };
            assert_eq!(project, "infra/hello-flake");
            assert_eq!(number, 1234);
            assert_eq!(got, action);
            assert_eq!(revision.len(), 40);
        }
        let mut restored = fixture(ABANDONED);
        restored["type"] = "change-restored".into();
        assert!(matches!(
            parse_value(&restored).unwrap(),
            Parsed::Change {
                action: ChangeAction::Restored,
                ..
            }
        ));
    }

    #[test]
    fn actions_follow_the_patchset_number() {
        assert_eq!(
            ChangeAction::Patchset.pull_request_action(1),
            PullRequestAction::Opened
        );
        assert_eq!(
            ChangeAction::Patchset.pull_request_action(3),
            PullRequestAction::Updated
        );
        assert_eq!(
            ChangeAction::Abandoned.pull_request_action(3),
            PullRequestAction::Closed
        );
        assert_eq!(ChangeAction::Merged.expected_status(), "MERGED");
    }

    #[test]
    fn branch_and_tag_updates_are_pushes() {
        assert_eq!(
            parse(REF_UPDATED.as_bytes()).unwrap(),
            Parsed::Push {
                project: "infra/hello-flake".into(),
                git_ref: "refs/heads/main".into(),
                before: "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796".into(),
                rev: "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b".into(),
            }
        );
        for (name, git_ref) in [
            ("refs/tags/v1.0", "refs/tags/v1.0"),
            ("stable", "refs/heads/stable"),
        ] {
            let mut body = fixture(REF_UPDATED);
            body["refUpdate"]["refName"] = name.into();
            let Parsed::Push { git_ref: got, .. } = parse_value(&body).unwrap() else {
                panic!("{name} is not a push")
            };
            assert_eq!(got, git_ref);
        }
    }

    #[test]
    fn change_meta_and_deleted_refs_are_ignored_with_a_note() {
        for (name, deleted, why) in [
            ("refs/changes/34/1234/2", false, "is a change's patchset"),
            ("refs/changes/34/1234/meta", false, "is a change's patchset"),
            ("refs/meta/config", false, "is Gerrit metadata"),
            ("refs/users/42/1000042", false, "is Gerrit metadata"),
            ("refs/heads/old", true, "was deleted"),
        ] {
            let mut body = fixture(REF_UPDATED);
            body["refUpdate"]["refName"] = name.into();
            if deleted {
                body["refUpdate"]["newRev"] = ZERO_REV.into();
            }
            let Parsed::Ignored(note) = parse_value(&body).unwrap() else {
                panic!("{name} is not ignored")
            };
            assert!(note.starts_with(&format!("{name} {why}")), "{note}");
            assert!(note.ends_with(": nothing to build"), "{note}");
        }
    }

    #[test]
    fn other_events_are_ignored_and_broken_ones_malformed() {
        assert_eq!(
            parse(COMMENT.as_bytes()).unwrap(),
            Parsed::Ignored("Gerrit event `comment-added` needs no build".into())
        );
        let mut no_change = fixture(PATCHSET);
        no_change.as_object_mut().unwrap().remove("change");
        let mut no_type = fixture(PATCHSET);
        no_type.as_object_mut().unwrap().remove("type");
        let mut no_ref_update = fixture(REF_UPDATED);
        no_ref_update.as_object_mut().unwrap().remove("refUpdate");
        for body in [no_change, no_type, no_ref_update] {
            let err = parse_value(&body).unwrap_err();
            assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
        }
        let err = parse(b"{not json").unwrap_err();
        assert!(
            matches!(&err, WebhookError::Malformed(m) if m.starts_with("the body is not JSON")),
            "{err:?}"
        );
    }
}
