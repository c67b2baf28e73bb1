//! `github`: the forge plugin for GitHub and GitHub Enterprise Server, with
//! a personal access token.
//!
//! - Webhooks (`events.rs`): `X-Hub-Signature-256` is checked with secret
//!   `github-webhook-secret` before the body is read; `push` (branches,
//!   merge queue branches, tags; deleted refs ignored) and `pull_request`
//!   (opened, synchronize, reopened, closed) become change events, everything
//!   else is ignored with a note.
//! - Statuses (`api.rs`): commit statuses, `POST /repos/{owner}/{repo}/statuses/{sha}`,
//!   with the token from secret `github-token`; rate limits become
//!   `retry-after` with GitHub's wait.
//! - Discovery: `GET /user/repos?per_page=100`, following `Link: rel="next"`,
//!   keeping repositories with the `topic` setting. The search API was not
//!   used: it allows 30 requests a minute and returns at most 1,000 results.
//! - Clone credentials: `x-access-token` and the token.
//!
//! It must not log the token or the webhook secret, send the token to a host
//! other than the `api` setting's, or parse a body whose signature failed.

mod api;
mod events;

use std::time::{SystemTime, UNIX_EPOCH};

use kiln_plugin_sdk::http;
use kiln_plugin_sdk::{
    Config, Forge, GitCredentials, PluginError, PluginInfo, Repository, StatusReport, WebhookError,
    WebhookOutcome, WebhookRequest, WorldKind, export_forge, log, secrets,
};

use crate::api::{Api, DEFAULT_API};

/// The secret GitHub signs webhooks with.
const WEBHOOK_SECRET: &str = "github-webhook-secret";
/// The secret holding the personal access token.
const TOKEN_SECRET: &str = "github-token";
/// The topic that marks repositories to build unless configured otherwise
/// (buildbot-nix's, so projects move over unchanged).
const DEFAULT_TOPIC: &str = "build-with-buildbot";
/// The most pages of repositories read (10,000 repositories).
const MAX_PAGES: usize = 100;

struct GitHub;

/// The personal access token.
fn token() -> Result<String, PluginError> {
    secrets::get_string(TOKEN_SECRET).map_err(|e| {
        PluginError::failed(format!(
            "cannot read secret `{TOKEN_SECRET}`: {}",
            e.describe()
        ))
    })
}

fn api(config: &Config) -> Result<Api, PluginError> {
    Api::new(config.get("api").unwrap_or(DEFAULT_API), token()?)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sends `request` and checks the answer; `what` names it in errors.
fn send(request: http::Request, what: &str) -> Result<http::Response, PluginError> {
    let url = request.url.clone();
    let response = http::send(request).map_err(|e| api::unreachable(&url, &e))?;
    api::check(what, &url, response, now())
}

impl Forge for GitHub {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Forge,
            "github",
            env!("CARGO_PKG_VERSION"),
            "GitHub: signed webhooks, commit statuses, repositories by topic, clone credentials",
        )
        .secret(WEBHOOK_SECRET)
        .secret(TOKEN_SECRET)
        .host("api.github.com")
        .optional_config(
            "api",
            "GitHub's REST API; for GitHub Enterprise Server https://HOST/api/v3 (grant its host)",
            Some(DEFAULT_API),
        )
        .optional_config(
            "topic",
            "Repositories with this topic are built",
            Some(DEFAULT_TOPIC),
        )
    }

    fn handle_webhook(
        request: WebhookRequest,
        _config: Config,
    ) -> Result<WebhookOutcome, WebhookError> {
        let secret = secrets::get(WEBHOOK_SECRET).map_err(|e| {
            WebhookError::Unauthenticated(format!(
                "cannot read secret `{WEBHOOK_SECRET}`: {}",
                e.describe()
            ))
        })?;
        let outcome = events::handle(&request, &secret)?;
        log::info!(
            "{} delivery {}",
            request.header("x-github-event").unwrap_or("?"),
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
        let topic = config.get("topic").unwrap_or(DEFAULT_TOPIC);
        let mut found = Vec::new();
        let mut url = Some(api.repositories_url());
        let mut pages = 0;
        while let Some(page) = url.take() {
            pages += 1;
            if pages > MAX_PAGES {
                log::warn!("stopped listing repositories after {MAX_PAGES} pages");
                break;
            }
            let response = send(api.request("GET", page), "list the token's repositories")?;
            found.extend(api::repositories_with_topic(&response.body, topic)?);
            url = api.next_page(&response)?;
        }
        log::info!(
            "{} repositories with topic `{topic}` in {pages} pages",
            found.len()
        );
        Ok(found)
    }

    fn clone_credentials(
        repository: Repository,
        _config: Config,
    ) -> Result<GitCredentials, PluginError> {
        let token = token()?;
        // A personal token lives until it is revoked: reuse it until a fetch fails.
        Ok(GitCredentials::token(
            repository.clone_url,
            "x-access-token",
            token,
            None,
        ))
    }
}

export_forge!(GitHub);
