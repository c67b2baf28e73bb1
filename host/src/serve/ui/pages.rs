//! The smaller pages: projects, one project's runs, workers, plugins, and
//! the status badge.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::layout::page;
use super::{Viewer, duration, short, time, words};
use crate::serve::api::auth::Readable;
use crate::serve::api::projects::{self, Project};
use crate::serve::api::runs::{self, Run};
use crate::serve::api::{ApiError, Page};
use crate::serve::app::AppState;
use crate::serve::db::Database;

/// Runs listed on a project's page.
const PROJECT_RUNS: i64 = 50;

/// A run's state as a coloured label.
pub fn state_label(state: &str) -> Markup {
    html! { span class={ "state status-" (state) } { (words(state)) } }
}

/// What a run built: its branch or pull request and commit.
pub fn what(run: &Run) -> Markup {
    html! {
        @if let Some(pr) = run.pull_request {
            "PR #" (pr)
        } @else if let Some(b) = &run.branch {
            (b)
        }
        " " code { (short(&run.rev)) }
    }
}

/// A table of runs.
pub fn runs_table(runs: &[Run], with_project: bool) -> Markup {
    html! {
        table.runs {
            thead { tr {
                th { "Run" }
                @if with_project { th { "Project" } }
                th { "Change" } th { "State" } th.optional { "Duration" } th.optional { "Created" }
            } }
            tbody {
                @for r in runs {
                    tr class={ "run status-" (r.state) } {
                        td { a href={ "/runs/" (r.id) } { "#" (r.id) } }
                        @if with_project { td { a href={ "/projects/" (r.project_id) } { (r.project) } } }
                        td.change {
                            (what(r))
                            @if let Some(m) = &r.message {
                                " " span.message { (m.lines().next().unwrap_or("")) }
                            }
                        }
                        td { (state_label(&r.state)) }
                        td.optional { @if let Some(ms) = r.duration_ms { (duration(ms)) } }
                        td.optional { (time(r.created_at)) }
                    }
                }
            }
        }
    }
}

