//! The service's database: SQLite (WAL) by default, PostgreSQL when
//! `database_url` says so. Migrations are embedded (`host/migrations/<backend>`)
//! and run at start. Every query is written once and bound with `$N`
//! parameters, which both backends accept; [`with_pool!`] runs it on
//! whichever pool is open.
//!
//! This module stores and counts rows; it does not decide what a webhook
//! means (`webhooks.rs` does).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
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
    (
        20261122000005,
        "job_edges",
        include_str!("../../migrations/sqlite/20261122000005_job_edges.sql"),
    ),
    (
        20261122000007,
        "delivery_path",
        include_str!("../../migrations/sqlite/20261122000007_delivery_path.sql"),
    ),
    (
        20261203000001,
        "sessions",
        include_str!("../../migrations/sqlite/20261203000001_sessions.sql"),
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
    (
        20261122000005,
        "job_edges",
        include_str!("../../migrations/postgres/20261122000005_job_edges.sql"),
    ),
    (
        20261122000007,
        "delivery_path",
        include_str!("../../migrations/postgres/20261122000007_delivery_path.sql"),
    ),
    (
        20261203000001,
        "sessions",
        include_str!("../../migrations/postgres/20261203000001_sessions.sql"),
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
/// Rows per multi-row `INSERT` of deliveries or events: 8 columns each stay
/// well below SQLite's 32,766 bound parameters.
const DELIVERY_ROWS_PER_STATEMENT: usize = 512;

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
    /// The request path below `/webhooks/<instance>` (Gerrit's token is in it).
    pub path: String,
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
    /// once, with a few multi-row statements rather than two per delivery
    /// (each statement is a round trip to SQLite's worker thread). Each
    /// answer says whether that delivery was new or a duplicate (of a
    /// stored row or of an earlier one in the batch). On error nothing of
    /// the batch is stored.
    pub async fn store_batch(&self, batch: &[NewDelivery]) -> Result<Vec<Stored>, sqlx::Error> {
        // The first of each (forge, delivery) in the batch is inserted; any
        // later one is a duplicate of it, whatever the database says.
        let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
        let mut candidates = Vec::with_capacity(batch.len());
        for (i, d) in batch.iter().enumerate() {
            if let Entry::Vacant(e) = first.entry((d.forge.as_str(), d.delivery.as_str())) {
                e.insert(i);
                candidates.push(i);
            }
        }
        let mut ids: Vec<Option<i64>> = vec![None; batch.len()];
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in candidates.chunks(DELIVERY_ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO deliveries \
                     (forge, delivery, received_at, headers, path, body, status, error, retry_at) ",
                );
                q.push_values(chunk, |mut row, &i| {
                    let d = &batch[i];
                    row.push_bind(d.forge.as_str())
                        .push_bind(d.delivery.as_str())
                        .push_bind(d.received_at)
                        .push_bind(d.headers.as_str())
                        .push_bind(d.path.as_str())
                        .push_bind(&d.body[..])
                        .push_bind(d.status)
                        .push_bind(d.error.as_deref())
                        .push_bind(d.retry_at);
                });
                q.push(" ON CONFLICT (forge, delivery) DO NOTHING RETURNING id, forge, delivery");
                let rows: Vec<(i64, String, String)> =
                    q.build_query_as().fetch_all(&mut *tx).await?;
                for (id, forge, delivery) in rows {
                    if let Some(&i) = first.get(&(forge.as_str(), delivery.as_str())) {
                        ids[i] = Some(id);
                    }
                }
            }
            let events: Vec<(i64, &NewEvent)> = batch
                .iter()
                .zip(&ids)
                .filter_map(|(d, id)| id.map(|id| (id, d)))
                .flat_map(|(id, d)| d.events.iter().map(move |e| (id, e)))
                .collect();
            for chunk in events.chunks(DELIVERY_ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO events \
                     (delivery_id, kind, project, git_ref, branch, rev, pull_request, payload) ",
                );
                q.push_values(chunk, |mut row, &(id, e)| {
                    row.push_bind(id)
                        .push_bind(e.kind)
                        .push_bind(e.project.as_str())
                        .push_bind(e.git_ref.as_deref())
                        .push_bind(e.branch.as_deref())
                        .push_bind(e.rev.as_str())
                        .push_bind(e.pull_request)
                        .push_bind(e.payload.as_str());
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(ids
            .into_iter()
            .map(|id| id.map_or(Stored::Duplicate, Stored::New))
            .collect())
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
            path: "/".into(),
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
