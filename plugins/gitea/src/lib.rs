//! `gitea`: the forge plugin for Gitea and Forgejo (Codeberg included),
//! with an access token.
//!
//! - Webhooks (`events.rs`): `X-Gitea-Signature` or Forgejo's
//!   `X-Forgejo-Signature` (every one present must match) is checked with
//!   secret `gitea-webhook-secret` before the body is read; the event comes
//!   from `X-Gitea-Event`/`X-Forgejo-Event` (else the `-Event-Type` header),
//!   the delivery id from `X-Gitea-Delivery`/`X-Forgejo-Delivery`. `push`
//!   (branches and tags; a deleted ref is ignored) and `pull_request`
//!   (opened, synchronized, reopened, closed or merged, and edited when the
//!   target branch changed) become change events; everything else is
//!   ignored with a note. Payload fields are read through small serde
//!   structs (`payload.rs`).
//! - Trust: Gitea's payloads say nothing about the author's role, so a pull
//!   request's author is trusted when they own the repository or are listed
//!   in setting `trusted_users`. A pull request from the base repository is
//!   not trusted for that alone: Gitea's AGit flow lets anyone open one.
//! - Statuses (`api.rs`): `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`
//!   with `Authorization: token …` from secret `gitea-token`; running is
//!   `pending`, cancelled is `error`; 429 and 5xx become `retry-after`.
//! - Discovery: `GET /api/v1/repos/search?q=TOPIC&topic=true`, page by page
//!   while Gitea's `Link` (else `X-Total-Count`, else a full page) says more
//!   follow, keeping repositories whose topics really hold the
//!   `topic` setting (reading `/topics` when a result lacks them) and that
//!   are not archived.
//! - Open pull requests (for reconciliation): `GET
//!   /api/v1/repos/{owner}/{repo}/pulls?state=open`, paged as discovery is,
//!   each read as its `pull_request` webhook is (same trust rule), as
//!   `opened`.
//! - Clone credentials: setting `user` (default `kiln`; Gitea takes the
//!   token's owner whatever the name) and the token, only for clone URLs on
//!   the server of setting `url`.
//!
//! On the Gitea side, a webhook of type Gitea (or Forgejo) with content type
//! `application/json`, the secret, and the events "Push", "Pull Request"
//! and "Pull Request Synchronized" (a separate event in Gitea). The token
//! needs `write:repository` (statuses) and `read:repository` (discovery,
//! clones).
//!
//! It must not log the token or the webhook secret, send the token to a host
//! other than setting `url`'s, or parse a body whose signature failed.

mod api;
mod events;
mod payload;

use std::collections::BTreeSet;

use kiln_plugin_sdk::status::{host_of, unreachable};
use kiln_plugin_sdk::{
    Config, Forge, GitCredentials, PluginError, PluginInfo, PullRequest, Repository, StatusReport,
    WebhookError, WebhookOutcome, WebhookRequest, WorldKind, export_forge, http, log, secrets,
};

use crate::api::{Api, TOKEN_SECRET};
use crate::events::Trust;

/// The secret Gitea signs webhooks with.
const WEBHOOK_SECRET: &str = "gitea-webhook-secret";
/// The topic that marks repositories to build unless configured otherwise
/// (buildbot-nix's, so projects move over unchanged).
const DEFAULT_TOPIC: &str = "build-with-buildbot";
/// The user name sent with the token for `git fetch`.
const DEFAULT_USER: &str = "kiln";
/// The most search pages read (5,000 repositories).
const MAX_PAGES: usize = 100;
/// The most pages of a repository's open pull requests read (1,000).
const MAX_PULL_PAGES: usize = 20;

struct Gitea;

/// The access token.
fn token() -> Result<String, PluginError> {
    let token = secrets::get_string(TOKEN_SECRET).map_err(|e| {
        PluginError::failed(format!(
            "cannot read secret `{TOKEN_SECRET}`: {}",
            e.describe()
        ))
    })?;
    Ok(token.trim().to_owned())
}

fn api(config: &Config) -> Result<Api, PluginError> {
    Api::new(config.require("url")?, token()?)
}

/// Sends `request` and checks the answer; `what` names it in errors.
fn send(request: http::Request, what: &str) -> Result<http::Response, PluginError> {
    let url = request.url.clone();
    let response = http::send(request).map_err(|e| unreachable("Gitea", &url, &e))?;
    api::check(what, &url, response)
}

/// Setting `trusted_users`: names separated by commas, or a TOML list.
fn trust(config: &Config) -> Result<Trust, PluginError> {
    let text = config.get("trusted_users").unwrap_or("").trim();
    let users = if text.starts_with('[') {
        config.get_list("trusted_users")?
    } else {
        text.split(',').map(str::to_owned).collect()
    };
    Ok(Trust {
        users: users
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
    })
}

