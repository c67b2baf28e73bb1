//! Gerrit's REST API as requests and answers: the change a webhook names,
//! a project's open changes, an account's groups, a project's `HEAD`, the project list and the review
//! that carries the vote, plus HTTP answers turned into errors a user can
//! act on.
//!
//! Every answer starts with Gerrit's `)]}'` line (against cross-site script
//! inclusion); [`json`] strips it. This module builds and reads; `lib.rs`
//! sends. It must never put the password or the authorization header in a
//! message.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_plugin_sdk::http::{HttpError, Request, Response};
use kiln_plugin_sdk::status::{self, host_of};
use kiln_plugin_sdk::{PluginError, Retry};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The wait asked for when Gerrit cannot be reached.
pub const DEFAULT_RETRY_SECS: u32 = 30;
/// The wait asked for when Gerrit refuses Kiln's own credentials: the event
/// is authentic, and it is handled once the operator fixes them.
pub const REFUSED_RETRY_SECS: u32 = 300;
/// How much of an error body a message quotes.
const BODY_EXCERPT: usize = 200;
/// Gerrit's prefix against cross-site script inclusion.
const XSSI_PREFIX: &[u8] = b")]}'";

/// A Gerrit instance's REST API, reached with the account's HTTP password.
pub struct Api {
    /// The base URL (`https://review.example.org`), without a trailing `/`.
    pub base: String,
    /// `Basic …` for the account.
    authorization: String,
}

impl Api {
    pub fn new(base: &str, username: &str, password: &str) -> Result<Self, PluginError> {
        let base = checked_base("url", base)?;
        let credentials = STANDARD.encode(format!("{username}:{password}"));
        Ok(Self {
            base,
            authorization: format!("Basic {credentials}"),
        })
    }

    /// An authenticated request to `path` (starting with `/a/`).
    pub fn request(&self, method: &str, path: &str) -> Request {
        Request::new(method, format!("{}{path}", self.base))
            .header("authorization", self.authorization.as_str())
            .header("accept", "application/json")
            .header("user-agent", "kiln")
    }

    /// `GET /a/changes/{project}~{number}` with the current revision, its
    /// commit and the owner's account details.
    pub fn change(&self, project: &str, number: u64) -> Request {
        self.request(
            "GET",
            &format!(
                "/a/changes/{}~{number}?o=CURRENT_REVISION&o=CURRENT_COMMIT&o=DETAILED_ACCOUNTS",
                encode(project)
            ),
        )
    }

    /// One page of `GET /a/changes/`: the open changes of `project` from
    /// `skip`, with their current revision and owner's account details.
    pub fn open_changes(&self, project: &str, skip: usize) -> Request {
        self.request(
            "GET",
            &format!(
                "/a/changes/?q=status:open+project:{}&o=CURRENT_REVISION&o=DETAILED_ACCOUNTS&S={skip}",
                encode(project)
            ),
        )
    }

    /// `GET /a/accounts/{id}/groups`.
    pub fn groups(&self, account: u64) -> Request {
        self.request("GET", &format!("/a/accounts/{account}/groups"))
    }

    /// `GET /a/projects/{project}/HEAD`.
    pub fn head(&self, project: &str) -> Request {
        self.request("GET", &format!("/a/projects/{}/HEAD", encode(project)))
    }

    /// `GET /a/projects/{project}/commits/{rev}`.
    pub fn commit(&self, project: &str, rev: &str) -> Request {
        self.request(
            "GET",
            &format!("/a/projects/{}/commits/{}", encode(project), encode(rev)),
        )
    }

    /// One page of `GET /a/projects/`: active code projects with their
    /// descriptions, `limit` from `skip`.
    pub fn projects(&self, skip: usize, limit: usize) -> Request {
        self.request(
            "GET",
            &format!("/a/projects/?d&type=CODE&state=ACTIVE&n={limit}&S={skip}"),
        )
    }

    /// `POST /a/changes/{project}~{number}/revisions/{rev}/review`.
    pub fn review(&self, project: &str, number: u64, rev: &str, body: String) -> Request {
        self.request(
            "POST",
            &format!(
                "/a/changes/{}~{number}/revisions/{rev}/review",
                encode(project)
            ),
        )
        .header("content-type", "application/json; charset=UTF-8")
        .body(body)
    }
}

/// `url` without a trailing `/`, when it is an http(s) URL; `key` names the
/// setting in the error.
pub fn checked_base(key: &str, url: &str) -> Result<String, PluginError> {
    let base = url.trim().trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) || host_of(base).is_empty() {
        return Err(PluginError::failed(format!(
            "setting `{key}` must be an http(s) URL such as https://review.example.org, not \
             `{base}`"
        )));
    }
    Ok(base.to_owned())
}

