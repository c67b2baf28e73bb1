//! The pipeline's queries on projects, runs, targets, jobs and statuses.
//! Each state change is one statement or one transaction; callers never
//! hold a transaction across a build or an HTTP call.

use crate::serve::db::{Database, with_pool};

use super::now_ms;

/// A run's control-relevant state.
#[derive(Debug, Clone)]
pub struct RunState {
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `error`.
    pub state: String,
    /// Held for approval.
    pub needs_approval: bool,
}

/// Runs a killed service left `running` go back to `queued` (they are run
/// again; what was built comes out cached). Returns how many.
pub async fn requeue_interrupted(db: &Database) -> Result<u64, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("UPDATE runs SET state = 'queued', rerun_steps = 1 WHERE state = 'running'")
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })
}

/// The state of run `id`, if it exists.
pub async fn run_state(db: &Database, id: i64) -> Result<Option<RunState>, sqlx::Error> {
    let row: Option<(String, i64)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT state, needs_approval FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
    })?;
    Ok(row.map(|(state, held)| RunState {
        state,
        needs_approval: held != 0,
    }))
}

/// Whether job `job` belongs to run `run`.
pub async fn job_in_run(db: &Database, run: i64, job: i64) -> Result<bool, sqlx::Error> {
    let n: i64 = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE id = $1 AND run_id = $2")
            .bind(job)
            .bind(run)
            .fetch_one(pool)
            .await
    })?;
    Ok(n > 0)
}

/// Cancel a queued or running run with `reason`.
pub async fn cancel_run(db: &Database, run: i64, reason: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query(
            "UPDATE runs SET state = 'cancelled', error = $2, finished_at = $3 \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(run)
        .bind(reason)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|_| ())
    })
}

/// Queue run `run` again, its post-build steps to run on cached jobs too;
/// `approve` also lets it use secrets, recording `by`.
pub async fn requeue_run(
    db: &Database,
    run: i64,
    approve: bool,
    by: Option<&str>,
) -> Result<(), sqlx::Error> {
    let sql = if approve {
        "UPDATE runs SET state = 'queued', rerun_steps = 1, error = NULL, finished_at = NULL, \
         trusted = 1, needs_approval = 0, approved_by = $2 WHERE id = $1"
    } else {
        "UPDATE runs SET state = 'queued', rerun_steps = 1, error = NULL, finished_at = NULL \
         WHERE id = $1"
    };
    with_pool!(db, pool => {
        let mut q = sqlx::query(sql).bind(run);
        if approve {
            q = q.bind(by);
        }
        q.execute(pool).await.map(|_| ())
    })
}

/// A change event not yet handled.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Row id.
    pub id: i64,
    /// Forge instance.
    pub forge: String,
    /// Repository full name.
    pub project: String,
    /// The event (JSON).
    pub payload: serde_json::Value,
}

/// New events, oldest first.
pub async fn new_events(db: &Database, limit: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT e.id, d.forge, e.project, e.payload FROM events e \
             JOIN deliveries d ON d.id = e.delivery_id \
             WHERE e.state = 'new' ORDER BY e.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(id, forge, project, payload)| EventRow {
            id,
            forge,
            project,
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        })
        .collect())
}

/// Record why event `id` is not handled yet.
pub async fn note_event(db: &Database, id: i64, note: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("UPDATE events SET note = $2 WHERE id = $1")
            .bind(id)
            .bind(note)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Mark event `id` ignored, with the reason.
pub async fn ignore_event(db: &Database, id: i64, note: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("UPDATE events SET state = 'ignored', note = $2 WHERE id = $1")
            .bind(id)
            .bind(note)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// A project row.
#[derive(Debug, Clone)]
pub struct ProjectRow {
    /// Row id.
    pub id: i64,
    /// Forge instance.
    pub forge: String,
    /// Full name.
    pub name: String,
    /// Where to fetch it.
    pub clone_url: String,
    /// Its default branch.
    pub default_branch: String,
    /// `configured`, `discovered` or `webhook`.
    pub source: String,
    /// The repository record (JSON).
    pub repository: serde_json::Value,
}

type ProjectTuple = (i64, String, String, String, String, String, String);

fn project_row(t: ProjectTuple) -> ProjectRow {
    ProjectRow {
        id: t.0,
        forge: t.1,
        name: t.2,
        clone_url: t.3,
        default_branch: t.4,
        source: t.5,
        repository: serde_json::from_str(&t.6).unwrap_or(serde_json::Value::Null),
    }
}

const PROJECT_COLUMNS: &str = "id, forge, name, clone_url, default_branch, source, repository";

/// Project `name` of forge instance `forge`.
pub async fn project(
    db: &Database,
    forge: &str,
    name: &str,
) -> Result<Option<ProjectRow>, sqlx::Error> {
    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE forge = $1 AND name = $2");
    let row: Option<ProjectTuple> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(forge).bind(name).fetch_optional(pool).await
    })?;
    Ok(row.map(project_row))
}

