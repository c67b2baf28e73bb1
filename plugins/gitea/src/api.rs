//! Gitea's REST API (`{url}/api/v1`) as requests and answers: the commit
//! status request, the topic search with page numbers, a repository's
//! topics, and HTTP answers turned into errors a user can act on (401 and
//! 403 name the host and the token's secret, 429 and 5xx become
//! `retry-after` honouring `Retry-After`).
//!
//! This module builds and reads; `lib.rs` sends. It must never put the token
//! in a message.

use kiln_plugin_sdk::http::{Request, Response};
use kiln_plugin_sdk::status::{self, host_of};
use kiln_plugin_sdk::{PluginError, Repository, StatusReport, StatusState};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::payload::{ListedPullRequest, Repo, SearchPage, Topics};

/// The longest description a commit status keeps (Gitea's column allows
/// more; GitHub's limit keeps statuses readable in both UIs).
pub const MAX_DESCRIPTION: usize = 140;
/// Repositories asked for per search page: Gitea's default
/// `MAX_RESPONSE_ITEMS` (a server may be set to send fewer).
pub const PAGE_SIZE: usize = 50;
/// The secret holding the access token, named in errors.
pub const TOKEN_SECRET: &str = "gitea-token";

/// An authenticated Gitea (or Forgejo) server.
pub struct Api {
    /// The server's URL without a trailing `/` (`https://codeberg.org`).
    pub base: String,
    token: String,
}

impl Api {
    /// The server at `url` (its web address; a trailing `/api/v1` is
    /// accepted too).
    pub fn new(url: &str, token: String) -> Result<Self, PluginError> {
        let trimmed = url.trim().trim_end_matches('/');
        let base = trimmed.strip_suffix("/api/v1").unwrap_or(trimmed);
        let valid = ["https://", "http://"].iter().any(|scheme| {
            base.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !valid {
            return Err(PluginError::failed(format!(
                "setting `url` must be the server's http(s) address, such as \
                 https://codeberg.org or https://gitea.example.org, not `{url}`"
            )));
        }
        Ok(Self {
            base: base.to_owned(),
            token,
        })
    }

    /// The server's `host[:port]`, the one host the token is sent to.
    pub fn host(&self) -> &str {
        host_of(&self.base)
    }

    /// A request to `path` (below `/api/v1`) with the token.
    pub fn request(&self, method: &str, path: &str) -> Request {
        Request::new(method, format!("{}/api/v1{path}", self.base))
            .header("authorization", format!("token {}", self.token))
            .header("accept", "application/json")
            .header("user-agent", "kiln")
    }

    /// `POST /repos/{owner}/{repo}/statuses/{sha}` for `report`.
    pub fn status(&self, report: &StatusReport) -> Result<Request, PluginError> {
        let repo = &report.repository;
        let (owner, name) = (
            path_part(&repo.owner, "owner")?,
            path_part(&repo.name, "name")?,
        );
        let hex = report.rev.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex && matches!(report.rev.len(), 40 | 64)) {
            return Err(PluginError::failed(format!(
                "`{}` is not a commit id (40 or 64 hex digits)",
                report.rev
            )));
        }
        let mut body = json!({
            "state": state(report.state),
            "context": report.context,
            "description": description(&report.description),
        });
        if let Some(url) = &report.target_url {
            body["target_url"] = url.as_str().into();
        }
        Ok(self
            .request(
                "POST",
                &format!("/repos/{owner}/{name}/statuses/{}", report.rev),
            )
            .header("content-type", "application/json")
            .body(body.to_string()))
    }

    /// Page `page` (from 1) of the repositories the token sees with `topic`.
    pub fn search(&self, topic: &str, page: usize) -> Request {
        self.request(
            "GET",
            &format!("/repos/search?q={topic}&topic=true&limit={PAGE_SIZE}&page={page}"),
        )
    }

    /// Page `page` (from 1) of `GET /repos/{owner}/{repo}/pulls?state=open`.
    pub fn pulls(&self, repository: &Repository, page: usize) -> Result<Request, PluginError> {
        let owner = path_part(&repository.owner, "owner")?;
        let name = path_part(&repository.name, "name")?;
        Ok(self.request(
            "GET",
            &format!("/repos/{owner}/{name}/pulls?state=open&page={page}&limit={PAGE_SIZE}"),
        ))
    }

    /// `GET /repos/{owner}/{repo}/topics`.
    pub fn topics(&self, repo: &Repo) -> Result<Request, PluginError> {
        let owner = path_part(repo.owner.name().unwrap_or(""), "owner")?;
        let name = path_part(&repo.name, "name")?;
        Ok(self.request("GET", &format!("/repos/{owner}/{name}/topics")))
    }
}

/// `part` when it can stand in a URL path as a Gitea owner or repository
/// name (letters, digits, `-`, `_`, `.`), else an error naming `what`.
fn path_part<'a>(part: &'a str, what: &str) -> Result<&'a str, PluginError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if part.is_empty() || part.starts_with('.') || !part.chars().all(allowed) {
        return Err(PluginError::failed(format!(
            "repository {what} `{part}` is not a Gitea name"
        )));
    }
    Ok(part)
}

