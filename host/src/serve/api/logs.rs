//! A job's build log: `GET /api/v1/jobs/{id}/log` downloads it as it is now;
//! `GET /api/v1/jobs/{id}/log/stream` follows it as server-sent events.
//!
//! The stream sends what the file holds, then polls the file and the job
//! row every [`POLL`] while the job is queued or running, sending each new
//! run of complete lines as one `message` event (`id` is the byte offset
//! after it, so a client reconnecting with `Last-Event-ID` resumes there).
//! Once the job is final and the file read to its end, the last partial
//! line (if any) is sent, then `event: end` with `{"status", "error"}`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ApiError;
use super::auth::caller;
use super::jobs;
use crate::serve::db::{Database, with_pool};

/// How often a followed log and its job are looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// Most bytes read (and sent as one event) at a time.
const CHUNK: usize = 64 << 10;

/// Whether a job in `status` may still write to its log.
fn live(status: &str) -> bool {
    matches!(status, "queued" | "running")
}

/// `GET /api/v1/jobs/{id}/log`.
pub async fn download(
    State(state): State<Arc<crate::serve::app::AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let subject = caller(&state, &headers).await?;
    let (job, ..) = jobs::readable(&state, subject.as_ref(), id).await?;
    let Some(path) = job.log_path else {
        return Err(ApiError::not_found(format!(
            "job {id} has no log: it is {} and never started building",
            job.status
        )));
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "the log of job {id} is no longer on disk"
            )));
        }
        Err(e) => {
            tracing::error!(job = id, path, error = %e, "cannot open a job log");
            return Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of job {id}"),
            ));
        }
    };
    let body = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"job-{id}.log\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `GET /api/v1/jobs/{id}/log/stream`.
pub async fn stream(
    State(state): State<Arc<crate::serve::app::AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    axum::extract::Query(from): axum::extract::Query<From>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subject = caller(&state, &headers).await?;
    follow(&state, subject.as_ref(), &headers, id, from.from).await
}

/// `?from=`: the byte offset to start at (a page that already shows the
/// log up to there); `Last-Event-ID` takes precedence.
#[derive(Debug, Default, serde::Deserialize)]
pub struct From {
    /// Byte offset.
    pub from: Option<u64>,
}

/// Follow the log of job `id` as `subject`, from `Last-Event-ID`, else
/// `from`, else the start. The web UI's live log shares it.
pub async fn follow(
    state: &crate::serve::app::AppState,
    subject: Option<&kiln_runtime::bindings::authz_types::Subject>,
    headers: &HeaderMap,
    id: i64,
    from: Option<u64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let (job, ..) = jobs::readable(state, subject, id).await?;
    let offset = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(from)
        .unwrap_or(0);
    let follow = Follow {
        db: state.db.clone(),
        job: id,
        path: job.log_path.map(PathBuf::from),
        offset,
        pending: Vec::new(),
        status: job.status,
        error: job.error,
        first: true,
        ended: false,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The state of one followed log.
struct Follow {
    db: Database,
    job: i64,
    path: Option<PathBuf>,
    /// Bytes of the file already read.
    offset: u64,
    /// Read but not sent: a line without its newline yet.
    pending: Vec<u8>,
    status: String,
    error: Option<String>,
    /// Nothing was polled yet: the job row given at start is current.
    first: bool,
    ended: bool,
}

impl Follow {
    /// The next event, waiting for one; `None` after `end`.
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            // Look at the job before the file: a job seen final here wrote
            // its last byte before this read, so an empty read then is the
            // end.
            if !self.first {
                self.refresh().await;
            }
            self.first = false;
            let final_now = !live(&self.status);
            let read = self.read().await;
            if !read.is_empty() {
                self.pending.extend_from_slice(&read);
                if let Some(event) = self.complete_lines(final_now && read.len() < CHUNK) {
                    return Some(event);
                }
                continue;
            }
            if final_now {
                if !self.pending.is_empty() {
                    let rest = std::mem::take(&mut self.pending);
                    return Some(self.message(&rest));
                }
                self.ended = true;
                let body = serde_json::json!({"status": self.status, "error": self.error});
                return Some(Event::default().event("end").data(body.to_string()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reload the job's status, error and log path.
    async fn refresh(&mut self) {
        type Row = (String, Option<String>, Option<String>);
        let row: Result<Option<Row>, sqlx::Error> = with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT status, error, log_path FROM jobs WHERE id = $1")
                .bind(self.job)
                .fetch_optional(pool)
                .await
        });
        match row {
            Ok(Some((status, error, path))) => {
                self.status = status;
                self.error = error;
                if let Some(path) = path {
                    self.path = Some(PathBuf::from(path));
                }
            }
            Ok(None) => {
                self.status = "deleted".into();
                self.error = Some(format!("job {} no longer exists", self.job));
            }
            // A transient failure: try again at the next poll.
            Err(e) => tracing::warn!(job = self.job, error = %e, "cannot poll a followed job"),
        }
    }

    /// What the file holds past `offset` (at most [`CHUNK`] bytes).
    async fn read(&mut self) -> Vec<u8> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let Ok(mut file) = tokio::fs::File::open(path).await else {
            return Vec::new();
        };
        if file
            .seek(std::io::SeekFrom::Start(self.offset))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(n) => {
                buf.truncate(n);
                self.offset += n as u64;
                buf
            }
            Err(_) => Vec::new(),
        }
    }

    /// The complete lines of `pending` as one event, keeping the partial
    /// last line; everything when `all` or when one line outgrows a chunk.
    fn complete_lines(&mut self, all: bool) -> Option<Event> {
        let cut = if all || self.pending.len() >= CHUNK {
            self.pending.len()
        } else {
            self.pending.iter().rposition(|b| *b == b'\n')? + 1
        };
        let lines: Vec<u8> = self.pending.drain(..cut).collect();
        Some(self.message(&lines))
    }

    /// A `message` event of `bytes` (without its final newline; carriage
    /// returns dropped, which SSE cannot carry) whose id resumes after it.
    fn message(&self, bytes: &[u8]) -> Event {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text).replace('\r', "");
        let resume = self.offset - self.pending.len() as u64;
        Event::default().id(resume.to_string()).data(text)
    }
}
