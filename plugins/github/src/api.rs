//! GitHub's REST API as requests and answers: commit statuses, the
//! repository listings with `Link` pagination, and HTTP answers turned into
//! errors a user can act on (401 names the host and the credential, rate
//! limits become `retry-after` with GitHub's own wait).
//!
//! This module builds and reads; `lib.rs` sends. It must never put a token
//! in a message, and never follow a link to another host with it.

use kiln_plugin_sdk::http::{HttpError, Request, Response};
use kiln_plugin_sdk::{PluginError, Repository, StatusReport, StatusState};
use serde::Deserialize;
use serde_json::json;

/// GitHub.com's API; GitHub Enterprise Server's is `https://HOST/api/v3`.
pub const DEFAULT_API: &str = "https://api.github.com";
/// The longest description a commit status keeps.
pub const MAX_DESCRIPTION: usize = 140;
/// The wait asked for when GitHub rate-limits without saying how long
/// (its documentation: wait at least a minute).
const DEFAULT_RETRY_SECS: u32 = 60;
/// The wait asked for after a server error.
const SERVER_ERROR_RETRY_SECS: u32 = 30;
/// The longest wait asked for: a primary rate limit resets within the hour.
const MAX_RETRY_SECS: u32 = 3600;
/// How much of an error body a message quotes.
const BODY_EXCERPT: usize = 200;

/// Which credential a request carried, so that a refusal says what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The personal access token (secret `github-token`).
    Token,
    /// The GitHub App's JWT (setting `app_id`, secret `github-app-private-key`).
    AppJwt,
    /// An installation access token the App minted.
    Installation,
}

impl Credential {
    /// What a rate limit applies to.
    fn limited(self) -> &'static str {
        match self {
            Self::Token => "this token",
            Self::AppJwt => "this GitHub App",
            Self::Installation => "this App installation",
        }
    }

    /// What to do about HTTP 401.
    fn unauthorized(self) -> &'static str {
        match self {
            Self::Token => {
                "refused the token: check secret `github-token` (expired or revoked?) and that \
                 it belongs to this GitHub"
            }
            Self::AppJwt => {
                "refused the App's JWT: check setting `app_id` and that secret \
                 `github-app-private-key` is a current private key of that App (a clock more \
                 than a minute off also invalidates it)"
            }
            Self::Installation => {
                "refused a newly minted installation token: the App may have been uninstalled \
                 or suspended"
            }
        }
    }

    /// What to do about HTTP 403.
    fn forbidden(self) -> &'static str {
        match self {
            Self::Token => {
                "the token needs the `repo:status` scope (classic) or `Commit statuses: write` \
                 (fine-grained)"
            }
            Self::AppJwt | Self::Installation => {
                "the GitHub App needs the permissions `Commit statuses: write` (statuses), \
                 `Checks: write` (check runs), `Contents: read` and `Metadata: read`"
            }
        }
    }

    /// What to do about HTTP 404.
    fn not_found(self) -> &'static str {
        match self {
            Self::Token => "the repository does not exist or the token cannot see it",
            Self::AppJwt | Self::Installation => {
                "the repository does not exist, or the GitHub App is not installed on it"
            }
        }
    }
}

