//! The Gerrit instance a call talks to: its REST API with the account's
//! credentials and the settings that shape repositories, and the reads that
//! turn an authenticated webhook into change events (the change as REST
//! shows it, the project's HEAD, the owner's groups, a pushed commit).
//!
//! This module sends requests and reads answers; deciding what an event
//! means is `events.rs`'s, what a report posts `review.rs`'s.

use kiln_plugin_sdk::http::{self, Request, Response};
use kiln_plugin_sdk::{
    ChangeEvent, Config, PluginError, PullRequest, PullRequestEvent, PushEvent, Repository,
    WebhookError, WebhookOutcome, log, secrets,
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
            clone_url: format!("{}/{project}", self.git_base),
            web_url: Some(format!("{}/q/project:{project}", self.api.base)),
            default_branch,
            // Gerrit's read access is per ref and per group: assume private.
            private: true,
            topics: Vec::new(),
        })
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
        let malformed = |what: &str| {
            Failure::Failed(format!("Gerrit's change {project}~{number} has no {what}"))
        };
        let current = change
            .current_revision
            .as_deref()
            .ok_or_else(|| malformed("current revision"))?;
        let revision = change
            .revisions
            .get(current)
            .ok_or_else(|| malformed("details of its current revision"))?;
        if current != webhook_revision {
            log::info!(
                "{event} named revision {webhook_revision} of change {project}~{number}; its \
                 current revision is {current} (patchset {}), built instead",
                revision.number
            );
        }
        let repository = self.repository(&change.project)?;
        let author_trusted = match trusted_group {
            Some(group) => self.trusted(&change.owner, group)?,
            None => false,
        };
        let pull_request = PullRequest {
            number: change.number,
            title: change.subject,
            author: change.owner.login(),
            author_trusted,
            // A change lives in its project; there are no forks.
            from_fork: false,
            head_rev: current.to_owned(),
            head_branch: revision.git_ref.clone(),
            head_clone_url: repository.clone_url.clone(),
            base_branch: change.branch,
            action: action.pull_request_action(revision.number),
            web_url: Some(format!(
                "{}/c/{}/+/{}",
                self.api.base, change.project, change.number
            )),
        };
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