impl Forge for Gitea {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Forge,
            "gitea",
            env!("CARGO_PKG_VERSION"),
            "Gitea and Forgejo: signed webhooks, commit statuses, repositories by topic, clone \
             credentials",
        )
        .secret(WEBHOOK_SECRET)
        .secret(TOKEN_SECRET)
        .required_config(
            "url",
            "The server's address, such as https://codeberg.org (grant its host)",
        )
        .optional_config(
            "topic",
            "Repositories with this topic are built",
            Some(DEFAULT_TOPIC),
        )
        .optional_config(
            "trusted_users",
            "Users besides the repository owner whose pull requests may use secrets \
             (comma-separated, or a list)",
            None,
        )
        .optional_config(
            "user",
            "The user name sent with the token to git",
            Some(DEFAULT_USER),
        )
    }

    fn handle_webhook(
        request: WebhookRequest,
        config: Config,
    ) -> Result<WebhookOutcome, WebhookError> {
        let secret = secrets::get(WEBHOOK_SECRET).map_err(|e| {
            WebhookError::Unauthenticated(format!(
                "cannot read secret `{WEBHOOK_SECRET}`: {}",
                e.describe()
            ))
        })?;
        let trust = trust(&config).map_err(|e| match e {
            PluginError::Failed(m) => WebhookError::Malformed(m),
            PluginError::RetryAfter(r) => WebhookError::RetryAfter(r),
        })?;
        let outcome = events::handle(&request, &secret, &trust)?;
        log::info!(
            "{} delivery {}",
            request
                .header("x-forgejo-event")
                .or_else(|| request.header("x-gitea-event"))
                .unwrap_or("?"),
            outcome.delivery.as_deref().unwrap_or("-")
        );
        Ok(outcome)
    }

    fn report_status(report: StatusReport, config: Config) -> Result<(), PluginError> {
        let api = api(&config)?;
        let request = api.status(&report)?;
        let what = format!(
            "post status `{}` on {}@{}",
            report.context, report.repository.full_name, report.rev
        );
        send(request, &what)?;
        Ok(())
    }

    fn list_repositories(config: Config) -> Result<Vec<Repository>, PluginError> {
        let api = api(&config)?;
        let topic = api::topic(config.get("topic").unwrap_or(DEFAULT_TOPIC))?;
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        let (mut pages, mut read) = (0, 0);
        for page in 1..=MAX_PAGES {
            pages = page;
            let what = format!("search repositories with topic `{topic}` (page {page})");
            let response = send(api.search(&topic, page), &what)?;
            let repos = api::search_page(api.host(), &response.body)?;
            read += repos.len();
            let more = api::more_pages(&response, repos.len(), read);
            for mut repo in repos {
                // Results shift between pages while repositories change.
                if repo.archived || !seen.insert(repo.id) {
                    continue;
                }
                if repo.topics.is_none() {
                    let what = format!("read the topics of {}", repo.full_name);
                    let response = send(api.topics(&repo)?, &what)?;
                    repo.topics = Some(api::topics(api.host(), &response.body)?);
                }
                // The search may match topics partially; keep exact ones.
                if repo.topics.as_ref().is_some_and(|t| t.contains(&topic)) {
                    found.push(repo.to_kiln().map_err(PluginError::failed)?);
                }
            }
            if !more {
                break;
            }
            if page == MAX_PAGES {
                log::warn!("stopped listing repositories after {MAX_PAGES} pages");
            }
        }
        log::info!(
            "{} repositories with topic `{topic}` in {pages} pages",
            found.len()
        );
        Ok(found)
    }

    fn list_pull_requests(
        repository: Repository,
        config: Config,
    ) -> Result<Vec<PullRequest>, PluginError> {
        let api = api(&config)?;
        let trust = trust(&config)?;
        let mut open = Vec::new();
        let mut seen = BTreeSet::new();
        let (mut pages, mut read) = (0, 0);
        for page in 1..=MAX_PULL_PAGES {
            pages = page;
            let what = format!(
                "list the open pull requests of {} (page {page})",
                repository.full_name
            );
            let response = send(api.pulls(&repository, page)?, &what)?;
            let pulls = api::pulls_page(api.host(), &response.body)?;
            read += pulls.len();
            let more = api::more_pages(&response, pulls.len(), read);
            let listed = events::open_pull_requests(&pulls, &repository, &trust).map_err(|e| {
                PluginError::failed(format!("Gitea at {} answered {what} with {e}", api.host()))
            })?;
            // Pull requests shift between pages while others close.
            open.extend(listed.into_iter().filter(|pr| seen.insert(pr.number)));
            if !more {
                break;
            }
            if page == MAX_PULL_PAGES {
                log::warn!(
                    "stopped listing the open pull requests of {} after {MAX_PULL_PAGES} pages",
                    repository.full_name
                );
            }
        }
        log::info!(
            "{}: {} open pull requests in {pages} pages",
            repository.full_name,
            open.len()
        );
        Ok(open)
    }

    fn clone_credentials(
        repository: Repository,
        config: Config,
    ) -> Result<GitCredentials, PluginError> {
        let api = api(&config)?;
        let clone_host = host_of(&repository.clone_url);
        if !clone_host.eq_ignore_ascii_case(api.host()) {
            return Err(PluginError::failed(format!(
                "{} is cloned from {clone_host}, not from the Gitea server {} of setting `url`; \
                 refusing to hand out its token for another host",
                repository.full_name,
                api.host()
            )));
        }
        let user = config.get("user").unwrap_or(DEFAULT_USER);
        // An access token lives until it is revoked: reuse it until a fetch fails.
        Ok(GitCredentials::token(
            repository.clone_url,
            user,
            token()?,
            None,
        ))
    }
}

export_forge!(Gitea);
