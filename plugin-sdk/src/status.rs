//! HTTP outcomes as plugin errors a user can act on (shared by the cache
//! plugins): an unreachable host
//! names the URL, 401 and 403 name the status and the host, 429 and 5xx ask
//! Kiln to retry the step, anything else quotes the start of the body.
//!
//! Messages must never contain request headers (the auth token).

use crate::PluginError;
use crate::http::{HttpError, Response};

/// How long to wait before a retry when the server does not say.
const DEFAULT_RETRY_SECS: u32 = 30;
/// The longest wait honoured from a `Retry-After` header.
const MAX_RETRY_SECS: u32 = 300;
/// How much of an error body a message quotes.
const BODY_EXCERPT: usize = 200;

/// The `host[:port]` of an absolute URL.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// A request to `url` that got no response.
pub fn unreachable(service: &str, url: &str, error: &HttpError) -> PluginError {
    PluginError::failed(format!(
        "cannot reach {service} at {} ({url}): {error}; check the endpoint setting and that \
         kiln.toml grants this plugin HTTP to host `{}`",
        host_of(url),
        host_of(url)
    ))
}

/// `response` when its status is 2xx, else the error for its status.
/// `what` says what the request was for (`query missing paths`).
pub fn check(
    service: &str,
    what: &str,
    url: &str,
    response: Response,
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
    Err(match status {
        401 | 403 => PluginError::failed(format!(
            "{service} at {host} refused to {what} with HTTP {status} \
             ({}){detail}; check the token secret and its permissions for this cache",
            if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            }
        )),
        429 | 500..=599 => PluginError::retry_after(
            retry_secs(&response),
            format!("{service} at {host} answered HTTP {status} to {what} ({url}){detail}"),
        ),
        _ => PluginError::failed(format!(
            "{service} at {host} answered HTTP {status} to {what} ({url}){detail}"
        )),
    })
}

fn retry_secs(response: &Response) -> u32 {
    response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_RETRY_SECS)
        .clamp(1, MAX_RETRY_SECS)
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
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

    const URL: &str = "http://127.0.0.1:8080/api/v1/cache/c/narinfo";

    #[test]
    fn success_passes_through() {
        let r = check("Cachix", "x", URL, response(200, &[], "[]")).unwrap();
        assert_eq!(r.body, b"[]");
    }

    #[test]
    fn auth_failures_name_status_and_host() {
        for (status, word) in [(401, "unauthorized"), (403, "forbidden")] {
            let error = check(
                "Cachix",
                "query missing paths",
                URL,
                response(status, &[], "bad token\n"),
            )
            .unwrap_err();
            let PluginError::Failed(message) = error else {
                panic!("not permanent")
            };
            assert!(
                message.starts_with(&format!(
                    "Cachix at 127.0.0.1:8080 refused to query missing paths with HTTP {status} ({word}): bad token"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn overload_and_server_errors_are_retried() {
        let error = check(
            "Cachix",
            "x",
            URL,
            response(429, &[("retry-after", "7")], ""),
        )
        .unwrap_err();
        let PluginError::RetryAfter(retry) = error else {
            panic!("not a retry")
        };
        assert_eq!(retry.seconds, 7);
        assert!(retry.reason.contains("HTTP 429"), "{}", retry.reason);
        let error = check("Cachix", "x", URL, response(503, &[], "down")).unwrap_err();
        let PluginError::RetryAfter(retry) = error else {
            panic!("not a retry")
        };
        assert_eq!(retry.seconds, DEFAULT_RETRY_SECS);
        assert!(retry.reason.contains("HTTP 503"), "{}", retry.reason);
    }

    #[test]
    fn other_statuses_quote_the_body_briefly() {
        let long = "x".repeat(500);
        let error = check("Attic", "upload", URL, response(400, &[], &long)).unwrap_err();
        let PluginError::Failed(message) = error else {
            panic!("not permanent")
        };
        assert!(message.contains("HTTP 400"), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn unreachable_names_url_and_host() {
        let error = unreachable(
            "Cachix",
            URL,
            &HttpError::Failed("ConnectionRefused".into()),
        );
        let PluginError::Failed(message) = error else {
            panic!("not permanent")
        };
        assert!(message.contains("cannot reach Cachix at 127.0.0.1:8080 (http://127.0.0.1:8080/api/v1/cache/c/narinfo)"), "{message}");
        assert!(message.contains("ConnectionRefused"), "{message}");
    }
}