/// A GitHub API endpoint; requests carry the credential given to [`Api::request`].
pub struct Api {
    /// The API's base URL, without a trailing `/`.
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Result<Self, PluginError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(PluginError::failed(format!(
                "setting `api` must be an http(s) URL such as {DEFAULT_API} or \
                 https://github.example.com/api/v3, not `{base}`"
            )));
        }
        Ok(Self { base })
    }

    /// A request to `url` with GitHub's headers and `token` (a personal or
    /// installation token, or the App's JWT).
    pub fn request(&self, method: &str, url: impl Into<String>, token: &str) -> Request {
        Request::new(method, url)
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "kiln")
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    }

    /// `{base}/repos/{owner}/{repo}`, once both are GitHub names.
    pub fn repo_url(&self, repo: &Repository) -> Result<String, PluginError> {
        for (what, part) in [("owner", &repo.owner), ("name", &repo.name)] {
            if part.is_empty()
                || !part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(PluginError::failed(format!(
                    "repository {what} `{part}` is not a GitHub name"
                )));
            }
        }
        Ok(format!("{}/repos/{}/{}", self.base, repo.owner, repo.name))
    }

    /// `POST /repos/{owner}/{repo}/statuses/{sha}` for `report`, with `token`.
    pub fn status(&self, report: &StatusReport, token: &str) -> Result<Request, PluginError> {
        let repo_url = self.repo_url(&report.repository)?;
        commit_id(&report.rev)?;
        let mut body = json!({
            "state": state(report.state),
            "context": report.context,
            "description": description(&report.description),
        });
        if let Some(url) = &report.target_url {
            body["target_url"] = url.as_str().into();
        }
        let url = format!("{repo_url}/statuses/{}", report.rev);
        Ok(self
            .request("POST", url, token)
            .header("content-type", "application/json")
            .body(body.to_string()))
    }

    /// The first page of the token's repositories.
    pub fn repositories_url(&self) -> String {
        format!("{}/user/repos?per_page=100", self.base)
    }

    /// The first page of the App's installations (JWT).
    pub fn installations_url(&self) -> String {
        format!("{}/app/installations?per_page=100", self.base)
    }

    /// The first page of the repositories an installation token reaches.
    pub fn installation_repositories_url(&self) -> String {
        format!("{}/installation/repositories?per_page=100", self.base)
    }

    /// The `rel="next"` link of `response`, refused unless it stays on the
    /// API's scheme and host (the token goes with it).
    pub fn next_page(&self, response: &Response) -> Result<Option<String>, PluginError> {
        let Some(next) = response.header("link").and_then(next_link) else {
            return Ok(None);
        };
        if origin(&next) != origin(&self.base) {
            return Err(PluginError::failed(format!(
                "GitHub's next page link points at {}, not at the API {}; refusing to send \
                 the token there",
                host_of(&next),
                host_of(&self.base)
            )));
        }
        Ok(Some(next))
    }
}

/// `rev` when it is a full commit id.
pub fn commit_id(rev: &str) -> Result<&str, PluginError> {
    if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PluginError::failed(format!(
            "`{rev}` is not a commit id (40 hex digits)"
        )));
    }
    Ok(rev)
}

/// GitHub's status state for Kiln's: GitHub knows only four.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error | StatusState::Cancelled => "error",
    }
}

/// The first line of `text`, cut to [`MAX_DESCRIPTION`] characters with `…`.
pub fn description(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

/// The URL marked `rel="next"` in a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_owned())
    })
}

/// Scheme and `host[:port]` of an absolute URL.
fn origin(url: &str) -> (&str, &str) {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    (scheme, host_of(url))
}

/// The `host[:port]` of an absolute URL.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// A request to `url` that got no answer.
pub fn unreachable(url: &str, error: &HttpError) -> PluginError {
    let host = host_of(url);
    PluginError::failed(format!(
        "cannot reach GitHub at {host} ({url}): {error}; check setting `api` and that kiln.toml \
         grants this plugin HTTP to host `{host}`"
    ))
}

/// `response` when it is 2xx, else an error saying what to do. `what` says
/// what the request was for (`post a status on acme/widgets`), `credential`
/// what it was sent with; `now` is the Unix time, for `X-RateLimit-Reset`.
pub fn check(
    what: &str,
    url: &str,
    response: Response,
    now: u64,
    credential: Credential,
) -> Result<Response, PluginError> {
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let host = host_of(url);
    let body = excerpt(&response.body);
    let detail = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    if let Some(seconds) = rate_limited(&response, now) {
        return Err(PluginError::retry_after(
            seconds,
            format!(
                "GitHub at {host} rate-limits {} (HTTP {status} to {what}){detail}",
                credential.limited()
            ),
        ));
    }
    Err(match status {
        401 => PluginError::failed(format!(
            "GitHub at {host} answered HTTP 401 to {what}: it {}",
            credential.unauthorized()
        )),
        403 => PluginError::failed(format!(
            "GitHub at {host} answered HTTP 403 to {what}{detail}; {}",
            credential.forbidden()
        )),
        404 => PluginError::failed(format!(
            "GitHub at {host} answered HTTP 404 to {what}: {}",
            credential.not_found()
        )),
        500..=599 => PluginError::retry_after(
            SERVER_ERROR_RETRY_SECS,
            format!("GitHub at {host} answered HTTP {status} to {what}{detail}"),
        ),
        _ => PluginError::failed(format!(
            "GitHub at {host} answered HTTP {status} to {what} ({url}){detail}"
        )),
    })
}