/// Project by id.
pub async fn project_by_id(db: &Database, id: i64) -> Result<Option<ProjectRow>, sqlx::Error> {
    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1");
    let row: Option<ProjectTuple> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
    })?;
    Ok(row.map(project_row))
}

/// Every project.
pub async fn projects(db: &Database) -> Result<Vec<ProjectRow>, sqlx::Error> {
    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id");
    let rows: Vec<ProjectTuple> = with_pool!(db, pool => {
        sqlx::query_as(&sql).fetch_all(pool).await
    })?;
    Ok(rows.into_iter().map(project_row).collect())
}

/// Insert or refresh a project from its repository record.
pub async fn upsert_project(
    db: &Database,
    forge: &str,
    repository: &serde_json::Value,
    source: &str,
) -> Result<ProjectRow, sqlx::Error> {
    let s = |k: &str| {
        repository
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = s("full_name");
    let private = repository
        .get("private")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let web_url = repository
        .get("web_url")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    with_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO projects \
             (forge, name, owner, clone_url, web_url, default_branch, private, repository, source, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (forge, name) DO UPDATE SET owner = excluded.owner, \
             clone_url = excluded.clone_url, web_url = excluded.web_url, \
             default_branch = excluded.default_branch, private = excluded.private, \
             repository = excluded.repository, updated_at = excluded.updated_at",
        )
        .bind(forge)
        .bind(&name)
        .bind(s("owner"))
        .bind(s("clone_url"))
        .bind(web_url)
        .bind(s("default_branch"))
        .bind(i64::from(private))
        .bind(repository.to_string())
        .bind(source)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|_| ())
    })?;
    project(db, forge, &name)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// A branch or a pull request: what a newer commit supersedes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Pushes to a branch.
    Branch(String),
    /// A pull request's heads.
    PullRequest(i64),
}

/// A target to record.
#[derive(Debug, Clone)]
pub struct Attach {
    /// Project id.
    pub project: i64,
    /// The event, if any.
    pub event: Option<i64>,
    /// `push` or `pull_request`.
    pub kind: &'static str,
    /// Branch (a pull request's head branch).
    pub branch: Option<String>,
    /// Pull request number.
    pub pull_request: Option<i64>,
    /// Where statuses go.
    pub head_rev: String,
    /// What is evaluated.
    pub eval_rev: String,
    /// Its tree (the run key).
    pub tree: String,
    /// Head commit subject.
    pub message: Option<String>,
    /// May use secrets.
    pub trusted: bool,
    /// Set for a run that cannot start (a merge conflict): it is recorded
    /// in state `error` with this message.
    pub error: Option<String>,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The run the target belongs to.
    pub run: i64,
    /// A run was created (not shared).
    pub created: bool,
    /// Runs cancelled because their every target was superseded.
    pub stopped: Vec<i64>,
}

