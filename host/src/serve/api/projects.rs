//! `GET /api/v1/projects` and `GET /api/v1/projects/{id}`: the repositories
//! Kiln builds, and for one of them the latest run of each branch.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Serialize;

use super::auth::{ProjectRef, Readable, caller};
use super::runs::{self, Run};
use super::{ApiError, Page, Paged, next_before};
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};

/// A project.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    /// Row id.
    pub id: i64,
    /// The `[forges.<instance>]` it belongs to.
    pub forge: String,
    /// `owner/repo`.
    pub name: String,
    /// The owning organisation or user.
    pub owner: String,
    /// Where it is fetched from.
    pub clone_url: String,
    /// Its page on the forge.
    pub web_url: Option<String>,
    /// The branch whose builds are kept.
    pub default_branch: String,
    /// Visible only to those the authz plugin lets read it.
    pub private: bool,
    /// `configured`, `discovered` or `webhook`.
    pub source: String,
    /// Unix milliseconds.
    pub updated_at: i64,
}

impl Project {
    /// What authz decisions need.
    pub fn access(&self) -> ProjectRef {
        ProjectRef {
            forge: self.forge.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            private: self.private,
        }
    }
}

const COLUMNS: &str = "p.id, p.forge, p.name, p.owner, p.clone_url, p.web_url, \
                       p.default_branch, p.private, p.source, p.updated_at";

type Tuple = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    String,
    i64,
);

fn project(t: Tuple) -> Project {
    Project {
        id: t.0,
        forge: t.1,
        name: t.2,
        owner: t.3,
        clone_url: t.4,
        web_url: t.5,
        default_branch: t.6,
        private: t.7 != 0,
        source: t.8,
        updated_at: t.9,
    }
}

/// Project `id`, visible or not.
pub async fn by_id(db: &Database, id: i64) -> Result<Option<Project>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM projects p WHERE p.id = $1");
    let row: Option<Tuple> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
    })?;
    Ok(row.map(project))
}

/// `GET /api/v1/projects`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Paged<Project>>, ApiError> {
    let subject = caller(&state, &headers).await?;
    Ok(Json(visible(&state, subject.as_ref(), &page).await?))
}

/// One page of the projects `subject` may read, newest first.
pub async fn visible(
    state: &AppState,
    subject: Option<&kiln_runtime::bindings::authz_types::Subject>,
    page: &Page,
) -> Result<Paged<Project>, ApiError> {
    let sql =
        format!("SELECT {COLUMNS} FROM projects p WHERE p.id < $1 ORDER BY p.id DESC LIMIT $2");
    let rows: Vec<Tuple> = with_pool!(&state.db, pool => {
        sqlx::query_as(&sql)
            .bind(page.before())
            .bind(page.limit())
            .fetch_all(pool)
            .await
    })
    .map_err(|e| ApiError::database("listing projects", e))?;
    let scanned = rows.len();
    let last = rows.last().map(|r| r.0);
    let mut readable = Readable::new(state, subject);
    let mut items = Vec::with_capacity(rows.len());
    for p in rows.into_iter().map(project) {
        if readable.project(&p.access()).await {
            items.push(p);
        }
    }
    Ok(Paged {
        items,
        next_before: next_before(scanned, page, last),
    })
}

/// The latest run of one branch.
#[derive(Debug, Serialize)]
pub struct BranchRun {
    /// The branch.
    pub branch: String,
    /// Its latest run.
    pub run: Run,
}

/// `GET /api/v1/projects/{id}`.
#[derive(Debug, Serialize)]
pub struct ProjectDetail {
    /// The project.
    #[serde(flatten)]
    pub project: Project,
    /// The latest run of each pushed branch, by branch name.
    pub branches: Vec<BranchRun>,
}

/// `GET /api/v1/projects/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<ProjectDetail>, ApiError> {
    let subject = caller(&state, &headers).await?;
    let missing = || ApiError::not_found(format!("no project {id}"));
    let project = by_id(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading project {id}"), e))?
        .ok_or_else(missing)?;
    if !Readable::new(&state, subject.as_ref())
        .project(&project.access())
        .await
    {
        return Err(missing());
    }
    let branches = runs::latest_per_branch(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading the runs of project {id}"), e))?
        .into_iter()
        .map(|(branch, run)| BranchRun { branch, run })
        .collect();
    Ok(Json(ProjectDetail { project, branches }))
}
