//! The Gerrit instance a call talks to: its REST API with the account's
//! credentials and the settings that shape repositories, and the reads that
//! turn an authenticated webhook into change events (the change as REST
//! shows it, the project's HEAD, the owner's groups, a pushed commit).
//!
//! This module sends requests and reads answers; deciding what an event
//! means is `events.rs`'s, what a report posts `review.rs`'s.

use kiln_plugin_sdk::http::{self, Request, Response};
use std::collections::BTreeMap;

use kiln_plugin_sdk::{
    ChangeEvent, Config, PluginError, PullRequest, PullRequestAction, PullRequestEvent, PushEvent,
    Repository, WebhookError, WebhookOutcome, log, secrets,
};
use serde::de::DeserializeOwned;

use crate::api::{self, Api, Failure};
use crate::events::ChangeAction;
use crate::{PASSWORD_SECRET, USERNAME_SECRET};

/// The secret `name` as text, or an error naming it.
pub fn secret(name: &str) -> Result<String, PluginError> {
    secrets::get_string(name)
        .map_err(|e| PluginError::failed(format!("cannot read secret `{name}`: {}", e.describe())))
}

/// The instance: its API and the settings every call reads.
pub struct Instance {
    pub api: Api,
    /// Where repositories are fetched from, without a trailing `/`.
    pub git_base: String,
    /// Setting `default_branch`; `None`: ask Gerrit for the project's HEAD.
    default_branch: Option<String>,
}

impl Instance {
    pub fn new(config: &Config) -> Result<Self, PluginError> {
        let api = Api::new(
            config.require("url")?,
            &secret(USERNAME_SECRET)?,
            &secret(PASSWORD_SECRET)?,
        )?;
        let git_base = match config.get("git_url") {
            Some(url) => api::checked_base("git_url", url)?,
            None => api.base.clone(),
        };
        Ok(Self {
            api,
            git_base,
            default_branch: config.get("default_branch").map(str::to_owned),
        })
    }

    /// Sends `request`; `what` names it in errors.
    pub fn send(&self, request: Request, what: &str) -> Result<Response, Failure> {
        let url = request.url.clone();
        let response = http::send(request).map_err(|e| api::unreachable(what, &url, &e))?;
        api::check(what, &url, response)
    }

    /// Reads JSON from Gerrit; `what` names it in errors.
    pub fn read<T: DeserializeOwned>(&self, request: Request, what: &str) -> Result<T, Failure> {
        let response = self.send(request, what)?;
        api::json(&response.body, what).map_err(Failure::Failed)
    }

