//! `GET /runs/{id}`: a run's summary, its control forms, its job graph and
//! its jobs, filterable by status (`?status=failed`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt as _, stream};
use maud::{Markup, PreEscaped, html};

use super::graph::{self, Node};
use super::layout::page;
use super::pages::what;
use super::{Viewer, duration, short, time, words};
use crate::serve::api::ApiError;
use crate::serve::api::jobs::{self, StatusFilter};
use crate::serve::api::runs::{self, Run};
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};
use crate::serve::session::Session;

/// Job statuses in the order the filter lists them.
const JOB_STATUSES: &[&str] = &[
    "failed",
    "timed_out",
    "eval_error",
    "dependency_failed",
    "running",
    "queued",
    "succeeded",
    "cached",
    "cancelled",
    "unsupported_system",
];

/// The dependency edges of `run` as `(attr, depends_on)`.
pub async fn edges(state: &AppState, run: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    with_pool!(&state.db, pool => {
        sqlx::query_as("SELECT attr, depends_on FROM job_edges WHERE run_id = $1")
            .bind(run)
            .fetch_all(pool)
            .await
    })
}

/// A control form: a button posting to `action`, with the session's CSRF
/// token. Shown signed out too, so that the refusal says why.
pub fn control(action: &str, label: &str, session: Option<&Session>) -> Markup {
    html! {
        form.control method="post" action=(action) {
            @if let Some(s) = session {
                input type="hidden" name="csrf" value=(s.csrf);
            }
            button type="submit" { (label) }
        }
    }
}

/// One row of the jobs table and node of the graph.
struct Row {
    id: i64,
    attr: String,
    status: String,
    duration_ms: i64,
    error: Option<String>,
}

/// Job counts by status: a finished run's from its report summary, else
/// counted.
async fn counts(state: &AppState, run: &Run) -> Result<BTreeMap<String, usize>, sqlx::Error> {
    let counted = match run.summary.as_ref().and_then(runs::counts_of_summary) {
        Some(c) => c,
        None => jobs::counts_of_run(&state.db, run.id).await?,
    };
    Ok(counted
        .into_iter()
        .map(|(s, n)| (s, usize::try_from(n).unwrap_or(0)))
        .collect())
}

/// The top of run `id`'s page: the frame, the summary and the control
/// forms, from a few small queries, so the browser shows them at once.
async fn head(state: &AppState, viewer: &Viewer, id: i64) -> Result<(Run, String), ApiError> {
    let run = runs::readable(state, viewer.subject(), id).await?;
    let doing = format!("reading run {id}");
    let (targets, counts) = tokio::try_join!(runs::targets(&state.db, id), counts(state, &run))
        .map_err(|e| ApiError::database(&doing, e))?;
    let session = viewer.session.as_ref();
    let title = format!("Run #{id} of {}", run.project);
    let body = html! {
        p.crumbs { a href={ "/projects/" (run.project_id) } { (run.project) } " › run #" (id) }
        (summary(&run, &targets, &counts, session))
        (PreEscaped(REST))
    };
    Ok((run, page(&title, session, body).into_string()))
}

/// Where the streamed part of the page goes.
const REST: &str = "<!--kiln:rest-->";

/// The rest of run `id`'s page: the job graph and the jobs, only those in
/// status `filter` listed if given.
async fn rest(
    state: &AppState,
    run: &Run,
    filter: Option<&str>,
    session: Option<&Session>,
) -> Result<Markup, sqlx::Error> {
    let id = run.id;
    let (rows, edges) = tokio::try_join!(jobs::rows_of_run(&state.db, id), edges(state, id))?;
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|(id, attr, status, duration_ms, error)| Row {
            id,
            attr,
            status,
            duration_ms,
            error,
        })
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &rows {
        *counts.entry(j.status.as_str()).or_default() += 1;
    }
    let nodes: Vec<Node<'_>> = rows
        .iter()
        .map(|j| Node {
            id: j.id,
            attr: &j.attr,
            status: &j.status,
            duration_ms: j.duration_ms,
        })
        .collect();
    let layout = graph::layout(&nodes, &edges);
    Ok(html! {
        section.graph {
            h2 { "Job graph" }
            p.legend { "Dependencies above their dependents; the "
                span.critical-key { "critical path" } " is outlined." }
            div.graph-frame { (graph::svg(&nodes, &layout)) }
        }
        section #jobs-section {
            h2 { "Jobs" }
            nav.filter {
                a href={ "/runs/" (id) } class=[filter.is_none().then_some("current")] { "all " (rows.len()) }
                @for s in JOB_STATUSES {
                    @if let Some(n) = counts.get(s) {
                        a href={ "/runs/" (id) "?status=" (s) } class={ "status-" (s) @if filter == Some(*s) { " current" } } {
                            (words(s)) " " (n)
                        }
                    }
                }
            }
            table #jobs {
                thead { tr { th { "Attribute" } th { "Status" } th.optional { "Time" } th { "" } } }
                tbody {
                    @for j in rows.iter().filter(|j| filter.is_none_or(|f| j.status == f)) {
                        tr class={ "job status-" (j.status) } {
                            td.attr { a href={ "/jobs/" (j.id) } { (j.attr) }
                                @if let Some(e) = &j.error { div.error-text { (e) } } }
                            td { span class={ "state status-" (j.status) } { (words(&j.status)) } }
                            td.optional { @if j.duration_ms > 0 { (duration(j.duration_ms)) } }
                            td { @if matches!(j.status.as_str(), "failed" | "timed_out" | "cancelled" | "dependency_failed") {
                                (control(&format!("/jobs/{}/rebuild", j.id), "Rebuild", session))
                            } }
                        }
                    }
                }
            }
        }
    })
}