/// `GET /`: the projects the viewer may read, each with its latest run
/// per branch.
pub async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let page_of = Page {
        limit: Some(Page::MAX),
        before: None,
    };
    let projects = match projects::visible(&state, viewer.subject(), &page_of).await {
        Ok(p) => p.items,
        Err(e) => return viewer.error(e),
    };
    let mut rows = Vec::with_capacity(projects.len());
    for p in projects {
        match runs::latest_per_branch(&state.db, p.id).await {
            Ok(branches) => rows.push((p, branches)),
            Err(e) => return viewer.error(ApiError::database("reading the latest runs", e)),
        }
    }
    let body = html! {
        h1 { "Projects" }
        @if rows.is_empty() {
            p.empty { "No project yet: Kiln lists a project once a forge names it (configuration, discovery or a webhook)." }
        }
        ul.projects {
            @for (p, branches) in &rows {
                li.project {
                    h2 { a href={ "/projects/" (p.id) } { (p.name) } " " span.forge { (p.forge) } }
                    @if branches.is_empty() {
                        p.empty { "Nothing built yet." }
                    }
                    ul.branches {
                        @for (branch, run) in branches {
                            li {
                                span.branch { (branch) } " "
                                a href={ "/runs/" (run.id) } { (state_label(&run.state)) }
                                " " code { (short(&run.rev)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Projects", viewer.session.as_ref(), body).into_response()
}

/// The project `id` if the viewer may read it.
async fn readable_project(state: &AppState, viewer: &Viewer, id: i64) -> Result<Project, ApiError> {
    let missing = || ApiError::not_found(format!("no project {id}"));
    let project = projects::by_id(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading project {id}"), e))?
        .ok_or_else(missing)?;
    if Readable::new(state, viewer.subject())
        .project(&project.access())
        .await
    {
        Ok(project)
    } else {
        Err(missing())
    }
}

/// `GET /projects/{id}`: the latest run per branch and the newest runs.
pub async fn project(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let project = match readable_project(&state, &viewer, id).await {
        Ok(p) => p,
        Err(e) => return viewer.error(e),
    };
    let loaded = tokio::try_join!(
        runs::latest_per_branch(&state.db, id),
        runs::of_project(&state.db, id, PROJECT_RUNS),
    );
    let (branches, recent) = match loaded {
        Ok(x) => x,
        Err(e) => {
            return viewer.error(ApiError::database(
                &format!("reading the runs of project {id}"),
                e,
            ));
        }
    };
    let badge = format!("/badge/{}.svg", project.name);
    let body = html! {
        h1 { (project.name) " " img.badge src=(badge) alt="build status"; }
        p.meta {
            (project.forge) " · default branch " code { (project.default_branch) }
            @if project.private { " · private" }
            @if let Some(url) = &project.web_url { " · " a href=(url) { "on the forge" } }
        }
        h2 { "Branches" }
        @if branches.is_empty() { p.empty { "No branch built yet." } }
        ul.branches {
            @for (branch, run) in &branches {
                li {
                    span.branch { (branch) } " "
                    a href={ "/runs/" (run.id) } { (state_label(&run.state)) }
                    " " code { (short(&run.rev)) }
                }
            }
        }
        h2 { "Runs" }
        (runs_table(&recent, false))
    };
    page(&project.name, viewer.session.as_ref(), body).into_response()
}

/// `GET /workers`: build slots and the runs in progress.
pub async fn workers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let slots = state.pipeline.slots();
    let all = match runs::in_state(&state.db, "running").await {
        Ok(r) => r,
        Err(e) => return viewer.error(ApiError::database("listing running runs", e)),
    };
    let mut readable = Readable::new(&state, viewer.subject());
    let mut running = Vec::with_capacity(all.len());
    for run in all {
        if readable.project(&run.access()).await {
            running.push(run);
        }
    }
    let queued = match runs::in_state(&state.db, "queued").await {
        Ok(r) => r.len(),
        Err(e) => return viewer.error(ApiError::database("listing queued runs", e)),
    };
    let body = html! {
        h1 { "Workers" }
        dl.slots {
            dt { "Runs" } dd #runs-in-use { (slots.runs_in_use) " of " (slots.runs_total) " in progress" }
            dt { "Builds" } dd #jobs-in-use { (slots.jobs_in_use) " of " (slots.jobs_total) " build slots in use" }
            dt { "Queue" } dd #queued { (queued) " runs waiting" }
        }
        h2 { "Running" }
        @if running.is_empty() { p.empty { "Nothing is running." } }
        (runs_table(&running, true))
    };
    page("Workers", viewer.session.as_ref(), body).into_response()
}

/// `GET /plugins`: each plugin, what it asks for and what it is granted.
pub async fn plugins(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let list = crate::serve::api::plugins::entries(&state);
    let body = html! {
        h1 { "Plugins" }
        table.plugins {
            thead { tr { th { "Plugin" } th { "World" } th { "Granted" } th.optional { "Used by" } } }
            tbody {
                @for p in &list.plugins {
                    tr.plugin {
                        td {
                            strong { (p.name) } " " span.version { (p.version) }
                            br; span.summary { (p.summary) }
                        }
                        td { (p.world) @if p.authz { " (policy)" } }
                        td.grant {
                            @match &p.grant {
                                Some(g) => {
                                    @if !g.hosts.is_empty() { div { "hosts: " (g.hosts.join(", ")) } }
                                    @if !g.secrets.is_empty() { div { "secrets: " (g.secrets.join(", ")) } }
                                    @if g.kv { div { "key-value store" } }
                                    @if g.hosts.is_empty() && g.secrets.is_empty() && !g.kv { "nothing" }
                                }
                                None => { "nothing" }
                            }
                        }
                        td.optional { (p.forges.join(", ")) }
                    }
                }
            }
        }
        @if !list.failures.is_empty() {
            h2 { "Not loaded" }
            ul.failures {
                @for f in &list.failures { li { code { (f.path) } ": " (f.error) } }
            }
        }
    };
    page("Plugins", viewer.session.as_ref(), body).into_response()
}

/// `GET /badge/{project}.svg`: the state of the project's default branch,
/// as a shields-style badge.
pub async fn badge(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let viewer = Viewer::of(&state, &headers).await;
    let name = name.strip_suffix(".svg").unwrap_or(&name).to_owned();
    let label = match badge_state(&state, &viewer, &name).await {
        Ok(Some(s)) => s,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no project {name}")).into_response(),
        Err(e) => return viewer.error(e),
    };
    let colour = match label.as_str() {
        "succeeded" => "#2e7d32",
        "failed" | "error" => "#c62828",
        "running" | "queued" => "#1565c0",
        _ => "#757575",
    };
    let text = words(&label);
    let left = 34u32;
    let right = 12 + 7 * text.chars().count() as u32;
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="kiln: {text}"><title>kiln: {text}</title><rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/><g fill="#fff" font-family="Verdana,sans-serif" font-size="11"><text x="6" y="14">kiln</text><text x="{tx}" y="14">{text}</text></g></svg>"##,
        w = left + right,
        tx = left + 6,
    );
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        svg,
    )
        .into_response()
}

/// The state of the latest run of `name`'s default branch; `None` for a
/// project that does not exist or that the viewer may not read.
async fn badge_state(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let id: Option<i64> = crate::serve::db::with_pool!(&state.db, pool => {
        sqlx::query_scalar("SELECT id FROM projects WHERE name = $1 ORDER BY id LIMIT 1")
            .bind(name)
            .fetch_optional(pool)
            .await
    })
    .map_err(|e| ApiError::database("finding a project", e))?;
    let Some(id) = id else { return Ok(None) };
    let project = match readable_project(state, viewer, id).await {
        Ok(p) => p,
        Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(None),
        Err(e) => return Err(e),
    };
    let branches = runs::latest_per_branch(&state.db, id)
        .await
        .map_err(|e| ApiError::database("reading the latest runs", e))?;
    Ok(Some(
        branches
            .into_iter()
            .find(|(b, _)| *b == project.default_branch)
            .map_or_else(|| "unknown".to_owned(), |(_, r)| r.state),
    ))
}
