//! Deliveries kept for a retry: when a forge plugin cannot decide on a
//! webhook as it arrives (its forge rate-limits or is unreachable while it
//! re-reads the change, and it answers `retry-after`), the request is stored
//! with `retry_at`. This loop hands each such request to its plugin again,
//! exactly as received (headers, path, body), once `retry_at` has come, and
//! records what the plugin decides this time:
//!
//! | verdict | the delivery becomes |
//! | --- | --- |
//! | events | `received` with its events, which intake then builds |
//! | ignored | `ignored`, the note in `error` |
//! | retry-after again | `received`, `retry_at` moved on |
//! | unauthenticated / malformed | `failed`, the reason in `error` |
//! | the plugin fails | `received`, retried after [`PLUGIN_FAILED_RETRY`] |
//!
//! The rows are in the database, so a restart loses none of them.

use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::bindings::forge_types::{Header, WebhookRequest};

use super::app::AppState;
use super::db::{Database, NewEvent, with_pool};
use super::webhooks::{Verdict, ask_plugin, now_ms};

/// How long to wait before calling a plugin again after it failed.
pub const PLUGIN_FAILED_RETRY: Duration = Duration::from_secs(60);

/// The longest the loop sleeps: a delivery stored meanwhile is retried at
/// most this late.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Deliveries handled per pass.
const BATCH: i64 = 32;

/// A stored delivery due for a retry.
struct Due {
    id: i64,
    forge: String,
    headers: String,
    path: String,
    body: Vec<u8>,
}

/// What a retry leads to.
enum Resolution {
    Events(Vec<NewEvent>),
    Ignored(String),
    Later(i64, String),
    Failed(String),
}

/// The retry loop; runs until the service stops.
pub async fn run(state: Arc<AppState>) {
    loop {
        match due(&state.db, now_ms()).await {
            Ok(due) => {
                for d in due {
                    retry(&state, d).await;
                }
            }
            Err(e) => tracing::error!("cannot read deliveries due for a retry: {e}"),
        }
        let sleep = match next_retry_at(&state.db).await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64),
            _ => MAX_SLEEP,
        };
        tokio::time::sleep(sleep.clamp(Duration::from_millis(100), MAX_SLEEP)).await;
    }
}

/// Hand one delivery to its plugin again and record the outcome.
async fn retry(state: &AppState, d: Due) {
    let resolution = match state.forges.get(&d.forge) {
        None => Resolution::Failed(format!(
            "forge instance `{}` is no longer configured",
            d.forge
        )),
        Some(forge) => {
            let pairs: Vec<(String, String)> = serde_json::from_str(&d.headers).unwrap_or_default();
            let request = WebhookRequest {
                method: "POST".into(),
                path: d.path,
                headers: pairs
                    .into_iter()
                    .map(|(name, value)| Header { name, value })
                    .collect(),
                body: d.body,
            };
            match ask_plugin(state, &d.forge, forge, &request).await {
                Verdict::Events { events, .. } => Resolution::Events(events),
                Verdict::Ignored { note, .. } => Resolution::Ignored(note),
                Verdict::RetryAfter { seconds, reason } => {
                    Resolution::Later(now_ms() + i64::from(seconds) * 1000, reason)
                }
                Verdict::Refused(outcome, reason) => {
                    Resolution::Failed(format!("{} on retry: {reason}", outcome.as_str()))
                }
                Verdict::PluginFailed => Resolution::Later(
                    now_ms() + PLUGIN_FAILED_RETRY.as_millis() as i64,
                    "the forge plugin failed on the retry; see the service's log".into(),
                ),
            }
        }
    };
    let events = matches!(&resolution, Resolution::Events(e) if !e.is_empty());
    match resolve(&state.db, d.id, &resolution).await {
        Ok(()) => {
            tracing::info!(delivery = d.id, forge = %d.forge, "retried a kept delivery: {}", describe(&resolution));
            if events {
                state.pipeline.events_stored();
            }
        }
        Err(e) => tracing::error!(
            delivery = d.id,
            "cannot record the retry of a delivery: {e}"
        ),
    }
}

fn describe(r: &Resolution) -> String {
    match r {
        Resolution::Events(e) => format!("{} events", e.len()),
        Resolution::Ignored(note) => format!("ignored: {note}"),
        Resolution::Later(_, reason) => format!("kept again: {reason}"),
        Resolution::Failed(reason) => format!("failed: {reason}"),
    }
}

async fn due(db: &Database, now: i64) -> Result<Vec<Due>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String, Vec<u8>)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, forge, headers, path, body FROM deliveries \
             WHERE status = 'received' AND retry_at IS NOT NULL AND retry_at <= $1 \
             ORDER BY retry_at LIMIT $2",
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(id, forge, headers, path, body)| Due {
            id,
            forge,
            headers,
            path,
            body,
        })
        .collect())
}

async fn next_retry_at(db: &Database) -> Result<Option<i64>, sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT MIN(retry_at) FROM deliveries \
             WHERE status = 'received' AND retry_at IS NOT NULL",
        )
        .fetch_one(pool)
        .await
    })
}

/// Record `resolution` for delivery `id` in one transaction.
async fn resolve(db: &Database, id: i64, resolution: &Resolution) -> Result<(), sqlx::Error> {
    let (status, error, retry_at) = match resolution {
        Resolution::Events(_) => ("received", None, None),
        Resolution::Ignored(note) => ("ignored", Some(note.as_str()), None),
        Resolution::Later(at, reason) => ("received", Some(reason.as_str()), Some(*at)),
        Resolution::Failed(reason) => ("failed", Some(reason.as_str()), None),
    };
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE deliveries SET status = $2, error = $3, retry_at = $4 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(error)
            .bind(retry_at)
            .execute(&mut *tx)
            .await?;
        if let Resolution::Events(events) = resolution {
            for e in events {
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
        }
        tx.commit().await
    })
}