/// `topic` as Gitea stores topics (lower case), when it is one Gitea
/// accepts: a letter or digit, then letters, digits, `-` and `.`, at most
/// 35 characters.
pub fn topic(topic: &str) -> Result<String, PluginError> {
    let lower = topic.trim().to_ascii_lowercase();
    let mut chars = lower.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if first_ok && rest_ok && lower.len() <= 35 {
        Ok(lower)
    } else {
        Err(PluginError::failed(format!(
            "setting `topic` is `{topic}`, not a Gitea topic (a letter or digit, then letters, \
             digits, `-` and `.`, at most 35 characters)"
        )))
    }
}

/// Gitea's status state for Kiln's. Gitea also knows `warning`, which Kiln
/// does not use; a cancelled run says nothing about the commit, so it is an
/// `error` (the run broke) rather than a `failure` (the checks failed).
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error | StatusState::Cancelled => "error",
    }
}

/// The first line of `text`, at most [`MAX_DESCRIPTION`] characters, the
/// last one `…` when it was cut.
pub fn description(text: &str) -> String {
    let first = text.lines().next().map_or("", str::trim);
    match first.char_indices().nth(MAX_DESCRIPTION) {
        None => first.to_owned(),
        Some(_) => {
            let (cut, _) = first
                .char_indices()
                .nth(MAX_DESCRIPTION - 1)
                .unwrap_or((first.len(), ' '));
            format!("{}…", &first[..cut])
        }
    }
}

/// `response` when it is 2xx, else an error saying what to do. `what` says
/// what the request was for (`post status kiln/x on acme/widgets@abc`).
pub fn check(what: &str, url: &str, response: Response) -> Result<Response, PluginError> {
    let host = host_of(url);
    match response.status {
        401 => Err(PluginError::failed(format!(
            "Gitea at {host} refused the token with HTTP 401 (unauthorized) to {what}: check \
             secret `{TOKEN_SECRET}` (expired or revoked?) and that it was made on {host}"
        ))),
        403 => Err(PluginError::failed(format!(
            "Gitea at {host} answered HTTP 403 (forbidden) to {what}: the token's user needs \
             write access to the repository, and a scoped token the `write:repository` scope \
             (`read:repository` for discovery)"
        ))),
        404 => Err(PluginError::failed(format!(
            "Gitea at {host} answered HTTP 404 to {what}: the repository does not exist or the \
             token's user cannot see it"
        ))),
        _ => status::check("Gitea", what, url, response),
    }
}

/// The JSON of a 2xx `response` as `T`; `what` names the answer in errors.
pub fn decode<T: DeserializeOwned>(host: &str, what: &str, body: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(body).map_err(|e| {
        PluginError::failed(format!(
            "Gitea at {host} sent {what} that does not parse: {e}"
        ))
    })
}

