//! `GET /jobs/{id}`: a job's status and its build log, each line numbered
//! and linkable (`#L12`), lines that look like errors marked `error`. While
//! the job is queued or running the page shows the complete lines written
//! so far and `kiln.js` follows the rest from `/jobs/{id}/log/stream`,
//! starting at the byte offset the page stopped at, so no line shows twice.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::layout::page;
use super::run::control;
use super::{Viewer, duration, time, words};
use crate::serve::api::ApiError;
use crate::serve::api::jobs;
use crate::serve::api::logs;
use crate::serve::app::AppState;

/// Most of a log shown on the page; a longer one shows its end, with a
/// link to the whole file.
pub const SHOWN_BYTES: u64 = 2 << 20;

/// Whether a log line reports an error, for highlighting.
pub fn is_error(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("error") || l.contains("failed") || l.contains("panicked") || l.contains("fatal")
}

/// The log lines as `<span class="line" id="L<n>">` elements, numbering
/// from `first`.
pub fn lines(text: &str, first: usize) -> Markup {
    let mut s = String::with_capacity(text.len() + text.len() / 2);
    for (i, line) in text.lines().enumerate() {
        let n = first + i;
        let class = if is_error(line) { "line error" } else { "line" };
        let _ = write!(
            s,
            "<span class=\"{class}\" id=\"L{n}\"><a class=\"n\" href=\"#L{n}\" data-n=\"{n}\" aria-label=\"line {n}\"></a>"
        );
        let _ = maud::Escaper::new(&mut s).write_str(line);
        s.push_str("</span>");
    }
    PreEscaped(s)
}

/// What of the log at `path` the page shows: its text (whole lines only
/// while the job may still write), the byte offset after it, and whether
/// the start was cut.
async fn read_log(path: &str, live: bool) -> std::io::Result<(String, u64, bool)> {
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let start = len.saturating_sub(SHOWN_BYTES);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut bytes).await?;
    let mut skip = 0;
    if start > 0 {
        // Begin at a whole line.
        skip = bytes.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
    }
    let mut end = bytes.len();
    if live {
        end = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(skip, |p| p + 1)
            .max(skip);
    }
    let offset = start + end as u64;
    let text = String::from_utf8_lossy(&bytes[skip..end]).replace('\r', "");
    Ok((text, offset, start > 0))
}

/// `GET /jobs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    match page_of(&state, &viewer, id).await {
        Ok(m) => m.into_response(),
        Err(e) => viewer.error(e),
    }
}

async fn page_of(state: &AppState, viewer: &Viewer, id: i64) -> Result<Markup, ApiError> {
    let (job, run, outputs, post_build) = jobs::readable(state, viewer.subject(), id).await?;
    let live = matches!(job.status.as_str(), "queued" | "running");
    let log = match &job.log_path {
        Some(p) => match read_log(p, live).await {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot read a job log for its page");
                None
            }
        },
        None => None,
    };
    let outputs: serde_json::Value =
        serde_json::from_str(&outputs).unwrap_or_else(|_| serde_json::json!({}));
    let post_build: Option<serde_json::Value> =
        post_build.and_then(|p| serde_json::from_str(&p).ok());
    let session = viewer.session.as_ref();
    let (text, offset, cut) = log.clone().unwrap_or_default();
    let first_line = 1;
    Ok(page(
        &job.attr,
        session,
        html! {
            p.crumbs {
                a href={ "/projects/" (run.project_id) } { (run.project) } " › "
                a href={ "/runs/" (run.id) } { "run #" (run.id) } " › " (job.attr)
            }
            h1.attr { (job.attr) }
            p { span #job-status class={ "state status-" (job.status) } data-status=(job.status) { (words(&job.status)) } }
            dl {
                @if let Some(e) = &job.error { dt { "Error" } dd.error-text { (e) } }
                @if let Some(d) = &job.failed_dependency { dt { "Failed dependency" } dd { (d) } }
                @if let Some(d) = &job.drv_path { dt { "Derivation" } dd { code.path { (d) } } }
                @if let Some(o) = outputs.as_object() { @for (name, path) in o {
                    dt { "Output " (name) } dd { code.path { (path.as_str().unwrap_or_default()) } }
                } }
                @if let Some(t) = job.started_at { dt { "Started" } dd { (time(t)) } }
                @if job.duration_ms > 0 { dt { "Duration" } dd { (duration(job.duration_ms)) } }
                @if job.attempts > 1 { dt { "Attempts" } dd { (job.attempts) } }
                @if let Some(steps) = post_build.as_ref().and_then(|p| p.as_array()) {
                    dt { "Post-build" } dd { ul.post-build { @for s in steps {
                        li { (s["step"].as_str().or(s["name"].as_str()).unwrap_or("step")) ": "
                            (s["status"].as_str().unwrap_or("?"))
                            @if let Some(m) = s["message"].as_str().or(s["error"].as_str()) { " — " (m) } }
                    } } }
                }
            }
            @if matches!(job.status.as_str(), "failed" | "timed_out" | "cancelled" | "dependency_failed") {
                div.controls { (control(&format!("/jobs/{id}/rebuild"), "Rebuild", session)) }
            }
            section.log {
                h2 { "Log" }
                div.log-tools {
                    input #log-search type="search" placeholder="Search the log" aria-label="Search the log";
                    @if job.has_log { a href={ "/api/v1/jobs/" (id) "/log" } { "Download" } }
                }
                @if cut { p.note { "The start of this log is left out; download it for the whole." } }
                @if log.is_none() && !live { p.empty { "This job has no log." } }
                pre #log data-live=[live.then_some("1")] data-offset=(offset) data-stream={ "/jobs/" (id) "/log/stream" } {
                    (lines(&text, first_line))
                }
            }
        },
    ))
}

/// `GET /jobs/{id}/log/stream?from=`: the live log for the page, read as
/// the signed-in viewer.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(from): Query<logs::From>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    match logs::follow(&state, viewer.subject(), &headers, id, from.from).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_escaped_and_errors_marked() {
        let m = lines("ok\nerror: <bad>\n", 1).into_string();
        assert!(m.contains("id=\"L1\""));
        assert!(m.contains("<span class=\"line error\" id=\"L2\">"));
        assert!(m.contains("&lt;bad&gt;"));
        assert!(!m.contains("L3"));
    }

    #[tokio::test]
    async fn a_live_log_stops_at_its_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "one\ntwo\nthr").unwrap();
        let (text, offset, cut) = read_log(p.to_str().unwrap(), true).await.unwrap();
        assert_eq!((text.as_str(), offset, cut), ("one\ntwo\n", 8, false));
        let (text, offset, _) = read_log(p.to_str().unwrap(), false).await.unwrap();
        assert_eq!((text.as_str(), offset), ("one\ntwo\nthr", 11));
    }
}
