//! `GET /api/v1/runs` (filtered, paginated) and `GET /api/v1/runs/{id}`: a
//! run with its project, targets, job counts and every job, read in one
//! query per table so that a run of thousands of jobs answers in
//! milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::auth::{ProjectRef, Readable, caller};
use super::jobs::{self, Job};
use super::projects::{self, Project};
use super::{ApiError, Page, Paged, next_before};
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};

/// The states a run can be in.
pub const STATES: &[&str] = &[
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "error",
];

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Row id.
    pub id: i64,
    /// Its project's id.
    pub project_id: i64,
    /// Its project's `owner/repo`.
    pub project: String,
    /// Its project's forge instance.
    pub forge: String,
    /// The git tree evaluated.
    pub tree: String,
    /// The commit evaluated (a pull request's local merge commit).
    pub rev: String,
    /// The branch that first asked for it.
    pub branch: Option<String>,
    /// The pull request that first asked for it.
    pub pull_request: Option<i64>,
    /// The head commit's message.
    pub message: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `error`.
    pub state: String,
    /// Secret-using post-build steps may run.
    pub trusted: bool,
    /// Held until someone approves it.
    pub needs_approval: bool,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Why it ended in `error` or `cancelled`.
    pub error: Option<String>,
    /// How many times it was started.
    pub attempts: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub started_at: Option<i64>,
    /// Unix milliseconds.
    pub evaluated_at: Option<i64>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    /// `finished_at - started_at`, once finished.
    pub duration_ms: Option<i64>,
    /// The report's summary counts, once final.
    pub summary: Option<serde_json::Value>,
    #[serde(skip)]
    owner: String,
    #[serde(skip)]
    private: bool,
}

impl Run {
    /// What authz decisions need of its project.
    pub fn access(&self) -> ProjectRef {
        ProjectRef {
            forge: self.forge.clone(),
            name: self.project.clone(),
            owner: self.owner.clone(),
            private: self.private,
        }
    }
}

/// The columns [`run`] reads, from `runs r JOIN projects p`.
const COLUMNS: &str = "r.id, r.project_id, p.name AS project_name, p.forge, p.owner, p.private, \
     r.tree, r.rev, r.branch, r.pull_request, r.message, r.state, r.trusted, r.needs_approval, \
     r.approved_by, r.error, r.attempts, r.created_at, r.started_at, r.evaluated_at, \
     r.finished_at, r.summary";

const FROM: &str = "FROM runs r JOIN projects p ON p.id = r.project_id";

/// A run from a row of [`COLUMNS`], on either backend.
fn run<R>(r: &R) -> Result<Run, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let started_at: Option<i64> = r.try_get("started_at")?;
    let finished_at: Option<i64> = r.try_get("finished_at")?;
    let summary: Option<String> = r.try_get("summary")?;
    Ok(Run {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        project: r.try_get("project_name")?,
        forge: r.try_get("forge")?,
        owner: r.try_get("owner")?,
        private: r.try_get::<i64, _>("private")? != 0,
        tree: r.try_get("tree")?,
        rev: r.try_get("rev")?,
        branch: r.try_get("branch")?,
        pull_request: r.try_get("pull_request")?,
        message: r.try_get("message")?,
        state: r.try_get("state")?,
        trusted: r.try_get::<i64, _>("trusted")? != 0,
        needs_approval: r.try_get::<i64, _>("needs_approval")? != 0,
        approved_by: r.try_get("approved_by")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        started_at,
        evaluated_at: r.try_get("evaluated_at")?,
        finished_at,
        duration_ms: started_at.zip(finished_at).map(|(s, f)| f - s),
        summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// Run `id`, visible or not.
pub async fn by_id(db: &Database, id: i64) -> Result<Option<Run>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE r.id = $1");
    with_pool!(db, pool => {
        let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
        row.as_ref().map(run).transpose()
    })
}

/// Run `id` if the caller may read it; 404 (the same as a missing run)
/// otherwise.
pub async fn readable(
    state: &AppState,
    subject: Option<&kiln_runtime::bindings::authz_types::Subject>,
    id: i64,
) -> Result<Run, ApiError> {
    let missing = || ApiError::not_found(format!("no run {id}"));
    let run = by_id(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading run {id}"), e))?
        .ok_or_else(missing)?;
    if Readable::new(state, subject).project(&run.access()).await {
        Ok(run)
    } else {
        Err(missing())
    }
}

/// The runs in `state`, oldest first.
pub async fn in_state(db: &Database, state: &str) -> Result<Vec<Run>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE r.state = $1 ORDER BY r.id");
    with_pool!(db, pool => {
        let rows = sqlx::query(&sql).bind(state).fetch_all(pool).await?;
        rows.iter().map(run).collect()
    })
}

/// The newest `limit` runs of `project`, newest first.
pub async fn of_project(db: &Database, project: i64, limit: i64) -> Result<Vec<Run>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} {FROM} WHERE r.project_id = $1 ORDER BY r.id DESC LIMIT $2");
    with_pool!(db, pool => {
        let rows = sqlx::query(&sql).bind(project).bind(limit).fetch_all(pool).await?;
        rows.iter().map(run).collect()
    })
}

