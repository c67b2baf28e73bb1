//! `github`: the forge plugin for GitHub and GitHub Enterprise Server, with a
//! personal access token (secret `github-token`) or as a GitHub App
//! (setting `app_id` and secret `github-app-private-key`; no token needed).
//!
//! - Webhooks (`events.rs`): `X-Hub-Signature-256` is checked with secret
//!   `github-webhook-secret` before the body is read; `push` (branches,
//!   merge queue branches `gh-readonly-queue/*`, `staging` and `trying`,
//!   tags; deleted refs ignored) and `pull_request` (opened, synchronize,
//!   reopened, closed) become change events, everything else is ignored with
//!   a note.
//! - App mode (`app.rs`): an RS256 JWT (`iat` a minute back, `exp` nine
//!   minutes ahead, `iss` the App) finds the repository's installation
//!   (`GET /repos/{owner}/{repo}/installation`, cached an hour) and mints its
//!   token (`POST /app/installations/{id}/access_tokens`, cached in the
//!   host's kv until five minutes before it expires; a cached token GitHub
//!   refuses with 401 is dropped and minted anew once). Every other request
//!   goes with the installation token.
//! - Reports: commit statuses (`report = "statuses"`, the default),
//!   `POST /repos/{owner}/{repo}/statuses/{sha}`; or check runs
//!   (`report = "checks"`, App mode only; `checks.rs`), one per context,
//!   `POST /repos/{owner}/{repo}/check-runs` then
//!   `PATCH /repos/{owner}/{repo}/check-runs/{id}` with the id kept in kv.
//!   Primary and secondary rate limits become `retry-after` with GitHub's
//!   wait (`api.rs`).
//! - Discovery, keeping repositories with the `topic` setting: with a token
//!   `GET /user/repos?per_page=100`; as an App `GET /app/installations` then
//!   `GET /installation/repositories` per installation; both follow
//!   `Link: rel="next"`. The search API was not used: it allows 30 requests
//!   a minute and returns at most 1,000 results.
//! - Clone credentials: `x-access-token` and the personal token (reused until
//!   a fetch fails) or the installation token (reused while it is valid).
//!
//! It must not log a token, the JWT, the App's key or the webhook secret,
//! send them to a host other than the `api` setting's, or parse a body whose
//! signature failed.

mod api;
mod app;
mod checks;
mod events;

use std::time::{SystemTime, UNIX_EPOCH};

use kiln_plugin_sdk::http::{self, Request, Response};
use kiln_plugin_sdk::{
    Config, Forge, GitCredentials, PluginError, PluginInfo, PullRequest, Repository, StatusReport,
    WebhookError, WebhookOutcome, WebhookRequest, WorldKind, export_forge, log, secrets,
};

use crate::api::{Api, Credential, DEFAULT_API};
use crate::app::App;

/// The secret GitHub signs webhooks with.
const WEBHOOK_SECRET: &str = "github-webhook-secret";
/// The secret holding the personal access token.
const TOKEN_SECRET: &str = "github-token";
/// The topic that marks repositories to build unless configured otherwise
/// (buildbot-nix's, so projects move over unchanged).
const DEFAULT_TOPIC: &str = "build-with-buildbot";
/// The most pages read in one discovery (10,000 repositories or installations).
const MAX_PAGES: usize = 100;
/// Clone credentials from an installation token stop this long before it
/// expires, so that a fetch does not start with a token about to lapse.
const CLONE_MARGIN_SECS: u64 = 60;

struct GitHub;

/// How the plugin authenticates, from the settings.
enum Auth {
    /// A personal access token.
    Token(String),
    /// A GitHub App.
    App(App),
}

/// How reports are posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportKind {
    Statuses,
    Checks,
}

