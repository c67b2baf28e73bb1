//! The service's database: SQLite (WAL) by default, PostgreSQL when
//! `database_url` says so. Migrations are embedded (`host/migrations/<backend>`)
//! and run at start. Every query is written once and bound with `$N`
//! parameters, which both backends accept; [`with_pool!`] runs it on
//! whichever pool is open.
//!
//! This module stores and counts rows; it does not decide what a webhook
//! means (`webhooks.rs` does).

use std::borrow::Cow;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The migrations of each backend, embedded in the binary: (version,
/// description, SQL). `sqlx::migrate!` would need sqlx's `macros` feature,
/// which compiles both drivers a second time into a proc-macro; a test
/// checks that this list matches the files in `host/migrations/`.
const SQLITE_MIGRATIONS: Embedded = Embedded(&[
    (
        20261122000001,
        "deliveries",
        include_str!("../../migrations/sqlite/20261122000001_deliveries.sql"),
    ),
    (
        20261122000002,
        "pipeline",
        include_str!("../../migrations/sqlite/20261122000002_pipeline.sql"),
    ),
    (
        20261122000003,
        "tokens",
        include_str!("../../migrations/sqlite/20261122000003_tokens.sql"),
    ),
    (
        20261122000004,
        "job_status_index",
        include_str!("../../migrations/sqlite/20261122000004_job_status_index.sql"),
    ),
]);
const POSTGRES_MIGRATIONS: Embedded = Embedded(&[
    (
        20261122000001,
        "deliveries",
        include_str!("../../migrations/postgres/20261122000001_deliveries.sql"),
    ),
    (
        20261122000002,
        "pipeline",
        include_str!("../../migrations/postgres/20261122000002_pipeline.sql"),
    ),
    (
        20261122000003,
        "tokens",
        include_str!("../../migrations/postgres/20261122000003_tokens.sql"),
    ),
    (
        20261122000004,
        "job_status_index",
        include_str!("../../migrations/postgres/20261122000004_job_status_index.sql"),
    ),
]);

/// Migrations compiled into the binary.
#[derive(Debug, Clone, Copy)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// An open database.
#[derive(Debug, Clone)]
pub enum Database {
    /// SQLite in WAL mode.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Run the same code on whichever pool `$db` holds.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// A delivery to store, with the events parsed from it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Forge instance.
    pub forge: String,
    /// Delivery id, unique per instance.
    pub delivery: String,
    /// Unix milliseconds.
    pub received_at: i64,
    /// Headers as a JSON array of `[name, value]`.
    pub headers: String,
    /// The body as received.
    pub body: Vec<u8>,
    /// `received`, `ignored`, …
    pub status: &'static str,
    /// Why it failed, or the note of an ignored delivery.
    pub error: Option<String>,
    /// When the plugin asked to be called again (Unix ms).
    pub retry_at: Option<i64>,
    /// Change events to build.
    pub events: Vec<NewEvent>,
}

/// One change event of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// `push` or `pull_request`.
    pub kind: &'static str,
    /// Repository full name.
    pub project: String,
    /// The pushed ref.
    pub git_ref: Option<String>,
    /// Branch pushed to, or the pull request's head branch.
    pub branch: Option<String>,
    /// Revision to build.
    pub rev: String,
    /// Pull request number.
    pub pull_request: Option<i64>,
    /// The event as JSON.
    pub payload: String,
}

/// What storing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored with this row id.
    New(i64),
    /// This instance already has this delivery id; nothing was written.
    Duplicate,
}