/// The latest run of each pushed branch of `project`, by branch.
pub async fn latest_per_branch(
    db: &Database,
    project: i64,
) -> Result<Vec<(String, Run)>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS}, l.branch AS line_branch \
         FROM (SELECT branch, MAX(run_id) AS run_id FROM targets \
               WHERE project_id = $1 AND kind = 'push' AND branch IS NOT NULL \
               GROUP BY branch) l \
         JOIN runs r ON r.id = l.run_id JOIN projects p ON p.id = r.project_id \
         ORDER BY l.branch"
    );
    with_pool!(db, pool => {
        let rows = sqlx::query(&sql).bind(project).fetch_all(pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("line_branch")?, run(r)?)))
            .collect()
    })
}

/// `GET /api/v1/runs` filters.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Project id, or `owner/repo`.
    pub project: Option<String>,
    /// Runs that built this branch (first, or as a later target).
    pub branch: Option<String>,
    /// Runs that built this pull request.
    pub pull_request: Option<i64>,
    /// Runs that evaluated this commit or report to it.
    pub rev: Option<String>,
    /// Runs in this state.
    pub state: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Only runs with smaller ids.
    pub before: Option<i64>,
}

enum Arg {
    Int(i64),
    Text(String),
}

/// `GET /api/v1/runs`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Result<Json<Paged<Run>>, ApiError> {
    let subject = caller(&state, &headers).await?;
    let page = Page {
        limit: filter.limit,
        before: filter.before,
    };
    let mut conditions = vec!["r.id < $1".to_owned()];
    let mut args = vec![Arg::Int(page.before())];
    let mut arg = |a: Arg| {
        args.push(a);
        args.len()
    };
    if let Some(project) = &filter.project {
        match project.parse::<i64>() {
            Ok(id) => conditions.push(format!("r.project_id = ${}", arg(Arg::Int(id)))),
            Err(_) => conditions.push(format!("p.name = ${}", arg(Arg::Text(project.clone())))),
        }
    }
    if let Some(branch) = &filter.branch {
        let n = arg(Arg::Text(branch.clone()));
        conditions.push(format!(
            "(r.branch = ${n} OR EXISTS (SELECT 1 FROM targets t \
             WHERE t.run_id = r.id AND t.branch = ${n}))"
        ));
    }
    if let Some(pr) = filter.pull_request {
        let n = arg(Arg::Int(pr));
        conditions.push(format!(
            "(r.pull_request = ${n} OR EXISTS (SELECT 1 FROM targets t \
             WHERE t.run_id = r.id AND t.pull_request = ${n}))"
        ));
    }
    if let Some(rev) = &filter.rev {
        let n = arg(Arg::Text(rev.clone()));
        conditions.push(format!(
            "(r.rev = ${n} OR EXISTS (SELECT 1 FROM targets t \
             WHERE t.run_id = r.id AND t.rev = ${n}))"
        ));
    }
    if let Some(s) = &filter.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown run state `{s}`; expected one of {}",
                STATES.join(", ")
            )));
        }
        conditions.push(format!("r.state = ${}", arg(Arg::Text(s.clone()))));
    }
    let limit = arg(Arg::Int(page.limit()));
    let sql = format!(
        "SELECT {COLUMNS} {FROM} WHERE {} ORDER BY r.id DESC LIMIT ${limit}",
        conditions.join(" AND ")
    );
    let rows: Vec<Run> = with_pool!(&state.db, pool => {
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = match a {
                Arg::Int(i) => q.bind(*i),
                Arg::Text(s) => q.bind(s.as_str()),
            };
        }
        let rows = q.fetch_all(pool).await;
        rows.and_then(|rows| rows.iter().map(run).collect())
    })
    .map_err(|e| ApiError::database("listing runs", e))?;
    let scanned = rows.len();
    let last = rows.last().map(|r| r.id);
    let mut readable = Readable::new(&state, subject.as_ref());
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        if readable.project(&r.access()).await {
            items.push(r);
        }
    }
    Ok(Json(Paged {
        items,
        next_before: next_before(scanned, &page, last),
    }))
}