    /// Kiln's view of `project`.
    pub fn repository(&self, project: &str) -> Result<Repository, Failure> {
        let default_branch = match &self.default_branch {
            Some(branch) => branch.clone(),
            None => {
                let what = format!("read the HEAD of project {project}");
                let head: String = self.read(self.api.head(project), &what)?;
                head.strip_prefix("refs/heads/").unwrap_or(&head).to_owned()
            }
        };
        let (owner, name) = project.rsplit_once('/').unwrap_or(("", project));
        Ok(Repository {
            full_name: project.to_owned(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            clone_url: self.clone_url(project),
            web_url: Some(format!("{}/q/project:{project}", self.api.base)),
            default_branch,
            // Gerrit's read access is per ref and per group: assume private.
            private: true,
            topics: Vec::new(),
        })
    }

    /// Where `project` is fetched from.
    pub fn clone_url(&self, project: &str) -> String {
        format!("{}/{project}", self.git_base)
    }

    /// The push event for `git_ref` of `project` moving to `rev`, with the
    /// commit's message (for `[skip ci]`) when Gerrit has it.
    pub fn push_event(
        &self,
        project: &str,
        git_ref: String,
        before: String,
        rev: String,
    ) -> Result<WebhookOutcome, Failure> {
        let repository = self.repository(project)?;
        let what = format!("read commit {rev} of project {project}");
        let message = match self.read::<api::Commit>(self.api.commit(project, &rev), &what) {
            Ok(commit) => commit.message,
            // Moved on since, or not visible: build without the message.
            Err(Failure::NotFound(note)) => {
                log::warn!("{note}");
                None
            }
            Err(failure) => return Err(failure),
        };
        Ok(WebhookOutcome::events(
            None,
            vec![ChangeEvent::Push(PushEvent {
                repository,
                branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
                git_ref,
                before,
                rev,
                message,
            })],
        ))
    }

    /// Whether `account` is in `group` (a name or UUID). A refusal to say
    /// (401/403/404) counts as no, with a warning.
    fn trusted(&self, account: &api::Account, group: &str) -> Result<bool, Failure> {
        let what = format!("list the groups of account {}", account.id);
        let groups: Vec<api::Group> = match self.read(self.api.groups(account.id), &what) {
            Ok(groups) => groups,
            Err(failure) => {
                let message = failure.message().map_err(Failure::Retry)?;
                log::warn!("{message}; treating the owner as untrusted");
                return Ok(false);
            }
        };
        Ok(groups
            .iter()
            // Gerrit shows a UUID URL-encoded (`global%3ARegistered-Users`).
            .any(|g| {
                g.id == group || g.id == api::encode(group) || g.name.as_deref() == Some(group)
            }))
    }

    /// Whether `owner`'s changes are trusted: members of setting
    /// `trusted_group`, nobody without it.
    fn author_trusted(
        &self,
        owner: &api::Account,
        trusted_group: Option<&str>,
    ) -> Result<bool, Failure> {
        match trusted_group {
            Some(group) => self.trusted(owner, group),
            None => Ok(false),
        }
    }

    /// Kiln's view of `change` as REST shows it (with its current
    /// revision): its current patchset on its change ref, with `action`.
    /// Webhooks and the listing of open changes both read changes so.
    pub fn pull_request(
        &self,
        change: &api::Change,
        action: PullRequestAction,
        author_trusted: bool,
    ) -> Result<PullRequest, Failure> {
        let (current, revision) = current_revision(change)?;
        Ok(PullRequest {
            number: change.number,
            title: change.subject.clone(),
            author: change.owner.login(),
            author_trusted,
            // A change lives in its project; there are no forks.
            from_fork: false,
            head_rev: current.to_owned(),
            head_branch: revision.git_ref.clone(),
            head_clone_url: self.clone_url(&change.project),
            base_branch: change.branch.clone(),
            action,
            web_url: Some(format!(
                "{}/c/{}/+/{}",
                self.api.base, change.project, change.number
            )),
        })
    }

    /// The open changes of `project`, page by page while Gerrit says more
    /// follow (at most `max_pages`), each as [`Self::pull_request`] reads
    /// it, as `opened`.
    pub fn open_changes(
        &self,
        project: &str,
        trusted_group: Option<&str>,
        max_pages: usize,
    ) -> Result<(Vec<PullRequest>, usize), Failure> {
        let what = format!("list the open changes of project {project}");
        let mut trusted = BTreeMap::new();
        let mut open: Vec<PullRequest> = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            let changes: Vec<api::Change> =
                self.read(self.api.open_changes(project, open.len()), &what)?;
            let more = changes.last().is_some_and(|c| c.more);
            for change in &changes {
                let author_trusted = match trusted.get(&change.owner.id) {
                    Some(known) => *known,
                    None => {
                        let known = self.author_trusted(&change.owner, trusted_group)?;
                        trusted.insert(change.owner.id, known);
                        known
                    }
                };
                open.push(self.pull_request(change, PullRequestAction::Opened, author_trusted)?);
            }
            if !more || changes.is_empty() {
                break;
            }
            if pages == max_pages {
                log::warn!("stopped listing the open changes of {project} after {max_pages} pages");
                break;
            }
        }
        Ok((open, pages))
    }

    /// The pull-request event for change `number` of `project`, as REST
    /// shows it now.
    pub fn change_event(
        &self,
        project: &str,
        number: u64,
        action: ChangeAction,
        webhook_revision: &str,
        trusted_group: Option<&str>,
    ) -> Result<WebhookOutcome, Failure> {
        let what = format!("read change {project}~{number}");
        let change: api::Change = self.read(self.api.change(project, number), &what)?;
        let event = action.event();
        if change.status != action.expected_status() {
            return Ok(WebhookOutcome::ignored(
                None,
                format!(
                    "{event} for change {project}~{number}, but Gerrit now shows it {}: nothing \
                     to do",
                    change.status
                ),
            ));
        }
        let (current, revision) = current_revision(&change)?;
        if current != webhook_revision {
            log::info!(
                "{event} named revision {webhook_revision} of change {project}~{number}; its \
                 current revision is {current} (patchset {}), built instead",
                revision.number
            );
        }
        let repository = self.repository(&change.project)?;
        let author_trusted = self.author_trusted(&change.owner, trusted_group)?;
        let pull_request = self.pull_request(
            &change,
            action.pull_request_action(revision.number),
            author_trusted,
        )?;
        let message = revision.commit.as_ref().and_then(|c| c.message.clone());
        Ok(WebhookOutcome::events(
            None,
            vec![ChangeEvent::PullRequest(PullRequestEvent {
                repository,
                pull_request,
                message,
            })],
        ))
    }
}