/// How long GitHub asks to wait, when `response` is a rate limit: a
/// `Retry-After` (secondary limits), an exhausted `X-RateLimit-Remaining`
/// until `X-RateLimit-Reset`, or a 429 or 403 that says so without a time.
fn rate_limited(response: &Response, now: u64) -> Option<u32> {
    if !matches!(response.status, 403 | 429) {
        return None;
    }
    let number = |name: &str| response.header(name)?.trim().parse::<u64>().ok();
    let seconds = if let Some(after) = number("retry-after") {
        after
    } else if number("x-ratelimit-remaining") == Some(0) {
        number("x-ratelimit-reset").map_or(u64::from(DEFAULT_RETRY_SECS), |reset| {
            reset.saturating_sub(now)
        })
    } else if response.status == 429
        || String::from_utf8_lossy(&response.body)
            .to_ascii_lowercase()
            .contains("rate limit")
    {
        u64::from(DEFAULT_RETRY_SECS)
    } else {
        return None;
    };
    Some(
        u32::try_from(seconds)
            .unwrap_or(MAX_RETRY_SECS)
            .clamp(1, MAX_RETRY_SECS),
    )
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The repositories of one page of `GET /user/repos` that carry `topic`.
pub fn repositories_with_topic(page: &[u8], topic: &str) -> Result<Vec<Repository>, PluginError> {
    let repos: Vec<octocrab::models::Repository> = serde_json::from_slice(page).map_err(|e| {
        PluginError::failed(format!("GitHub's repository list does not parse: {e}"))
    })?;
    with_topic(repos, topic)
}

/// The repositories of one page of `GET /installation/repositories` that
/// carry `topic`.
pub fn installation_repositories_with_topic(
    page: &[u8],
    topic: &str,
) -> Result<Vec<Repository>, PluginError> {
    #[derive(Deserialize)]
    struct Page {
        repositories: Vec<octocrab::models::Repository>,
    }
    let page: Page = serde_json::from_slice(page).map_err(|e| {
        PluginError::failed(format!(
            "GitHub's list of an installation's repositories does not parse: {e}"
        ))
    })?;
    with_topic(page.repositories, topic)
}

fn with_topic(
    repos: Vec<octocrab::models::Repository>,
    topic: &str,
) -> Result<Vec<Repository>, PluginError> {
    repos
        .into_iter()
        .filter(|r| {
            r.topics
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == topic))
        })
        .map(|r| crate::events::convert_repository(r).map_err(PluginError::failed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn retry(result: Result<Response, PluginError>) -> u32 {
        match result {
            Err(PluginError::RetryAfter(r)) => r.seconds,
            other => panic!("not retry-after: {other:?}"),
        }
    }

    const URL: &str = "https://api.github.com/repos/a/b/statuses/x";

    #[test]
    fn rate_limits_become_retry_after_with_githubs_wait() {
        let now = 1_700_000_000;
        let check = |r| check("post a status", URL, r, now, Credential::Installation);
        assert_eq!(retry(check(response(429, &[("Retry-After", "7")], ""))), 7);
        assert_eq!(
            retry(check(response(403, &[("retry-after", "120")], ""))),
            120
        );
        let reset = (now + 42).to_string();
        let exhausted = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", reset.as_str()),
        ];
        assert_eq!(retry(check(response(403, &exhausted, ""))), 42);
        assert_eq!(retry(check(response(429, &[], ""))), 60);
        let secondary = r#"{"message": "You have exceeded a secondary rate limit."}"#;
        assert_eq!(retry(check(response(403, &[], secondary))), 60);
        // A reset in the past still waits a second.
        let past = [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")];
        assert_eq!(retry(check(response(403, &past, ""))), 1);
        assert_eq!(retry(check(response(502, &[], ""))), 30);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let failed = |r, credential| match check("post a status", URL, r, 0, credential) {
            Err(PluginError::Failed(m)) => m,
            other => panic!("not failed: {other:?}"),
        };
        let bad = || response(401, &[], r#"{"message": "Bad credentials"}"#);
        let m = failed(bad(), Credential::Token);
        assert!(
            m.starts_with(
                "GitHub at api.github.com answered HTTP 401 to post a status: it refused the token"
            ),
            "{m}"
        );
        assert!(m.contains("`github-token`"), "{m}");
        let m = failed(bad(), Credential::AppJwt);
        assert!(
            m.contains("`app_id`") && m.contains("`github-app-private-key`"),
            "{m}"
        );
        assert!(failed(bad(), Credential::Installation).contains("uninstalled or suspended"));
        let denied = || response(403, &[("x-ratelimit-remaining", "4999")], "no");
        let m = failed(denied(), Credential::Token);
        assert!(m.contains("HTTP 403") && m.contains("repo:status"), "{m}");
        let m = failed(denied(), Credential::Installation);
        assert!(m.contains("`Checks: write`"), "{m}");
        assert!(failed(response(404, &[], ""), Credential::Token).contains("HTTP 404"));
        let m = failed(response(404, &[], ""), Credential::AppJwt);
        assert!(m.contains("not installed"), "{m}");
        assert!(check("x", URL, response(201, &[], ""), 0, Credential::Token).is_ok());
    }

    #[test]
    fn next_links_and_their_origin() {
        let link = r#"<https://api.github.com/user/repos?per_page=100&page=2>; rel="next", <https://api.github.com/user/repos?per_page=100&page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/user/repos?per_page=100&page=2")
        );
        let last = r#"<https://api.github.com/user/repos?page=1>; rel="prev", <https://api.github.com/user/repos?page=1>; rel="first""#;
        assert_eq!(next_link(last), None);

        let api = Api::new("https://ghe.test/api/v3/").unwrap();
        assert_eq!(
            api.repositories_url(),
            "https://ghe.test/api/v3/user/repos?per_page=100"
        );
        assert_eq!(
            api.installations_url(),
            "https://ghe.test/api/v3/app/installations?per_page=100"
        );
        assert_eq!(
            api.installation_repositories_url(),
            "https://ghe.test/api/v3/installation/repositories?per_page=100"
        );
        let on = response(
            200,
            &[(
                "link",
                "<https://ghe.test/api/v3/user/repos?page=2>; rel=\"next\"",
            )],
            "",
        );
        assert_eq!(
            api.next_page(&on).unwrap().as_deref(),
            Some("https://ghe.test/api/v3/user/repos?page=2")
        );
        let off = response(
            200,
            &[(
                "link",
                "<https://evil.test/user/repos?page=2>; rel=\"next\"",
            )],
            "",
        );
        let err = api.next_page(&off).unwrap_err();
        assert!(
            format!("{err:?}").contains("refusing to send the token"),
            "{err:?}"
        );
        assert!(Api::new("api.github.com").is_err());
    }

    #[test]
    fn descriptions_are_one_line_of_at_most_140_characters() {
        assert_eq!(description("3 of 5 failed\nmore"), "3 of 5 failed");
        let long = "é".repeat(200);
        let cut = description(&long);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn states_map_onto_githubs_four() {
        assert_eq!(state(StatusState::Running), "pending");
        assert_eq!(state(StatusState::Cancelled), "error");
        assert_eq!(state(StatusState::Failure), "failure");
    }

    #[test]
    fn repositories_are_filtered_by_topic() {
        let push: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/push.json")).unwrap();
        let mut tagged = push["repository"].clone();
        tagged["topics"] = json!(["nix", "build-with-buildbot"]);
        let mut other = push["repository"].clone();
        other["name"] = "other".into();
        other["full_name"] = "kiln-example/other".into();
        other["topics"] = json!(["nix"]);
        let page = serde_json::to_vec(&json!([tagged, other])).unwrap();
        let repos = repositories_with_topic(&page, "build-with-buildbot").unwrap();
        assert_eq!(repos.len(), 1);
        assert_eq!(repos[0].full_name, "kiln-example/hello-flake");
        assert_eq!(repos[0].topics, ["nix", "build-with-buildbot"]);
        assert!(repositories_with_topic(b"{}", "x").is_err());

        let installation = serde_json::to_vec(&json!({
            "total_count": 2,
            "repositories": [other, push["repository"].clone()],
        }))
        .unwrap();
        let repos = installation_repositories_with_topic(&installation, "nix").unwrap();
        assert_eq!(repos.len(), 1);
        assert_eq!(repos[0].full_name, "kiln-example/other");
        assert!(installation_repositories_with_topic(&page, "nix").is_err());
    }
}