/// The body of [`supersede_line`] inside a transaction; `spare` is a run
/// never cancelled (the one about to get a target).
macro_rules! supersede_body {
    ($tx:expr, $project:expr, $line:expr, $keep:expr, $spare:expr) => {{
        let keep = $keep.unwrap_or("");
        let runs: Vec<i64> = match $line {
            Line::Branch(b) => {
                sqlx::query_scalar(
                    "UPDATE targets SET state = 'superseded' WHERE project_id = $1 \
                     AND kind = 'push' AND branch = $2 AND state = 'active' AND rev <> $3 \
                     RETURNING run_id",
                )
                .bind($project)
                .bind(b)
                .bind(keep)
                .fetch_all(&mut **$tx)
                .await?
            }
            Line::PullRequest(n) => {
                sqlx::query_scalar(
                    "UPDATE targets SET state = 'superseded' WHERE project_id = $1 \
                     AND kind = 'pull_request' AND pull_request = $2 AND state = 'active' \
                     AND rev <> $3 RETURNING run_id",
                )
                .bind($project)
                .bind(n)
                .bind(keep)
                .fetch_all(&mut **$tx)
                .await?
            }
        };
        let mut stopped = Vec::new();
        for run in runs {
            if Some(run) == $spare || stopped.contains(&run) {
                continue;
            }
            let done = sqlx::query(
                "UPDATE runs SET state = 'cancelled', error = 'superseded by a newer commit', \
                 finished_at = $2 WHERE id = $1 AND state IN ('queued', 'running') \
                 AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.run_id = $1 AND t.state = 'active')",
            )
            .bind(run)
            .bind(now_ms())
            .execute(&mut **$tx)
            .await?;
            if done.rows_affected() > 0 {
                stopped.push(run);
            }
        }
        Ok::<_, sqlx::Error>(stopped)
    }};
}

/// Supersede `line`'s active targets (except those on `keep_rev`), and
/// cancel runs left without an active target. Returns those runs.
pub async fn supersede_line(
    db: &Database,
    project: i64,
    line: &Line,
    keep_rev: Option<&str>,
) -> Result<Vec<i64>, sqlx::Error> {
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        let stopped = supersede_body!(&mut tx, project, line, keep_rev, None::<i64>)?;
        tx.commit().await?;
        Ok(stopped)
    })
}

/// Record a target: supersede older targets of its line, find the run of
/// the same project and tree (or create one), and add the target, in one
/// transaction.
pub async fn attach(db: &Database, a: &Attach) -> Result<Attached, sqlx::Error> {
    let line = match (a.kind, a.pull_request, &a.branch) {
        ("pull_request", Some(n), _) => Line::PullRequest(n),
        (_, _, Some(b)) => Line::Branch(b.clone()),
        _ => Line::Branch(String::new()),
    };
    let now = now_ms();
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        // The same head on the same line is already a target: nothing new.
        let same: Option<i64> = match &line {
            Line::Branch(b) => sqlx::query_scalar(
                "SELECT run_id FROM targets WHERE project_id = $1 AND kind = 'push' \
                 AND branch = $2 AND rev = $3 AND state = 'active' ORDER BY id DESC LIMIT 1",
            )
            .bind(a.project)
            .bind(b)
            .bind(&a.head_rev)
            .fetch_optional(&mut *tx)
            .await?,
            Line::PullRequest(n) => sqlx::query_scalar(
                "SELECT run_id FROM targets WHERE project_id = $1 AND kind = 'pull_request' \
                 AND pull_request = $2 AND rev = $3 AND state = 'active' ORDER BY id DESC LIMIT 1",
            )
            .bind(a.project)
            .bind(n)
            .bind(&a.head_rev)
            .fetch_optional(&mut *tx)
            .await?,
        };
        if let Some(run) = same {
            tx.commit().await?;
            return Ok(Attached { run, created: false, stopped: Vec::new() });
        }
        let existing: Option<(i64, String, i64)> = if a.error.is_some() {
            None
        } else {
            sqlx::query_as(
                "SELECT id, state, trusted FROM runs WHERE project_id = $1 AND tree = $2 \
                 AND state IN ('queued', 'running', 'succeeded', 'failed') ORDER BY id DESC LIMIT 1",
            )
            .bind(a.project)
            .bind(&a.tree)
            .fetch_optional(&mut *tx)
            .await?
        };
        let stopped = supersede_body!(&mut tx, a.project, &line, Some(a.head_rev.as_str()), existing.as_ref().map(|e| e.0))?;
        let (run, created) = match existing {
            Some((id, state, trusted)) => {
                if a.trusted && trusted == 0 {
                    // A trusted change with the same content: the run may
                    // use secrets now; a finished one runs its steps again.
                    let requeue = state == "succeeded" || state == "failed";
                    sqlx::query(
                        "UPDATE runs SET trusted = 1, needs_approval = 0, \
                         state = CASE WHEN $2 = 1 THEN 'queued' ELSE state END, \
                         rerun_steps = CASE WHEN $2 = 1 THEN 1 ELSE rerun_steps END \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(i64::from(requeue))
                    .execute(&mut *tx)
                    .await?;
                }
                (id, false)
            }
            None => {
                let state = if a.error.is_some() { "error" } else { "queued" };
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (project_id, tree, rev, branch, pull_request, message, state, \
                     trusted, needs_approval, error, created_at, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                )
                .bind(a.project)
                .bind(&a.tree)
                .bind(&a.eval_rev)
                .bind(&a.branch)
                .bind(a.pull_request)
                .bind(&a.message)
                .bind(state)
                .bind(i64::from(a.trusted))
                .bind(i64::from(!a.trusted))
                .bind(&a.error)
                .bind(now)
                .bind(a.error.as_ref().map(|_| now))
                .fetch_one(&mut *tx)
                .await?;
                (id, true)
            }
        };
        sqlx::query(
            "INSERT INTO targets (run_id, project_id, event_id, kind, branch, pull_request, rev, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8)",
        )
        .bind(run)
        .bind(a.project)
        .bind(a.event)
        .bind(a.kind)
        .bind(&a.branch)
        .bind(a.pull_request)
        .bind(&a.head_rev)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = a.event {
            sqlx::query("UPDATE events SET state = 'started', note = NULL WHERE id = $1")
                .bind(event)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Attached { run, created, stopped })
    })
}

