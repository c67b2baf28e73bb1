//! Outgoing HTTP over `wasi:http`, blocking: build a [`Request`], call
//! [`send`], get a [`Response`] with the whole body read. [`send_body`]
//! streams a large body from a reader; [`start`] and [`Pending::wait`]
//! overlap several requests.
//!
//! The host checks every request's host against the operator's grant before
//! connecting, so a request to a host that is not granted fails with [`HttpError::Failed`] carrying the host's error code. This
//! module must stay a thin, dependency-free client: no retries, no
//! redirects, no cookies (a plugin that needs them builds them on top).

use std::fmt;
use std::io::Read;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::{OutputStream, StreamError};

/// An HTTP request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … (any token).
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A response, its body read completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Why a request failed before a response arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not an absolute `http(s)://host/…` URL.
    InvalidUrl(String),
    /// A header name or value was refused.
    InvalidHeader(String),
    /// The host refused the request: the plugin's grant does not name the
    /// host. Retrying cannot help.
    Denied(String),
    /// The request failed on its way (DNS, connect, TLS, timeout, a broken
    /// answer…), with its error code.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(url) => write!(f, "invalid URL `{url}`: expected http(s)://host/path"),
            Self::InvalidHeader(name) => write!(f, "invalid HTTP header `{name}`"),
            Self::Denied(reason) | Self::Failed(reason) => {
                write!(f, "HTTP request failed: {reason}")
            }
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::PluginError {
    fn from(error: HttpError) -> Self {
        crate::PluginError::Failed(error.to_string())
    }
}

fn failed(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(code.to_string()),
        _ => HttpError::Failed(code.to_string()),
    }
}

fn io_failed(error: std::io::Error) -> HttpError {
    HttpError::Failed(error.to_string())
}

/// The parts of an absolute URL that `wasi:http` wants separately.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    https: bool,
    authority: &'a str,
    path_with_query: &'a str,
}

fn split_url(url: &str) -> Result<UrlParts<'_>, HttpError> {
    let invalid = || HttpError::InvalidUrl(url.to_owned());
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid());
    }
    // The fragment never goes on the wire; `send` adds a leading `/`.
    let path_with_query = tail.split('#').next().unwrap_or("");
    Ok(UrlParts {
        https,
        authority,
        path_with_query,
    })
}

/// Sends `request` and waits for the whole response.
pub fn send(request: Request) -> Result<Response, HttpError> {
    start(request)?.wait()
}

/// Sends `request` with a body of exactly `length` bytes read from `body`,
/// streamed in bounded chunks (the request's own `body` must be empty), and
/// waits for the whole response.
pub fn send_body(
    request: Request,
    body: &mut dyn Read,
    length: u64,
) -> Result<Response, HttpError> {
    start_body(request, body, length)?.wait()
}

/// Sends `request` (its body included) without waiting for the response:
/// start several requests, then [`Pending::wait`] for each, to overlap
/// their round trips.
pub fn start(mut request: Request) -> Result<Pending, HttpError> {
    let body = std::mem::take(&mut request.body);
    start_body(request, &mut body.as_slice(), body.len() as u64)
}

/// [`start`] with the body streamed from `body` (exactly `length` bytes)
/// instead of `request.body`. A `content-length` header is added.
pub fn start_body(
    mut request: Request,
    body: &mut dyn Read,
    length: u64,
) -> Result<Pending, HttpError> {
    let parts = split_url(&request.url)?;
    let has_body =
        length > 0 || !matches!(request.method.to_ascii_uppercase().as_str(), "GET" | "HEAD");
    if has_body
        && !request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        request
            .headers
            .push(("content-length".into(), length.to_string()));
    }
    let entries: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone().into_bytes()))
        .collect();
    let headers =
        Fields::from_list(&entries).map_err(|e| HttpError::InvalidHeader(format!("{e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let path = if parts.path_with_query.starts_with('/') {
        parts.path_with_query.to_owned()
    } else {
        format!("/{}", parts.path_with_query)
    };
    let invalid = || HttpError::InvalidUrl(request.url.clone());
    outgoing.set_method(&method).map_err(|()| invalid())?;
    outgoing
        .set_scheme(Some(&if parts.https {
            Scheme::Https
        } else {
            Scheme::Http
        }))
        .map_err(|()| invalid())?;
    outgoing
        .set_authority(Some(parts.authority))
        .map_err(|()| invalid())?;
    outgoing
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid())?;

    let outgoing_body = outgoing
        .body()
        .map_err(|()| HttpError::Failed("no request body".into()))?;
    let future = outgoing_handler::handle(outgoing, None).map_err(failed)?;
    // An empty body is only finished: writing or flushing it can race a
    // server that answers and closes the connection first.
    if length > 0 {
        let stream = outgoing_body
            .write()
            .map_err(|()| HttpError::Failed("request body not writable".into()))?;
        match copy_body(&stream, body, length) {
            Ok(()) => {}
            // The server answered (and closed) before taking the whole body,
            // as servers do to refuse a request: its answer says why.
            Err(BodyError::Closed) => {
                drop(stream);
                // Finished anyway (its error ignored): an unfinished body
                // would turn the server's answer into a transport error.
                let _ = OutgoingBody::finish(outgoing_body, None);
                return Ok(Pending { future });
            }
            Err(BodyError::Http(e)) => return Err(e),
        }
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failed)?;
    Ok(Pending { future })
}