/// `text` percent-encoded as one path segment: a project `infra/tools`
/// becomes `infra%2Ftools`, as Gerrit's project ids want.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The JSON of a Gerrit answer, its `)]}'` line removed; `what` names the
/// answer in the error.
pub fn json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    let body = body.trim_ascii_start();
    let body = match body.strip_prefix(XSSI_PREFIX) {
        Some(rest) => rest,
        None => body,
    };
    serde_json::from_slice(body).map_err(|e| format!("Gerrit's {what} does not parse: {e}"))
}

/// An account as `DETAILED_ACCOUNTS` shows it.
#[derive(Debug, Deserialize)]
pub struct Account {
    #[serde(rename = "_account_id")]
    pub id: u64,
    pub username: Option<String>,
}

impl Account {
    /// The login: the username, or the numeric account id for an account
    /// without one (Gerrit shows both as `owner:` search terms).
    pub fn login(&self) -> String {
        self.username.clone().unwrap_or_else(|| self.id.to_string())
    }
}

/// A revision of `revisions`.
#[derive(Debug, Deserialize)]
pub struct Revision {
    #[serde(rename = "_number")]
    pub number: u64,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: Option<Commit>,
}

/// A `CommitInfo`, as a revision's `commit` or `GET …/commits/{rev}`.
#[derive(Debug, Deserialize)]
pub struct Commit {
    pub message: Option<String>,
}

/// The parts of a `ChangeInfo` Kiln reads.
#[derive(Debug, Deserialize)]
pub struct Change {
    pub project: String,
    pub branch: String,
    pub subject: String,
    pub status: String,
    #[serde(rename = "_number")]
    pub number: u64,
    pub owner: Account,
    pub current_revision: Option<String>,
    #[serde(default)]
    pub revisions: BTreeMap<String, Revision>,
    /// Set on the last change of a query's page when more follow.
    #[serde(rename = "_more_changes", default)]
    pub more: bool,
}

/// A `GroupInfo`: its UUID and its name.
#[derive(Debug, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: Option<String>,
}

/// A `ProjectInfo` of the project list.
#[derive(Debug, Deserialize)]
pub struct Project {
    pub description: Option<String>,
    #[serde(rename = "_more_projects", default)]
    pub more: bool,
}

/// Why a request to Gerrit did not give an answer to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying after the wait: unreachable, 429 or 5xx.
    Retry(Retry),
    /// HTTP 401 or 403: Kiln's account or its permissions need fixing. A
    /// webhook waits for the fix ([`REFUSED_RETRY_SECS`]); a report fails.
    Refused(String),
    /// HTTP 404: the change or project does not exist, or the account
    /// cannot see it.
    NotFound(String),
    /// HTTP 409: the change's state forbids it (a vote on an abandoned
    /// change).
    Conflict(String),
    /// Anything else.
    Failed(String),
}

impl Failure {
    /// The message of a failure that is not a retry.
    pub fn message(self) -> Result<String, Retry> {
        match self {
            Self::Retry(retry) => Err(retry),
            Self::Refused(m) | Self::NotFound(m) | Self::Conflict(m) | Self::Failed(m) => Ok(m),
        }
    }
}

impl From<Failure> for PluginError {
    fn from(failure: Failure) -> Self {
        match failure.message() {
            Ok(message) => PluginError::Failed(message),
            Err(retry) => PluginError::RetryAfter(retry),
        }
    }
}

fn retry(seconds: u32, reason: String) -> Failure {
    Failure::Retry(Retry { seconds, reason })
}

/// A request to `url` that got no answer: retried, since Gerrit may be
/// restarting.
pub fn unreachable(what: &str, url: &str, error: &HttpError) -> Failure {
    let host = host_of(url);
    retry(
        DEFAULT_RETRY_SECS,
        format!(
            "cannot reach Gerrit at {host} to {what} ({url}): {error}; check setting `url` and \
             that kiln.toml grants this plugin HTTP to host `{host}`"
        ),
    )
}