/// Queued runs (id, project), oldest first.
pub async fn queued_runs(db: &Database, limit: i64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_as("SELECT id, project_id FROM runs WHERE state = 'queued' ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}

/// A run as the runner needs it.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Row id.
    pub id: i64,
    /// Project id.
    pub project: i64,
    /// The commit to evaluate.
    pub rev: String,
    /// Branch built (a pull request's head branch).
    pub branch: Option<String>,
    /// Pull request number.
    pub pull_request: Option<i64>,
    /// May use secrets.
    pub trusted: bool,
    /// Run post-build steps on cached jobs too.
    pub rerun_steps: bool,
    /// This start's number (1 for the first).
    pub attempts: i64,
}

type RunTuple = (i64, i64, String, Option<String>, Option<i64>, i64, i64, i64);

/// Move run `id` from `queued` to `running`; `None` when someone else did.
pub async fn claim_run(db: &Database, id: i64) -> Result<Option<RunRow>, sqlx::Error> {
    let row: Option<RunTuple> = with_pool!(db, pool => {
        sqlx::query_as(
            "UPDATE runs SET state = 'running', attempts = attempts + 1, started_at = $2, \
             evaluated_at = NULL, error = NULL WHERE id = $1 AND state = 'queued' \
             RETURNING id, project_id, rev, branch, pull_request, trusted, rerun_steps, attempts",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_optional(pool)
        .await
    })?;
    Ok(row.map(|t| RunRow {
        id: t.0,
        project: t.1,
        rev: t.2,
        branch: t.3,
        pull_request: t.4,
        trusted: t.5 != 0,
        rerun_steps: t.6 != 0,
        attempts: t.7,
    }))
}

/// Evaluation of run `id` ended, with the whole-flake error if any.
pub async fn set_evaluated(db: &Database, id: i64, error: Option<&str>) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("UPDATE runs SET evaluated_at = $2, error = COALESCE($3, error) WHERE id = $1")
            .bind(id)
            .bind(now_ms())
            .bind(error)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// One job update to write.
#[derive(Debug, Clone)]
pub struct JobWrite {
    /// Position in evaluation order.
    pub idx: u32,
    /// The job as it stands.
    pub job: kiln_engine::report::JobReport,
    /// When it started running (Unix ms).
    pub started_at: Option<i64>,
    /// When it reached a final status (Unix ms).
    pub finished_at: Option<i64>,
}

/// Job rows per statement: 15 parameters a row stays well under SQLite's 32,766
/// and PostgreSQL's 65,535 bound parameters.
const JOB_ROWS_PER_STATEMENT: usize = 1000;

/// Record that job `attr` of run `run` depends on job `depends_on`, for
/// each pair, a thousand rows per statement; pairs already stored are kept.
pub async fn write_edges(
    db: &Database,
    run: i64,
    edges: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        for chunk in edges.chunks(JOB_ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO job_edges (run_id, attr, depends_on) ");
            q.push_values(chunk, |mut row, &(attr, on)| {
                row.push_bind(run).push_bind(attr).push_bind(on);
            });
            q.push(" ON CONFLICT (run_id, attr, depends_on) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    })
}

/// Insert or update jobs of run `run`, in one transaction, a thousand rows
/// per statement. `jobs` must not name an attribute twice (PostgreSQL
/// refuses to update a row twice in one statement); the writer keeps the
/// latest update of each job.
pub async fn write_jobs(db: &Database, run: i64, jobs: &[JobWrite]) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        for chunk in jobs.chunks(JOB_ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO jobs (run_id, idx, attr, system, drv_path, status, error, \
                 failed_dependency, attempts, duration_ms, started_at, finished_at, log_path, \
                 post_build, outputs) ",
            );
            q.push_values(chunk, |mut row, w| {
                let j = &w.job;
                let status = serde_json::to_value(j.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let post_build = (!j.post_build.is_empty())
                    .then(|| serde_json::to_string(&j.post_build).unwrap_or_default());
                row.push_bind(run)
                    .push_bind(i64::from(w.idx))
                    .push_bind(j.attr.clone())
                    .push_bind(j.system.clone())
                    .push_bind(j.drv_path.clone())
                    .push_bind(status)
                    .push_bind(j.error.clone())
                    .push_bind(j.failed_dependency.clone())
                    .push_bind(i64::from(j.attempts))
                    .push_bind(j.duration_ms as i64)
                    .push_bind(w.started_at)
                    .push_bind(w.finished_at)
                    .push_bind(j.log_path.clone())
                    .push_bind(post_build)
                    .push_bind(serde_json::to_string(&j.outputs).unwrap_or_default());
            });
            q.push(
                " ON CONFLICT (run_id, attr) DO UPDATE SET idx = excluded.idx, \
                 system = excluded.system, drv_path = excluded.drv_path, status = excluded.status, \
                 error = excluded.error, failed_dependency = excluded.failed_dependency, \
                 attempts = excluded.attempts, duration_ms = excluded.duration_ms, \
                 started_at = excluded.started_at, finished_at = excluded.finished_at, \
                 log_path = COALESCE(excluded.log_path, jobs.log_path), \
                 post_build = excluded.post_build, outputs = excluded.outputs",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    })
}

/// Record the end of run `id`'s start number `attempt`, unless the run
/// changed meanwhile (cancelled, queued again). Returns whether it was.
pub async fn finish_run(
    db: &Database,
    id: i64,
    attempt: i64,
    state: &str,
    error: Option<&str>,
    summary: Option<&str>,
) -> Result<bool, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query(
            "UPDATE runs SET state = $3, error = COALESCE($4, error), summary = $5, \
             finished_at = $6, rerun_steps = 0 \
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(state)
        .bind(error)
        .bind(summary)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0)
    })
}