/// The most a body write hands the host at once.
const WRITE_CHUNK: usize = 256 * 1024;

/// Copies exactly `length` bytes of `body` into `stream`, as fast as the
/// host accepts them, in chunks of at most [`WRITE_CHUNK`].
/// Why a body could not be written.
enum BodyError {
    /// The connection stopped taking it; the response may still arrive.
    Closed,
    /// Reading the body or the host failed.
    Http(HttpError),
}

impl From<HttpError> for BodyError {
    fn from(e: HttpError) -> Self {
        BodyError::Http(e)
    }
}

fn copy_body(stream: &OutputStream, body: &mut dyn Read, length: u64) -> Result<(), BodyError> {
    let mut buf = vec![0u8; WRITE_CHUNK.min(usize::try_from(length).unwrap_or(WRITE_CHUNK))];
    let mut left = length;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
        let n = body.read(&mut buf[..want]).map_err(io_failed)?;
        if n == 0 {
            return Err(BodyError::Http(HttpError::Failed(format!(
                "request body ended {left} bytes short of its length {length}"
            ))));
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let permit = stream.check_write().map_err(stream_failed)?;
            if permit == 0 {
                stream.subscribe().block();
                continue;
            }
            let take = chunk
                .len()
                .min(usize::try_from(permit).unwrap_or(chunk.len()));
            stream.write(&chunk[..take]).map_err(stream_failed)?;
            chunk = &chunk[take..];
        }
        left -= n as u64;
    }
    // Once a body with a `content-length` is complete the host closes the
    // stream, so `Closed` here means everything was taken.
    match stream.flush() {
        Ok(()) | Err(StreamError::Closed) => {}
        Err(e) => return Err(stream_failed(e)),
    }
    loop {
        // Wait until the host took everything before the body is finished.
        match stream.check_write() {
            Ok(0) => stream.subscribe().block(),
            Ok(_) | Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(stream_failed(e)),
        }
    }
}

fn stream_failed(error: StreamError) -> BodyError {
    match error {
        StreamError::LastOperationFailed(e) => {
            BodyError::Http(HttpError::Failed(e.to_debug_string()))
        }
        StreamError::Closed => BodyError::Closed,
    }
}

/// A request whose response has not been read yet.
pub struct Pending {
    future: FutureIncomingResponse,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    /// Whether the response head has arrived, so [`wait`](Self::wait)
    /// returns without blocking on the network.
    pub fn is_ready(&self) -> bool {
        self.future.subscribe().ready()
    }

    /// Waits for the response and reads its whole body.
    pub fn wait(self) -> Result<Response, HttpError> {
        let future = self.future;
        let response = loop {
            match future.get() {
                Some(Ok(result)) => break result.map_err(failed)?,
                Some(Err(())) => return Err(HttpError::Failed("response already taken".into())),
                None => future.subscribe().block(),
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Failed("response body already taken".into()))?;
        let mut body = Vec::new();
        {
            let mut stream = incoming
                .stream()
                .map_err(|()| HttpError::Failed("response body not readable".into()))?;
            stream.read_to_end(&mut body).map_err(io_failed)?;
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_wasi_http_parts() {
        assert_eq!(
            split_url("https://api.github.com/repos/a/b?x=1#frag").unwrap(),
            UrlParts {
                https: true,
                authority: "api.github.com",
                path_with_query: "/repos/a/b?x=1"
            }
        );
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            UrlParts {
                https: false,
                authority: "127.0.0.1:8080",
                path_with_query: ""
            }
        );
        assert_eq!(split_url("http://h?q").unwrap().path_with_query, "?q");
        for bad in ["ftp://h/", "h/x", "http:///x", "http://user@h/"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