/// Whether a search page follows the one `response` answered, which held
/// `count` repositories and brought those read so far to `read`. Gitea
/// says so with `Link: <…>; rel="next"` and `X-Total-Count`; without
/// either, only a full page may have a successor. A page is never taken
/// from the link itself: the token stays on the configured server.
pub fn more_pages(response: &Response, count: usize, read: usize) -> bool {
    if count == 0 {
        return false;
    }
    if let Some(link) = response.header("link") {
        return link.split(',').any(|target| {
            target
                .split(';')
                .skip(1)
                .any(|param| param.trim().eq_ignore_ascii_case("rel=\"next\""))
        });
    }
    let total = response.header("x-total-count");
    match total.and_then(|t| t.trim().parse::<usize>().ok()) {
        Some(total) => read < total,
        None => count >= PAGE_SIZE,
    }
}

/// The repositories of one search page.
pub fn search_page(host: &str, body: &[u8]) -> Result<Vec<Repo>, PluginError> {
    decode::<SearchPage>(host, "a repository search page", body).map(|p| p.data)
}

/// The pull requests of one page of `GET /repos/{owner}/{repo}/pulls`.
pub fn pulls_page(host: &str, body: &[u8]) -> Result<Vec<ListedPullRequest>, PluginError> {
    decode(host, "a pull request list", body)
}