/// Runs with an active target that are not long finished: their statuses
/// are recomputed once at start.
pub async fn runs_with_active_targets(db: &Database) -> Result<Vec<i64>, sqlx::Error> {
    let since = now_ms() - 24 * 3600 * 1000;
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT DISTINCT r.id FROM runs r JOIN targets t ON t.run_id = r.id \
             WHERE t.state = 'active' AND (r.finished_at IS NULL OR r.finished_at > $1)",
        )
        .bind(since)
        .fetch_all(pool)
        .await
    })
}

/// What run `id`'s statuses show; at most `max_failed` failed jobs listed.
pub async fn run_facts(
    db: &Database,
    id: i64,
    max_failed: usize,
) -> Result<Option<super::report::RunFacts>, sqlx::Error> {
    type Row = (String, Option<String>, Option<i64>, i64, Option<String>);
    let row: Option<Row> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT state, error, evaluated_at, needs_approval, approved_by FROM runs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
    })?;
    let Some((state, error, evaluated_at, held, approved_by)) = row else {
        return Ok(None);
    };
    let counts: Vec<(String, i64)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT status, COUNT(*) FROM jobs WHERE run_id = $1 GROUP BY status")
            .bind(id)
            .fetch_all(pool)
            .await
    })?;
    let failed: Vec<(i64, String, String, Option<String>)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, attr, status, error FROM jobs WHERE run_id = $1 \
             AND status IN ('failed', 'timed_out', 'eval_error') ORDER BY idx LIMIT $2",
        )
        .bind(id)
        .bind(max_failed.max(50) as i64)
        .fetch_all(pool)
        .await
    })?;
    Ok(Some(super::report::RunFacts {
        id,
        state,
        error,
        evaluated: evaluated_at.is_some(),
        needs_approval: held != 0,
        approved_by,
        counts: counts.into_iter().collect(),
        failed,
    }))
}