fn summary(
    run: &Run,
    targets: &[runs::Target],
    counts: &BTreeMap<String, usize>,
    session: Option<&Session>,
) -> Markup {
    let id = run.id;
    let active = matches!(run.state.as_str(), "queued" | "running");
    html! {
        section #summary {
            h1 { "Run #" (id) " " span #run-state class={ "state status-" (run.state) } { (words(&run.state)) } }
            dl {
                dt { "Change" } dd { (what(run)) }
                @if let Some(m) = &run.message { dt { "Message" } dd.message { (m.lines().next().unwrap_or("")) } }
                dt { "Tree" } dd { code { (short(&run.tree)) } }
                dt { "Created" } dd { (time(run.created_at)) }
                @if let Some(ms) = run.duration_ms { dt { "Duration" } dd { (duration(ms)) } }
                @if run.attempts > 1 { dt { "Attempts" } dd { (run.attempts) } }
                dt { "Jobs" } dd.counts {
                    @for (s, n) in counts { span class={ "count status-" (s) } { (n) " " (words(s)) } " " }
                }
                @if !targets.is_empty() {
                    dt { "Reports to" } dd { ul.targets { @for t in targets {
                        li class={ "target " (t.state) } {
                            @if let Some(pr) = t.pull_request { "pull request #" (pr) } @else if let Some(b) = &t.branch { "branch " (b) }
                            " at " code { (short(&t.rev)) }
                            @if t.state != "active" { " (" (t.state) ")" }
                        }
                    } } }
                }
                @if let Some(e) = &run.error { dt { "Error" } dd.error-text { (e) } }
                @if run.needs_approval && run.approved_by.is_none() {
                    dt { "Approval" } dd.approval { "Held: a member must approve this pull request's run before steps that use secrets run." }
                }
                @if let Some(by) = &run.approved_by { dt { "Approved by" } dd { (by) } }
            }
            div.controls {
                (control(&format!("/runs/{id}/rebuild"), "Rebuild", session))
                @if active { (control(&format!("/runs/{id}/cancel"), "Cancel", session)) }
                @if run.needs_approval && run.approved_by.is_none() {
                    (control(&format!("/runs/{id}/approve"), "Approve", session))
                }
            }
        }
    }
}

/// `GET /runs/{id}`: the summary is sent as soon as it is read; the graph
/// and the jobs (thousands, for a big run) follow in a second chunk.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(filter): Query<StatusFilter>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let filter = filter.status.filter(|s| !s.is_empty());
    let (run, page) = match head(&state, &viewer, id).await {
        Ok(x) => x,
        Err(e) => return viewer.error(e),
    };
    let Some((top, bottom)) = page.split_once(REST) else {
        return viewer.error(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the run page lost its place for the jobs",
        ));
    };
    let (top, bottom) = (top.to_owned(), bottom.to_owned());
    let session = viewer.session;
    let rest = async move {
        let middle = match rest(&state, &run, filter.as_deref(), session.as_ref()).await {
            Ok(m) => m.into_string(),
            Err(e) => {
                tracing::error!(run = run.id, error = %e, "cannot read the jobs for a run page");
                html! { p.problem { "The jobs of this run could not be read: reload the page." } }
                    .into_string()
            }
        };
        Ok::<_, std::convert::Infallible>(middle + &bottom)
    };
    let body = stream::once(std::future::ready(Ok(top))).chain(stream::once(rest));
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}