/// A place the run reports to: a branch head or a pull request's head.
#[derive(Debug, Serialize)]
pub struct Target {
    /// Row id.
    pub id: i64,
    /// `push` or `pull_request`.
    pub kind: String,
    /// The branch.
    pub branch: Option<String>,
    /// The pull request.
    pub pull_request: Option<i64>,
    /// The commit statuses go on.
    pub rev: String,
    /// `active` or `superseded`.
    pub state: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

type TargetTuple = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    String,
    String,
    i64,
);

pub async fn targets(db: &Database, run: i64) -> Result<Vec<Target>, sqlx::Error> {
    let rows: Vec<TargetTuple> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, kind, branch, pull_request, rev, state, created_at FROM targets \
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|t| Target {
            id: t.0,
            kind: t.1,
            branch: t.2,
            pull_request: t.3,
            rev: t.4,
            state: t.5,
            created_at: t.6,
        })
        .collect())
}

/// `GET /api/v1/runs/{id}`.
#[derive(Debug, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Its project.
    pub project: Project,
    /// Where it reports.
    pub targets: Vec<Target>,
    /// How many jobs are in each status.
    pub job_counts: BTreeMap<String, usize>,
    /// The first [`FAILED_SHOWN`] failed jobs, in evaluation order. The
    /// whole list is at `jobs_url`: a run of thousands of jobs stays a
    /// small, fast answer here.
    pub failed_jobs: Vec<Job>,
    /// `/api/v1/runs/{id}/jobs`.
    pub jobs_url: String,
}

/// Failed jobs listed in a run's detail.
pub const FAILED_SHOWN: i64 = 100;

/// Run `id` with everything about it.
pub async fn detail(state: &AppState, run: Run) -> Result<RunDetail, ApiError> {
    let id = run.id;
    let doing = format!("reading run {id}");
    let db = &state.db;
    // A finished run's counts are its report summary; a running one's are
    // counted.
    let final_counts = run.summary.as_ref().and_then(counts_of_summary);
    let counting = async {
        match &final_counts {
            Some(_) => Ok(Vec::new()),
            None => jobs::counts_of_run(db, id).await,
        }
    };
    let (project, targets, counts, failed_jobs) = tokio::try_join!(
        projects::by_id(db, run.project_id),
        targets(db, id),
        counting,
        jobs::failed_of_run(db, id, FAILED_SHOWN),
    )
    .map_err(|e| ApiError::database(&doing, e))?;
    let counts = final_counts.unwrap_or(counts);
    let project = project.ok_or_else(|| ApiError::not_found(format!("no project of run {id}")))?;
    let job_counts = counts
        .into_iter()
        .map(|(status, n)| (status, usize::try_from(n).unwrap_or(0)))
        .collect();
    Ok(RunDetail {
        run,
        project,
        targets,
        job_counts,
        failed_jobs,
        jobs_url: format!("/api/v1/runs/{id}/jobs"),
    })
}

/// Job counts by status from a finished run's report summary (statuses
/// with no job left out, as a count query would).
pub fn counts_of_summary(summary: &serde_json::Value) -> Option<Vec<(String, i64)>> {
    const STATUSES: [&str; 8] = [
        "succeeded",
        "cached",
        "failed",
        "dependency_failed",
        "eval_error",
        "unsupported_system",
        "timed_out",
        "cancelled",
    ];
    let summary = summary.as_object()?;
    Some(
        STATUSES
            .iter()
            .filter_map(|s| Some(((*s).to_owned(), summary.get(*s)?.as_i64()?)))
            .filter(|(_, n)| *n > 0)
            .collect(),
    )
}

/// `GET /api/v1/runs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<RunDetail>, ApiError> {
    let subject = caller(&state, &headers).await?;
    let run = readable(&state, subject.as_ref(), id).await?;
    Ok(Json(detail(&state, run).await?))
}