/// Active targets of run `run`: (id, is a pull request).
pub async fn active_targets(db: &Database, run: i64) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    let rows: Vec<(i64, String)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT id, kind FROM targets WHERE run_id = $1 AND state = 'active'")
            .bind(run)
            .fetch_all(pool)
            .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(id, kind)| (id, kind == "pull_request"))
        .collect())
}

/// Make target `target`'s statuses `want`: changed ones get a new version.
/// A per-attribute failure no longer in `want` once the build status is
/// final turns into a success (it passed when run again).
pub async fn upsert_statuses(
    db: &Database,
    target: i64,
    want: &[super::report::Desired],
) -> Result<(), sqlx::Error> {
    let build_final = want
        .iter()
        .any(|d| d.context == "kiln/nix-build" && d.state != "pending");
    let contexts: Vec<&str> = want.iter().map(|d| d.context.as_str()).collect();
    let now = now_ms();
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        for d in want {
            sqlx::query(
                "INSERT INTO statuses (target_id, context, state, description, target_url, summary, \
                 failures, version, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8) \
                 ON CONFLICT (target_id, context) DO UPDATE SET state = excluded.state, \
                 description = excluded.description, target_url = excluded.target_url, \
                 summary = excluded.summary, failures = excluded.failures, \
                 version = statuses.version + 1 \
                 WHERE statuses.state <> excluded.state \
                 OR statuses.description <> excluded.description \
                 OR COALESCE(statuses.target_url, '') <> COALESCE(excluded.target_url, '') \
                 OR COALESCE(statuses.summary, '') <> COALESCE(excluded.summary, '') \
                 OR statuses.failures <> excluded.failures",
            )
            .bind(target)
            .bind(&d.context)
            .bind(d.state)
            .bind(&d.description)
            .bind(&d.target_url)
            .bind(&d.summary)
            .bind(&d.failures)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if build_final {
            let stale: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, context FROM statuses WHERE target_id = $1 \
                 AND context LIKE 'kiln/nix-build/%' AND state = 'failure'",
            )
            .bind(target)
            .fetch_all(&mut *tx)
            .await?;
            for (id, context) in stale {
                if contexts.contains(&context.as_str()) {
                    continue;
                }
                sqlx::query(
                    "UPDATE statuses SET state = 'success', description = 'Passed when run again', \
                     version = version + 1 WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await
    })
}

/// A status to post.
#[derive(Debug, Clone)]
pub struct OwedStatus {
    /// Row id.
    pub id: i64,
    /// The version being posted.
    pub version: i64,
    /// Failed posts so far.
    pub attempts: i64,
    /// Context.
    pub context: String,
    /// State name.
    pub state: String,
    /// One line.
    pub description: String,
    /// Link.
    pub target_url: Option<String>,
    /// Markdown.
    pub summary: Option<String>,
    /// JSON array.
    pub failures: String,
    /// The commit.
    pub rev: String,
    /// The pull request.
    pub pull_request: Option<i64>,
    /// Forge instance.
    pub forge: String,
    /// Repository record.
    pub repository: serde_json::Value,
}

/// Statuses owed and due at `now`, oldest first.
pub async fn owed_statuses(
    db: &Database,
    now: i64,
    limit: i64,
) -> Result<Vec<OwedStatus>, sqlx::Error> {
    type Row = (
        i64,
        i64,
        i64,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        String,
        Option<i64>,
        String,
        String,
    );
    let rows: Vec<Row> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT s.id, s.version, s.attempts, s.context, s.state, s.description, s.target_url, \
             s.summary, s.failures, t.rev, t.pull_request, p.forge, p.repository \
             FROM statuses s JOIN targets t ON t.id = s.target_id \
             JOIN projects p ON p.id = t.project_id \
             WHERE s.posted_version < s.version AND s.next_attempt_at <= $1 AND t.state = 'active' \
             ORDER BY s.id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|r| OwedStatus {
            id: r.0,
            version: r.1,
            attempts: r.2,
            context: r.3,
            state: r.4,
            description: r.5,
            target_url: r.6,
            summary: r.7,
            failures: r.8,
            rev: r.9,
            pull_request: r.10,
            forge: r.11,
            repository: serde_json::from_str(&r.12).unwrap_or(serde_json::Value::Null),
        })
        .collect())
}