/// The `report` setting; `checks` needs App mode, as GitHub only lets Apps
/// create check runs.
fn report_kind(config: &Config) -> Result<ReportKind, PluginError> {
    match config.get("report").map(str::trim) {
        None | Some("statuses") => Ok(ReportKind::Statuses),
        Some("checks") if config.get("app_id").is_some() => Ok(ReportKind::Checks),
        Some("checks") => Err(PluginError::failed(
            "setting `report = \"checks\"` needs GitHub App mode: GitHub lets only Apps create \
             check runs; set `app_id` and secret `github-app-private-key`, or use \
             `report = \"statuses\"`",
        )),
        Some(other) => Err(PluginError::failed(format!(
            "setting `report` must be `statuses` or `checks`, not `{other}`"
        ))),
    }
}

/// The API endpoint and how to authenticate to it.
fn setup(config: &Config) -> Result<(Api, Auth), PluginError> {
    let api = Api::new(config.get("api").unwrap_or(DEFAULT_API))?;
    let auth = match config.get("app_id") {
        Some(id) => Auth::App(App::from_secret(id)?),
        None => Auth::Token(secrets::get_string(TOKEN_SECRET).map_err(|e| {
            PluginError::failed(format!(
                "cannot read secret `{TOKEN_SECRET}` (or set `app_id` for GitHub App mode): {}",
                e.describe()
            ))
        })?),
    };
    Ok((api, auth))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sends `request` and returns the answer, whatever its status.
fn exchange(request: Request) -> Result<Answer, PluginError> {
    let url = request.url.clone();
    let response = http::send(request).map_err(|e| api::unreachable(&url, &e))?;
    Ok(Answer { url, response })
}

/// Sends `request`, made with `credential`, and checks the answer; `what`
/// names it in errors.
fn send(request: Request, what: &str, credential: Credential) -> Result<Response, PluginError> {
    let answer = exchange(request)?;
    api::check(what, &answer.url, answer.response, now(), credential)
}

/// A request's URL and GitHub's answer to it.
pub(crate) struct Answer {
    url: String,
    response: Response,
}

/// Who requests about one repository or installation are made as.
pub(crate) enum Caller<'a> {
    /// The personal access token.
    Token(&'a str),
    /// An installation of the App, with its token.
    Installation { app: &'a App, api: &'a Api, id: u64 },
}

impl Caller<'_> {
    /// The caller for `repository` under `auth`.
    fn for_repository<'a>(
        auth: &'a Auth,
        api: &'a Api,
        repository: &Repository,
    ) -> Result<Caller<'a>, PluginError> {
        Ok(match auth {
            Auth::Token(token) => Caller::Token(token),
            Auth::App(app) => Caller::Installation {
                app,
                api,
                id: app.installation(api, repository, now())?,
            },
        })
    }

    fn credential(&self) -> Credential {
        match self {
            Self::Token(_) => Credential::Token,
            Self::Installation { .. } => Credential::Installation,
        }
    }

    /// Sends the request `build` makes with this caller's token and returns
    /// the answer, whatever its status. An installation token from the cache
    /// that GitHub refuses (401: revoked, or the cache outlived it) is
    /// dropped and the request sent once more with a new one.
    fn exchange(
        &self,
        build: impl Fn(&str) -> Result<Request, PluginError>,
    ) -> Result<Answer, PluginError> {
        match *self {
            Self::Token(token) => exchange(build(token)?),
            Self::Installation { app, api, id } => {
                let (token, cached) = app.token(api, id, now())?;
                let answer = exchange(build(&token.token)?)?;
                if answer.response.status != 401 || !cached {
                    return Ok(answer);
                }
                log::warn!(
                    "GitHub refused the cached token of installation {id}; minting a new one"
                );
                app.forget_token(id);
                let token = app.mint(api, id, now())?;
                exchange(build(&token.token)?)
            }
        }
    }

    /// Checks `answer` to the request `what`.
    fn check(&self, what: &str, answer: Answer) -> Result<Response, PluginError> {
        api::check(what, &answer.url, answer.response, now(), self.credential())
    }

    /// [`Caller::exchange`], then [`Caller::check`].
    fn send(
        &self,
        what: &str,
        build: impl Fn(&str) -> Result<Request, PluginError>,
    ) -> Result<Response, PluginError> {
        let answer = self.exchange(build)?;
        self.check(what, answer)
    }
}