impl Database {
    /// Open SQLite at `path` (created when missing) in WAL mode, or the
    /// database at `url`, and run the migrations.
    pub async fn open(url: Option<&str>, sqlite_path: &Path) -> Result<Self, sqlx::Error> {
        let db = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url)?;
                Database::Postgres(
                    PgPoolOptions::new()
                        .max_connections(8)
                        .connect_with(options)
                        .await?,
                )
            }
            Some(url) => Self::sqlite(SqliteConnectOptions::from_str(url)?).await?,
            None => Self::sqlite(SqliteConnectOptions::new().filename(sqlite_path)).await?,
        };
        match &db {
            Database::Sqlite(pool) => Migrator::new(SQLITE_MIGRATIONS).await?.run(pool).await?,
            Database::Postgres(pool) => Migrator::new(POSTGRES_MIGRATIONS).await?.run(pool).await?,
        }
        Ok(db)
    }

    async fn sqlite(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        // WAL with synchronous = FULL (sqlx's default): a committed delivery
        // survives a killed process and a lost machine alike.
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Database::Sqlite(pool))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Store a delivery and its events in one transaction, unless the
    /// instance already has its delivery id.
    pub async fn store(&self, d: &NewDelivery) -> Result<Stored, sqlx::Error> {
        let stored = self.store_batch(std::slice::from_ref(d)).await?;
        Ok(stored[0])
    }

    /// Store deliveries and their events in ONE transaction, committed
    /// once; each answer says whether that delivery was new or a
    /// duplicate (of a stored row or of an earlier one in the batch).
    /// On error nothing of the batch is stored.
    pub async fn store_batch(&self, batch: &[NewDelivery]) -> Result<Vec<Stored>, sqlx::Error> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut answers = Vec::with_capacity(batch.len());
            for d in batch {
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO deliveries \
                     (forge, delivery, received_at, headers, body, status, error, retry_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (forge, delivery) DO NOTHING RETURNING id",
                )
                .bind(&d.forge)
                .bind(&d.delivery)
                .bind(d.received_at)
                .bind(&d.headers)
                .bind(&d.body[..])
                .bind(d.status)
                .bind(&d.error)
                .bind(d.retry_at)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else {
                    answers.push(Stored::Duplicate);
                    continue;
                };
                for e in &d.events {
                    sqlx::query(
                        "INSERT INTO events \
                         (delivery_id, kind, project, git_ref, branch, rev, pull_request, payload) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(id)
                    .bind(e.kind)
                    .bind(&e.project)
                    .bind(&e.git_ref)
                    .bind(&e.branch)
                    .bind(&e.rev)
                    .bind(e.pull_request)
                    .bind(&e.payload)
                    .execute(&mut *tx)
                    .await?;
                }
                answers.push(Stored::New(id));
            }
            tx.commit().await?;
            Ok(answers)
        })
    }

    /// How many deliveries are stored.
    pub async fn count_deliveries(&self) -> Result<i64, sqlx::Error> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
                .fetch_one(pool)
                .await
        })
    }
}

/// Where the database is, for the start-up message: the SQLite file, or
/// the PostgreSQL host and database without user or password.
pub fn describe(url: Option<&str>, sqlite_path: &Path) -> String {
    match url {
        Some(url) if url.starts_with("postgres") => match PgConnectOptions::from_str(url) {
            Ok(o) => format!(
                "postgres://{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Err(_) => "postgres (unparsable URL)".to_owned(),
        },
        Some(url) => format!("{url} (SQLite, WAL)"),
        None => format!("{} (SQLite, WAL)", sqlite_path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `host/migrations/<backend>` is embedded, in order,
    /// and both backends have the same versions.
    #[test]
    fn embedded_migrations_match_the_directories() {
        for (backend, embedded) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            let listed: Vec<String> = embedded
                .0
                .iter()
                .map(|(v, d, _)| format!("{v}_{d}.sql"))
                .collect();
            assert_eq!(files, listed, "{backend}");
            for ((_, _, sql), file) in embedded.0.iter().zip(&files) {
                assert_eq!(*sql, std::fs::read_to_string(dir.join(file)).unwrap());
            }
        }
        let versions = |e: Embedded| e.0.iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
    }

    #[tokio::test]
    async fn a_delivery_is_stored_once_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(None, &dir.path().join("k.sqlite3"))
            .await
            .unwrap();
        let delivery = NewDelivery {
            forge: "gh".into(),
            delivery: "d1".into(),
            received_at: 1,
            headers: "[]".into(),
            body: b"{}".to_vec(),
            status: "received",
            error: None,
            retry_at: None,
            events: vec![NewEvent {
                kind: "push",
                project: "a/b".into(),
                git_ref: Some("refs/heads/main".into()),
                branch: Some("main".into()),
                rev: "r".into(),
                pull_request: None,
                payload: "{}".into(),
            }],
        };
        assert!(matches!(db.store(&delivery).await.unwrap(), Stored::New(_)));
        assert_eq!(db.store(&delivery).await.unwrap(), Stored::Duplicate);
        // The same id on another instance is another delivery.
        let other = NewDelivery {
            forge: "gitea".into(),
            ..delivery
        };
        assert!(matches!(db.store(&other).await.unwrap(), Stored::New(_)));
        assert_eq!(db.count_deliveries().await.unwrap(), 2);
        // Opening again runs no migration twice.
        drop(db);
        let db = Database::open(None, &dir.path().join("k.sqlite3"))
            .await
            .unwrap();
        assert_eq!(db.count_deliveries().await.unwrap(), 2);
        assert_eq!(db.backend(), "sqlite");
    }
}