/// When the next owed status is due (Unix ms), if any is owed.
pub async fn next_status_due(db: &Database) -> Result<Option<i64>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT MIN(s.next_attempt_at) FROM statuses s JOIN targets t ON t.id = s.target_id \
             WHERE s.posted_version < s.version AND t.state = 'active'",
        )
        .fetch_one(pool)
        .await
    })
}

/// How a post went.
#[derive(Debug, Clone)]
pub enum PostOutcome {
    /// The forge has this version.
    Posted(i64),
    /// Try again at `at` (Unix ms).
    Later {
        /// When.
        at: i64,
        /// What went wrong.
        error: String,
    },
}

/// Record a post's outcome on status `id`.
pub async fn record_post(db: &Database, id: i64, outcome: &PostOutcome) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        match outcome {
            PostOutcome::Posted(version) => sqlx::query(
                "UPDATE statuses SET posted_version = $2, attempts = 0, last_error = NULL \
                 WHERE id = $1 AND posted_version < $2",
            )
            .bind(id)
            .bind(version)
            .execute(pool)
            .await
            .map(|_| ()),
            PostOutcome::Later { at, error } => sqlx::query(
                "UPDATE statuses SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(at)
            .bind(error)
            .execute(pool)
            .await
            .map(|_| ()),
        }
    })
}

/// Whether branch `branch` of project `project` has had a target at `rev`
/// (built, building or superseded).
pub async fn line_has_rev(
    db: &Database,
    project: i64,
    branch: &str,
    rev: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM targets WHERE project_id = $1 AND kind = 'push' \
             AND branch = $2 AND rev = $3",
        )
        .bind(project)
        .bind(branch)
        .bind(rev)
        .fetch_one(pool)
        .await
    })?;
    Ok(n > 0)
}

/// Whether pull request `number` of project `project` has had a target at
/// head `rev` (built, building or superseded).
pub async fn pull_request_has_rev(
    db: &Database,
    project: i64,
    number: i64,
    rev: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM targets WHERE project_id = $1 AND kind = 'pull_request' \
             AND pull_request = $2 AND rev = $3",
        )
        .bind(project)
        .bind(number)
        .bind(rev)
        .fetch_one(pool)
        .await
    })?;
    Ok(n > 0)
}

/// Whether a stored event of `forge` for project `name` at `rev` is still
/// waiting for intake (reconciliation leaves such a head to it).
pub async fn event_waits_at(
    db: &Database,
    forge: &str,
    name: &str,
    rev: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM events e JOIN deliveries d ON d.id = e.delivery_id \
             WHERE e.state = 'new' AND d.forge = $1 AND e.project = $2 AND e.rev = $3",
        )
        .bind(forge)
        .bind(name)
        .bind(rev)
        .fetch_one(pool)
        .await
    })?;
    Ok(n > 0)
}

/// Runs by state, queued jobs of running runs by system, running jobs.
pub async fn gauges(
    db: &Database,
) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>, i64), sqlx::Error> {
    with_pool!(db, pool => {
        let runs = sqlx::query_as("SELECT state, COUNT(*) FROM runs GROUP BY state")
            .fetch_all(pool)
            .await?;
        let jobs: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT j.system, j.status, COUNT(*) FROM jobs j JOIN runs r ON r.id = j.run_id \
             WHERE r.state = 'running' AND j.status IN ('queued', 'running') \
             GROUP BY j.system, j.status",
        )
        .fetch_all(pool)
        .await?;
        let queued = jobs
            .iter()
            .filter(|j| j.1 == "queued")
            .map(|j| (j.0.clone(), j.2))
            .collect();
        let running = jobs.iter().filter(|j| j.1 == "running").map(|j| j.2).sum();
        Ok((runs, queued, running))
    })
}