/// Reads the pages from `first` on, following `rel="next"` links, with
/// `fetch`; `each` takes every page's body. Stops after `budget` pages in
/// all, counting them down.
fn each_page(
    api: &Api,
    first: String,
    budget: &mut usize,
    fetch: impl Fn(&str) -> Result<Response, PluginError>,
    mut each: impl FnMut(&[u8]) -> Result<(), PluginError>,
) -> Result<(), PluginError> {
    let mut url = Some(first);
    while let Some(page) = url.take() {
        if *budget == 0 {
            log::warn!("stopped listing after {MAX_PAGES} pages");
            break;
        }
        *budget -= 1;
        let response = fetch(&page)?;
        each(&response.body)?;
        url = api.next_page(&response)?;
    }
    Ok(())
}

/// Repositories with `topic` among the token's.
fn token_repositories(api: &Api, token: &str, topic: &str) -> Result<Vec<Repository>, PluginError> {
    let mut found = Vec::new();
    let mut budget = MAX_PAGES;
    let caller = Caller::Token(token);
    each_page(
        api,
        api.repositories_url(),
        &mut budget,
        |url| {
            caller.send("list the token's repositories", |t| {
                Ok(api.request("GET", url, t))
            })
        },
        |page| {
            found.extend(api::repositories_with_topic(page, topic)?);
            Ok(())
        },
    )?;
    Ok(found)
}

/// Repositories with `topic` in all of the App's installations; each one's
/// installation is cached for the reports that follow.
fn app_repositories(api: &Api, app: &App, topic: &str) -> Result<Vec<Repository>, PluginError> {
    let mut installations = Vec::new();
    let mut budget = MAX_PAGES;
    let what = format!("list the installations of GitHub App {}", app.id());
    each_page(
        api,
        api.installations_url(),
        &mut budget,
        |url| {
            send(
                api.request("GET", url, &app.jwt(now())?),
                &what,
                Credential::AppJwt,
            )
        },
        |page| {
            let page: Vec<app::Installation> = serde_json::from_slice(page).map_err(|e| {
                PluginError::failed(format!("GitHub's answer to {what} does not parse: {e}"))
            })?;
            installations.extend(page);
            Ok(())
        },
    )?;
    let mut found = Vec::new();
    for installation in installations {
        let account = installation
            .account
            .as_ref()
            .map_or("?", |a| a.login.as_str());
        if installation.suspended_at.is_some() {
            log::info!(
                "skipping installation {} ({account}): suspended",
                installation.id
            );
            continue;
        }
        let caller = Caller::Installation {
            app,
            api,
            id: installation.id,
        };
        let what = format!(
            "list the repositories of installation {} ({account})",
            installation.id
        );
        each_page(
            api,
            api.installation_repositories_url(),
            &mut budget,
            |url| caller.send(&what, |t| Ok(api.request("GET", url, t))),
            |page| {
                for repository in api::installation_repositories_with_topic(page, topic)? {
                    app::remember_installation(
                        &repository.owner,
                        &repository.name,
                        installation.id,
                    );
                    found.push(repository);
                }
                Ok(())
            },
        )?;
    }
    Ok(found)
}

