//! Sessions and sign-ins in progress in the database (tables `sessions`
//! and `login_attempts`). Only SHA-256 hashes of the cookie token and of the
//! OAuth `state` are stored; expired rows are ignored, and deleted whenever
//! someone signs in.

use kiln_runtime::bindings::authz_types::Subject;

use super::{LOGIN_SECS, SESSION_SECS, Session, random_hex};
use crate::serve::api::auth::hash_token;
use crate::serve::db::{Database, with_pool};
use crate::serve::pipeline::now_ms;

/// The session whose cookie token is `token`, if it has not expired.
/// `admin` follows `[serve] admins` as it is now.
pub async fn find(
    db: &Database,
    token: &str,
    admins: &[String],
) -> Result<Option<Session>, sqlx::Error> {
    let row: Option<(String, String, String, String, String)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT subject, provider, name, organisations, csrf FROM sessions \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(hash_token(token))
        .bind(now_ms())
        .fetch_optional(pool)
        .await
    })?;
    Ok(
        row.map(|(id, provider, name, organisations, csrf)| Session {
            subject: Subject {
                admin: admins.contains(&name),
                id,
                name,
                provider,
                organisations: serde_json::from_str(&organisations).unwrap_or_default(),
                teams: Vec::new(),
            },
            csrf,
        }),
    )
}

/// Store a new session for `subject`; returns the cookie token, which is
/// kept nowhere else.
pub async fn create(db: &Database, subject: &Subject) -> anyhow::Result<String> {
    let random = || random_hex(32).map_err(|e| anyhow::anyhow!("OS random source: {e}"));
    let token = random()?;
    let csrf = random()?;
    let now = now_ms();
    prune(db, now).await?;
    let organisations = serde_json::to_string(&subject.organisations)?;
    with_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO sessions (token_hash, subject, provider, name, admin, organisations, \
             csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(hash_token(&token))
        .bind(&subject.id)
        .bind(&subject.provider)
        .bind(&subject.name)
        .bind(i64::from(subject.admin))
        .bind(&organisations)
        .bind(&csrf)
        .bind(now)
        .bind(now + SESSION_SECS * 1000)
        .execute(pool)
        .await
        .map(|_| ())
    })?;
    Ok(token)
}

/// End the session whose cookie token is `token`.
pub async fn delete(db: &Database, token: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(hash_token(token))
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Remember a sign-in started with `state` at `provider`.
pub async fn save_attempt(
    db: &Database,
    state: &str,
    provider: &str,
    verifier: &str,
) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO login_attempts (state_hash, provider, verifier, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(hash_token(state))
        .bind(provider)
        .bind(verifier)
        .bind(now_ms() + LOGIN_SECS * 1000)
        .execute(pool)
        .await
        .map(|_| ())
    })
}

/// The provider and PKCE verifier of the sign-in started with `state`, if it
/// has not expired. It is used up: a second callback with the same `state`
/// finds nothing.
pub async fn take_attempt(
    db: &Database,
    state: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row: Option<(String, String, i64)> = with_pool!(db, pool => {
        sqlx::query_as(
            "DELETE FROM login_attempts WHERE state_hash = $1 \
             RETURNING provider, verifier, expires_at",
        )
        .bind(hash_token(state))
        .fetch_optional(pool)
        .await
    })?;
    Ok(row
        .filter(|(_, _, expires_at)| *expires_at > now_ms())
        .map(|(provider, verifier, _)| (provider, verifier)))
}

/// Delete expired sessions and sign-ins.
async fn prune(db: &Database, now: i64) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM login_attempts WHERE expires_at <= $1")
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
    })
}