/// The current revision of `change`: its id and details.
fn current_revision(change: &api::Change) -> Result<(&str, &api::Revision), Failure> {
    let malformed = |what: &str| {
        Failure::Failed(format!(
            "Gerrit's change {}~{} has no {what}",
            change.project, change.number
        ))
    };
    let current = change
        .current_revision
        .as_deref()
        .ok_or_else(|| malformed("current revision"))?;
    let revision = change
        .revisions
        .get(current)
        .ok_or_else(|| malformed("details of its current revision"))?;
    Ok((current, revision))
}

/// A REST failure while handling an authentic webhook.
pub fn webhook_error(failure: Failure) -> Result<WebhookOutcome, WebhookError> {
    match failure {
        Failure::Retry(retry) => Err(WebhookError::RetryAfter(retry)),
        Failure::Refused(message) => {
            Err(WebhookError::retry_after(api::REFUSED_RETRY_SECS, message))
        }
        Failure::NotFound(note) => Ok(WebhookOutcome::ignored(None, note)),
        Failure::Conflict(message) | Failure::Failed(message) => {
            Err(WebhookError::Malformed(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGE: &str = include_str!("../tests/fixtures/change.json");

    fn instance() -> Instance {
        Instance {
            api: Api::new("https://review.example.org", "kiln", "password").unwrap(),
            git_base: "https://review.example.org/a".into(),
            default_branch: None,
        }
    }

    /// An open change in a page of `GET /a/changes/?q=status:open…` reads
    /// as the same change read for its webhook, as `opened`.
    #[test]
    fn open_changes_are_read_like_their_webhooks() {
        let instance = instance();
        let hooked: api::Change = api::json(CHANGE.as_bytes(), "change").unwrap();
        let mut listed: serde_json::Value = serde_json::from_str(CHANGE).unwrap();
        listed["_more_changes"] = true.into();
        let page = format!(")]}}'\n{}", serde_json::json!([listed]));
        let page: Vec<api::Change> = api::json(page.as_bytes(), "change list").unwrap();
        assert!(page[0].more);
        let listed = instance
            .pull_request(&page[0], PullRequestAction::Opened, true)
            .unwrap();
        let (_, revision) = current_revision(&hooked).unwrap();
        let action = ChangeAction::Patchset.pull_request_action(revision.number);
        assert!(matches!(action, PullRequestAction::Updated));
        let mut hooked = instance.pull_request(&hooked, action, true).unwrap();
        hooked.action = PullRequestAction::Opened;
        assert_eq!(format!("{listed:?}"), format!("{hooked:?}"));

        assert_eq!(listed.number, 1234);
        assert_eq!(listed.head_rev, "7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d");
        assert_eq!(listed.head_branch, "refs/changes/34/1234/3");
        assert_eq!(listed.base_branch, "main");
        assert_eq!(listed.author, "ada");
        assert!(!listed.from_fork);
        assert_eq!(
            listed.head_clone_url,
            "https://review.example.org/a/infra/hello-flake"
        );
        assert_eq!(
            listed.web_url.as_deref(),
            Some("https://review.example.org/c/infra/hello-flake/+/1234")
        );
    }

    #[test]
    fn a_change_without_its_current_revision_is_a_failure() {
        let mut change: api::Change = api::json(CHANGE.as_bytes(), "change").unwrap();
        change.revisions.clear();
        let err = instance()
            .pull_request(&change, PullRequestAction::Opened, false)
            .unwrap_err();
        assert_eq!(
            err,
            Failure::Failed(
                "Gerrit's change infra/hello-flake~1234 has no details of its current revision"
                    .into()
            )
        );
    }
}