/// `response` when it is 2xx, else why not. `what` says what the request
/// was for (`read change infra/tools~12`).
pub fn check(what: &str, url: &str, response: Response) -> Result<Response, Failure> {
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let host = host_of(url);
    let detail = detail(&response.body);
    let refused = |advice: &str| {
        format!("Gerrit at {host} answered HTTP {status} to {what}{detail}; {advice}")
    };
    Err(match status {
        401 => Failure::Refused(refused(
            "it refused the account: check secrets `gerrit-username` and `gerrit-password` (the \
             HTTP password from Settings → HTTP Credentials, not the sign-in password)",
        )),
        403 => Failure::Refused(refused(
            "the account lacks the permission; it needs Read on the project and, to report, the \
             label's vote range (-1..+1) on its branches",
        )),
        404 => Failure::NotFound(refused(
            "it does not exist, or the account in secret `gerrit-username` cannot see it",
        )),
        409 => Failure::Conflict(refused("the change's state does not allow it")),
        // 429 and 5xx are retried after `Retry-After` (else 30 s), anything
        // else fails, as the SDK words it.
        _ => match status::check("Gerrit", what, url, response) {
            Err(PluginError::RetryAfter(retry)) => Failure::Retry(retry),
            Err(PluginError::Failed(message)) => Failure::Failed(message),
            Ok(_) => unreachable!("HTTP {status} is not a success"),
        },
    })
}

/// `: ` and the start of an error body on one line, without Gerrit's
/// `)]}'`; empty for an empty body.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let words: Vec<&str> = text
        .trim_start()
        .trim_start_matches(")]}'")
        .split_whitespace()
        .collect();
    let line = words.join(" ");
    match line.char_indices().nth(BODY_EXCERPT) {
        _ if line.is_empty() => line,
        Some((cut, _)) => format!(": {}…", &line[..cut]),
        None => format!(": {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer with `status`, `body` and perhaps a `Retry-After`.
    fn response(status: u16, retry_after: Option<&str>, body: &str) -> Response {
        let headers = retry_after
            .map(|v| ("Retry-After".to_owned(), v.as_bytes().to_vec()))
            .into_iter()
            .collect();
        Response {
            status,
            headers,
            body: body.into(),
        }
    }

    const URL: &str = "https://review.example.org/a/changes/x~1";

    #[test]
    fn the_xssi_line_is_stripped() {
        let change: Change = json(
            format!(")]}}'\n{}", include_str!("../tests/fixtures/change.json")).as_bytes(),
            "change",
        )
        .unwrap();
        assert_eq!(change.number, 1234);
        assert_eq!(change.owner.login(), "ada");
        let current = change.current_revision.as_deref().unwrap();
        assert_eq!(change.revisions[current].git_ref, "refs/changes/34/1234/3");
        let head: String = json(b")]}'\n\"refs/heads/trunk\"\n", "HEAD").unwrap();
        assert_eq!(head, "refs/heads/trunk");
        let err = json::<String>(b")]}'\n<html>", "HEAD").unwrap_err();
        assert!(err.starts_with("Gerrit's HEAD does not parse"), "{err}");
    }

    #[test]
    fn projects_are_one_path_segment() {
        assert_eq!(encode("infra/hello-flake"), "infra%2Fhello-flake");
        assert_eq!(encode("a b+c~d"), "a%20b%2Bc~d");
    }

    #[test]
    fn statuses_become_retries_or_clear_failures() {
        let busy = check("x", URL, response(429, Some("7"), ""));
        assert!(
            matches!(&busy, Err(Failure::Retry(r)) if r.seconds == 7),
            "{busy:?}"
        );
        let down = check("x", URL, response(503, None, "maintenance"));
        assert!(
            matches!(&down, Err(Failure::Retry(r)) if r.seconds == DEFAULT_RETRY_SECS
                && r.reason.contains("HTTP 503") && r.reason.contains(": maintenance")),
            "{down:?}"
        );
        for status in [401, 403] {
            let what = "post a review on infra/tools~12";
            let Err(Failure::Refused(message)) = check(what, URL, response(status, None, ""))
            else {
                panic!("{status} is not a refusal")
            };
            assert!(
                message.starts_with(&format!(
                    "Gerrit at review.example.org answered HTTP {status} to {what}; "
                )),
                "{message}"
            );
        }
        assert!(matches!(
            check("x", URL, response(404, None, "Not found: x~1")),
            Err(Failure::NotFound(_))
        ));
        assert!(matches!(
            check("x", URL, response(409, None, "change is abandoned")),
            Err(Failure::Conflict(m)) if m.ends_with(": change is abandoned; the change's state does not allow it")
        ));
        let long = "y".repeat(500);
        let Err(Failure::Failed(message)) = check("x", URL, response(400, None, &long)) else {
            panic!("not a failure")
        };
        assert!(
            message.contains("HTTP 400") && message.len() < 400,
            "{message}"
        );
    }

    #[test]
    fn the_base_url_is_checked() {
        assert_eq!(
            checked_base("url", "https://review.example.org/").unwrap(),
            "https://review.example.org"
        );
        for bad in ["review.example.org", "ftp://x", "https://"] {
            assert!(checked_base("url", bad).is_err(), "{bad}");
        }
    }
}
