//! The parts of Gitea's webhook and REST payloads Kiln reads, as serde
//! structs (Gitea has no Rust model crate that builds for WebAssembly).
//! Fields Kiln does not read are left out; serde skips them. Shapes follow
//! Gitea's `modules/structs` (Forgejo keeps them).
//!
//! A field Kiln needs is required here, so a payload without it is
//! `malformed` with serde's message naming the field.

use kiln_plugin_sdk::Repository;
use serde::Deserialize;

/// A user or organisation. Gitea sends `login` and, for older clients,
/// the same name as `username`.
#[derive(Debug, Deserialize)]
pub struct User {
    #[serde(default)]
    pub login: String,
    #[serde(default)]
    pub username: String,
}

impl User {
    /// The user name, `None` when the payload has neither field.
    pub fn name(&self) -> Option<&str> {
        [&self.login, &self.username]
            .into_iter()
            .find(|n| !n.is_empty())
            .map(String::as_str)
    }
}

/// A repository, in webhooks and in `GET /repos/search`.
#[derive(Debug, Deserialize)]
pub struct Repo {
    pub id: u64,
    pub owner: User,
    pub name: String,
    pub full_name: String,
    pub private: bool,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub html_url: Option<String>,
    pub clone_url: String,
    pub default_branch: String,
    /// `null` or absent on servers that leave topics out.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
}

impl Repo {
    /// Kiln's view of this repository; an error names what is missing.
    pub fn to_kiln(&self) -> Result<Repository, String> {
        let owner = self.owner.name().ok_or_else(|| {
            format!(
                "repository `{}` has an owner without `login`",
                self.full_name
            )
        })?;
        if self.clone_url.is_empty() {
            return Err(format!(
                "repository `{}` has an empty `clone_url`",
                self.full_name
            ));
        }
        Ok(Repository {
            full_name: self.full_name.clone(),
            owner: owner.to_owned(),
            name: self.name.clone(),
            clone_url: self.clone_url.clone(),
            web_url: self.html_url.clone().filter(|u| !u.is_empty()),
            default_branch: self.default_branch.clone(),
            private: self.private,
            topics: self.topics.clone().unwrap_or_default(),
        })
    }
}

/// A commit in a push.
#[derive(Debug, Deserialize)]
pub struct Commit {
    pub message: String,
}

/// `X-Gitea-Event: push`.
#[derive(Debug, Deserialize)]
pub struct PushPayload {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub before: String,
    pub after: String,
    #[serde(default)]
    pub head_commit: Option<Commit>,
    pub repository: Repo,
}

/// `X-Gitea-Event: pull_request`.
#[derive(Debug, Deserialize)]
pub struct PullRequestPayload {
    pub action: String,
    pub number: u64,
    pub pull_request: PullRequestBody,
    pub repository: Repo,
    #[serde(default)]
    pub changes: Option<Changes>,
}

/// What an `edited` action changed.
#[derive(Debug, Deserialize)]
pub struct Changes {
    /// Present when the target branch changed.
    #[serde(default, rename = "ref")]
    pub base_ref: Option<serde::de::IgnoredAny>,
}

impl Changes {
    pub fn base_changed(&self) -> bool {
        self.base_ref.is_some()
    }
}

#[derive(Debug, Deserialize)]
pub struct PullRequestBody {
    pub user: User,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub merged: bool,
    pub head: Branch,
    pub base: Branch,
}

/// One entry of `GET /repos/{owner}/{repo}/pulls`: the same object as a
/// webhook's `pull_request`, which carries its own number.
#[derive(Debug, Deserialize)]
pub struct ListedPullRequest {
    pub number: u64,
    #[serde(flatten)]
    pub body: PullRequestBody,
}

/// One side of a pull request.
#[derive(Debug, Deserialize)]
pub struct Branch {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    /// The repository's id, also when `repo` is left out.
    #[serde(default)]
    pub repo_id: Option<u64>,
    /// `null` when the head fork was deleted.
    #[serde(default)]
    pub repo: Option<Repo>,
}

/// One page of `GET /repos/search`.
#[derive(Debug, Deserialize)]
pub struct SearchPage {
    pub data: Vec<Repo>,
}

/// `GET /repos/{owner}/{repo}/topics`.
#[derive(Debug, Deserialize)]
pub struct Topics {
    pub topics: Vec<String>,
}