impl Forge for GitHub {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Forge,
            "github",
            env!("CARGO_PKG_VERSION"),
            "GitHub (personal token or GitHub App): signed webhooks, commit statuses or check \
             runs, repositories by topic, clone credentials",
        )
        .secret(WEBHOOK_SECRET)
        .secret(TOKEN_SECRET)
        .secret(app::KEY_SECRET)
        .host("api.github.com")
        .kv()
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
        .optional_config(
            "app_id",
            "GitHub App mode: the App's id (or client id); then secret `github-app-private-key` \
             (the App's PEM key) replaces `github-token`, and kv must be granted",
            None,
        )
        .optional_config(
            "report",
            "`statuses` (commit statuses) or `checks` (check runs, App mode only)",
            Some("statuses"),
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
        let kind = report_kind(&config)?;
        let (api, auth) = setup(&config)?;
        let caller = Caller::for_repository(&auth, &api, &report.repository)?;
        match kind {
            ReportKind::Statuses => {
                let what = format!(
                    "post status `{}` on {}@{}",
                    report.context, report.repository.full_name, report.rev
                );
                caller.send(&what, |token| api.status(&report, token))?;
            }
            ReportKind::Checks => checks::report(&api, &caller, &report)?,
        }
        Ok(())
    }

    fn list_repositories(config: Config) -> Result<Vec<Repository>, PluginError> {
        let (api, auth) = setup(&config)?;
        let topic = config.get("topic").unwrap_or(DEFAULT_TOPIC);
        let found = match &auth {
            Auth::Token(token) => token_repositories(&api, token, topic)?,
            Auth::App(app) => app_repositories(&api, app, topic)?,
        };
        log::info!("{} repositories with topic `{topic}`", found.len());
        Ok(found)
    }

    fn clone_credentials(
        repository: Repository,
        config: Config,
    ) -> Result<GitCredentials, PluginError> {
        let (api, auth) = setup(&config)?;
        match &auth {
            // A personal token lives until it is revoked: reuse it until a fetch fails.
            Auth::Token(token) => Ok(GitCredentials::token(
                repository.clone_url,
                "x-access-token",
                token.clone(),
                None,
            )),
            Auth::App(app) => {
                let now = now();
                let installation = app.installation(&api, &repository, now)?;
                let (token, _) = app.token(&api, installation, now)?;
                let valid = token
                    .expires_at
                    .saturating_sub(now + CLONE_MARGIN_SECS)
                    .min(u64::from(u32::MAX));
                Ok(GitCredentials::token(
                    repository.clone_url,
                    "x-access-token",
                    token.token,
                    Some(u32::try_from(valid).unwrap_or(u32::MAX)),
                ))
            }
        }
    }

    fn list_pull_requests(
        repository: Repository,
        config: Config,
    ) -> Result<Vec<PullRequest>, PluginError> {
        let (api, auth) = setup(&config)?;
        let caller = Caller::for_repository(&auth, &api, &repository)?;
        let first = format!(
            "{}/pulls?state=open&per_page=100",
            api.repo_url(&repository)?
        );
        let what = format!("list the open pull requests of {}", repository.full_name);
        let mut open = Vec::new();
        let mut budget = MAX_PAGES;
        each_page(
            &api,
            first,
            &mut budget,
            |url| caller.send(&what, |t| Ok(api.request("GET", url, t))),
            |page| {
                let listed = events::open_pull_requests(page, &repository.clone_url)
                    .map_err(|e| PluginError::failed(format!("GitHub's answer to {what} {e}")))?;
                open.extend(listed);
                Ok(())
            },
        )?;
        log::info!(
            "{}: {} open pull requests",
            repository.full_name,
            open.len()
        );
        Ok(open)
    }
}

export_forge!(GitHub);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn check_runs_need_app_mode() {
        assert_eq!(report_kind(&config(&[])).unwrap(), ReportKind::Statuses);
        assert_eq!(
            report_kind(&config(&[("report", "statuses")])).unwrap(),
            ReportKind::Statuses
        );
        assert_eq!(
            report_kind(&config(&[("report", "checks"), ("app_id", "1")])).unwrap(),
            ReportKind::Checks
        );
        let err = report_kind(&config(&[("report", "checks")])).unwrap_err();
        assert!(
            format!("{err:?}").contains("needs GitHub App mode"),
            "{err:?}"
        );
        let err = report_kind(&config(&[("report", "check-runs")])).unwrap_err();
        assert!(
            format!("{err:?}").contains("must be `statuses` or `checks`, not `check-runs`"),
            "{err:?}"
        );
    }
}
