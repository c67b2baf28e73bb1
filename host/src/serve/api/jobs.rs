//! `GET /api/v1/runs/{id}/jobs?status=` and `GET /api/v1/jobs/{id}`: the
//! jobs of a run (one per attribute and system) with their timings and
//! errors.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::auth::caller;
use super::runs::{self, Run};
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};

/// A job.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// Its run.
    pub run_id: i64,
    /// Position in evaluation order.
    pub idx: i64,
    /// The attribute (`checks.x86_64-linux.fmt`).
    pub attr: String,
    /// The system it builds for.
    pub system: String,
    /// The derivation, once evaluated.
    pub drv_path: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, …
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The dependency whose failure stopped it.
    pub failed_dependency: Option<String>,
    /// How many times it was built.
    pub attempts: i64,
    /// Unix milliseconds.
    pub started_at: Option<i64>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    /// Build time.
    pub duration_ms: i64,
    /// Whether `/api/v1/jobs/{id}/log` has something.
    pub has_log: bool,
    #[serde(skip)]
    pub(crate) log_path: Option<String>,
}

const COLUMNS: &str = "j.id, j.run_id, j.idx, j.attr, j.system, j.drv_path, j.status, j.error, \
     j.failed_dependency, j.attempts, j.started_at, j.finished_at, j.duration_ms, j.log_path";

type Tuple = (
    i64,
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    Option<String>,
);

fn job(t: Tuple) -> Job {
    Job {
        id: t.0,
        run_id: t.1,
        idx: t.2,
        attr: t.3,
        system: t.4,
        drv_path: t.5,
        status: t.6,
        error: t.7,
        failed_dependency: t.8,
        attempts: t.9,
        started_at: t.10,
        finished_at: t.11,
        duration_ms: t.12,
        has_log: t.13.is_some(),
        log_path: t.13,
    }
}

/// The jobs of `run` in evaluation order, only those in `status` if given.
pub async fn of_run(
    db: &Database,
    run: i64,
    status: Option<&str>,
) -> Result<Vec<Job>, sqlx::Error> {
    let sql = match status {
        Some(_) => format!(
            "SELECT {COLUMNS} FROM jobs j WHERE j.run_id = $1 AND j.status = $2 ORDER BY j.idx, j.id"
        ),
        None => format!("SELECT {COLUMNS} FROM jobs j WHERE j.run_id = $1 ORDER BY j.idx, j.id"),
    };
    let rows: Vec<Tuple> = with_pool!(db, pool => {
        let mut q = sqlx::query_as(&sql).bind(run);
        if let Some(status) = status {
            q = q.bind(status);
        }
        q.fetch_all(pool).await
    })?;
    Ok(rows.into_iter().map(job).collect())
}

/// What a page listing a run's jobs shows of each: id, attribute, status,
/// build time and error, in evaluation order (fewer columns than [`Job`],
/// for runs of thousands of jobs).
pub async fn rows_of_run(
    db: &Database,
    run: i64,
) -> Result<Vec<(i64, String, String, i64, Option<String>)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, attr, status, duration_ms, error FROM jobs WHERE run_id = $1 \
             ORDER BY idx, id",
        )
        .bind(run)
        .fetch_all(pool)
        .await
    })
}

/// How many jobs of run `run` are in each status.
pub async fn counts_of_run(db: &Database, run: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as("SELECT status, COUNT(*) FROM jobs WHERE run_id = $1 GROUP BY status")
            .bind(run)
            .fetch_all(pool)
            .await
    })
}

/// The first `limit` failed jobs of run `run` (failed, timed out,
/// evaluation error), in evaluation order.
pub async fn failed_of_run(db: &Database, run: i64, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs j WHERE j.run_id = $1 \
         AND j.status IN ('failed', 'timed_out', 'eval_error') ORDER BY j.idx, j.id LIMIT $2"
    );
    let rows: Vec<Tuple> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(run).bind(limit).fetch_all(pool).await
    })?;
    Ok(rows.into_iter().map(job).collect())
}

/// Job `id` with its outputs and post-build results (JSON text), visible
/// or not.
pub async fn by_id(
    db: &Database,
    id: i64,
) -> Result<Option<(Job, String, Option<String>)>, sqlx::Error> {
    use sqlx::Row as _;
    let sql = format!("SELECT {COLUMNS}, j.outputs, j.post_build FROM jobs j WHERE j.id = $1");
    // Sixteen columns: more than sqlx decodes into one tuple with the
    // extra two, so the job's are read by position.
    let row: Option<(Tuple, String, Option<String>)> = with_pool!(db, pool => {
        match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
            None => None,
            Some(r) => Some((
                (
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                    r.try_get(8)?,
                    r.try_get(9)?,
                    r.try_get(10)?,
                    r.try_get(11)?,
                    r.try_get(12)?,
                    r.try_get(13)?,
                ),
                r.try_get(14)?,
                r.try_get(15)?,
            )),
        }
    });
    Ok(row.map(|(t, outputs, post_build)| (job(t), outputs, post_build)))
}

/// Job `id` and its run, if the caller may read them; 404 otherwise.
pub async fn readable(
    state: &AppState,
    subject: Option<&kiln_runtime::bindings::authz_types::Subject>,
    id: i64,
) -> Result<(Job, Run, String, Option<String>), ApiError> {
    let missing = || ApiError::not_found(format!("no job {id}"));
    let (job, outputs, post_build) = by_id(&state.db, id)
        .await
        .map_err(|e| ApiError::database(&format!("reading job {id}"), e))?
        .ok_or_else(missing)?;
    let run = runs::readable(state, subject, job.run_id)
        .await
        .map_err(|e| match e.status {
            axum::http::StatusCode::NOT_FOUND => missing(),
            _ => e,
        })?;
    Ok((job, run, outputs, post_build))
}

/// `?status=`.
#[derive(Debug, Default, Deserialize)]
pub struct StatusFilter {
    /// Only jobs in this status.
    pub status: Option<String>,
}

/// `GET /api/v1/runs/{id}/jobs`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(filter): Query<StatusFilter>,
) -> Result<Json<Vec<Job>>, ApiError> {
    let subject = caller(&state, &headers).await?;
    runs::readable(&state, subject.as_ref(), id).await?;
    let jobs = of_run(&state.db, id, filter.status.as_deref())
        .await
        .map_err(|e| ApiError::database(&format!("reading the jobs of run {id}"), e))?;
    Ok(Json(jobs))
}

/// `GET /api/v1/jobs/{id}`.
#[derive(Debug, Serialize)]
pub struct JobDetail {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// Its run.
    pub run: Run,
    /// Output name → store path.
    pub outputs: serde_json::Value,
    /// The post-build steps' results, once they ran.
    pub post_build: Option<serde_json::Value>,
}

/// `GET /api/v1/jobs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<JobDetail>, ApiError> {
    let subject = caller(&state, &headers).await?;
    let (job, run, outputs, post_build) = readable(&state, subject.as_ref(), id).await?;
    Ok(Json(JobDetail {
        job,
        run,
        outputs: serde_json::from_str(&outputs).unwrap_or_else(|_| serde_json::json!({})),
        post_build: post_build.and_then(|p| serde_json::from_str(&p).ok()),
    }))
}