/// A repository's topics.
pub fn topics(host: &str, body: &[u8]) -> Result<Vec<String>, PluginError> {
    decode::<Topics>(host, "a topic list", body).map(|t| t.topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer with `status`, an optional `Retry-After` and no body.
    fn response(status: u16, retry_after: Option<&str>) -> Response {
        let headers = retry_after
            .map(|r| ("Retry-After".to_owned(), r.as_bytes().to_vec()))
            .into_iter()
            .collect();
        Response {
            status,
            headers,
            body: Vec::new(),
        }
    }

    const URL: &str = "https://codeberg.org/api/v1/repos/a/b/statuses/x";

    fn failed(result: Result<Response, PluginError>) -> String {
        match result {
            Err(PluginError::Failed(m)) => m,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn answers_become_errors_a_user_can_act_on() {
        let m = failed(check("post a status", URL, response(401, None)));
        assert!(
            m.starts_with("Gitea at codeberg.org refused the token with HTTP 401"),
            "{m}"
        );
        assert!(m.contains("`gitea-token`"), "{m}");
        let m = failed(check("post a status", URL, response(403, None)));
        assert!(
            m.contains("HTTP 403") && m.contains("write:repository"),
            "{m}"
        );
        assert!(failed(check("x", URL, response(404, None))).contains("HTTP 404"));
        match check("x", URL, response(429, Some("9"))) {
            Err(PluginError::RetryAfter(r)) => assert_eq!(r.seconds, 9),
            other => panic!("not retry-after: {other:?}"),
        }
        assert!(matches!(
            check("x", URL, response(502, None)),
            Err(PluginError::RetryAfter(_))
        ));
        assert!(check("x", URL, response(201, None)).is_ok());
    }

    #[test]
    fn the_server_url_is_its_web_address() {
        for url in [
            "https://codeberg.org",
            "https://codeberg.org/",
            "https://codeberg.org/api/v1/",
        ] {
            let api = Api::new(url, "t".into()).unwrap();
            assert_eq!(api.base, "https://codeberg.org");
            assert_eq!(api.host(), "codeberg.org");
        }
        let api = Api::new("http://127.0.0.1:3000/gitea", "t".into()).unwrap();
        assert_eq!(
            api.search("nix", 2).url,
            "http://127.0.0.1:3000/gitea/api/v1/repos/search?q=nix&topic=true&limit=50&page=2"
        );
        let repository = report("acme", "").repository;
        assert_eq!(
            api.pulls(&repository, 3).unwrap().url,
            "http://127.0.0.1:3000/gitea/api/v1/repos/acme/widgets/pulls?state=open&page=3&limit=50"
        );
        for bad in ["codeberg.org", "https://", "ftp://codeberg.org"] {
            let err = Api::new(bad, "secret-token".into()).err().unwrap();
            assert!(format!("{err:?}").contains("setting `url`"), "{err:?}");
        }
    }

    fn report(owner: &str, rev: &str) -> StatusReport {
        StatusReport {
            repository: Repository {
                full_name: format!("{owner}/widgets"),
                owner: owner.into(),
                name: "widgets".into(),
                clone_url: String::new(),
                web_url: None,
                default_branch: "main".into(),
                private: false,
                topics: vec![],
            },
            rev: rev.into(),
            pull_request: None,
            context: "kiln/nix-build".into(),
            state: StatusState::Cancelled,
            description: "cancelled".into(),
            target_url: None,
            summary: None,
            failures: vec![],
        }
    }

    #[test]
    fn statuses_check_their_path_parts() {
        let api = Api::new("https://codeberg.org", "t".into()).unwrap();
        let sha256 = "a".repeat(64);
        let request = api.status(&report("acme", &sha256)).unwrap();
        assert_eq!(
            request.url,
            format!("https://codeberg.org/api/v1/repos/acme/widgets/statuses/{sha256}")
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["state"], "error");
        assert!(body.get("target_url").is_none());
        for (owner, rev) in [("../x", "a".repeat(40)), ("acme", "abc".into())] {
            assert!(api.status(&report(owner, &rev)).is_err(), "{owner} {rev}");
        }
    }

    #[test]
    fn pages_follow_while_gitea_says_so() {
        let with = |name: &str, value: &str| Response {
            status: 200,
            headers: vec![(name.to_owned(), value.as_bytes().to_vec())],
            body: Vec::new(),
        };
        let next = r#"<https://c.org/api/v1/repos/search?page=2>; rel="next", <https://c.org/api/v1/repos/search?page=4>; rel="last""#;
        let last = r#"<https://c.org/api/v1/repos/search?page=1>; rel="first", <https://c.org/api/v1/repos/search?page=3>; rel="prev""#;
        // A server sending 30 a page still has a next page.
        assert!(more_pages(&with("Link", next), 30, 30));
        assert!(!more_pages(&with("link", last), 50, 150));
        assert!(more_pages(&with("X-Total-Count", "61"), 30, 60));
        assert!(!more_pages(&with("x-total-count", "60"), 30, 60));
        assert!(more_pages(&response(200, None), PAGE_SIZE, PAGE_SIZE));
        assert!(!more_pages(&response(200, None), 49, 99));
        assert!(!more_pages(&with("Link", next), 0, 30));
    }

    #[test]
    fn topics_are_checked_and_lowered() {
        assert_eq!(topic("Build-With-Buildbot").unwrap(), "build-with-buildbot");
        assert_eq!(topic("nix.flakes").unwrap(), "nix.flakes");
        for bad in ["", "-x", "a&b=c", &"x".repeat(36)] {
            assert!(topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn descriptions_are_one_line_of_at_most_140_characters() {
        assert_eq!(description("3 of 5 failed\nmore"), "3 of 5 failed");
        assert_eq!(description(&"x".repeat(140)), "x".repeat(140));
        let cut = description(&"é".repeat(141));
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with("é…"));
    }

    #[test]
    fn states_map_onto_giteas() {
        assert_eq!(state(StatusState::Running), "pending");
        assert_eq!(state(StatusState::Pending), "pending");
        assert_eq!(state(StatusState::Success), "success");
        assert_eq!(state(StatusState::Failure), "failure");
        assert_eq!(state(StatusState::Error), "error");
        assert_eq!(state(StatusState::Cancelled), "error");
    }

    #[test]
    fn search_pages_and_topic_lists_decode() {
        let push: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/push.json")).unwrap();
        let page = serde_json::json!({"ok": true, "data": [push["repository"]]}).to_string();
        let repos = search_page("codeberg.org", page.as_bytes()).unwrap();
        assert_eq!(repos[0].full_name, "kiln-example/hello-flake");
        assert_eq!(
            topics("h", br#"{"topics": ["a", "b"]}"#).unwrap(),
            ["a", "b"]
        );
        let err = search_page("codeberg.org", b"[]").unwrap_err();
        assert!(
            format!("{err:?}").contains(
                "Gitea at codeberg.org sent a repository search page that does not parse"
            ),
            "{err:?}"
        );
    }
}
