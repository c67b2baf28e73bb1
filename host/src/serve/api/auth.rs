//! Who is calling and what they may do.
//!
//! A caller proves who they are with `Authorization: Bearer kiln_…`, a token
//! made by `kiln token create`: the database keeps only its SHA-256, with
//! the subject, its organisations and whether it is an administrator. The
//! subject an authz plugin sees has provider `token`, id and name the
//! token's subject, and `admin` set when the token says so or the subject is
//! listed in `[serve] admins`. No header means an anonymous caller; a header
//! with an unknown or revoked token is refused (401), never downgraded to
//! anonymous.
//!
//! Decisions are the authz plugin's (`[serve] authz`, default [`AUTHZ_PLUGIN`]). A plugin that is
//! missing or fails decides nothing, which is a denial.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use kiln_runtime::CallContext;
use kiln_runtime::bindings::authz_types::{
    Action, Decision, PullRequestRef, Resource, ResourceKind, Subject,
};
use kiln_runtime::context::{LogSink, NoStore};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::serve::app::AppState;
use crate::serve::db::{Database, with_pool};

/// The authz plugin the API asks, by the name its `describe` returns. It is
/// built in, so it is there without any configuration.
pub const AUTHZ_PLUGIN: &str = "authz-default";

/// What every token starts with, so that a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "kiln_";

/// A new token: the prefix and 32 bytes from the OS RNG, hex.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// What the database stores of a token: its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The subject of a valid, unrevoked token, updating its `last_used_at`
/// (at most once a minute, to keep reads from writing).
pub async fn token_subject(
    db: &Database,
    token: &str,
    admins: &[String],
) -> Result<Option<Subject>, sqlx::Error> {
    let hash = hash_token(token);
    let row: Option<(i64, String, i64, String, Option<i64>)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, subject, admin, organisations, revoked_at FROM api_tokens \
             WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(pool)
        .await
    })?;
    let Some((id, subject, admin, organisations, revoked_at)) = row else {
        return Ok(None);
    };
    if revoked_at.is_some() {
        return Ok(None);
    }
    let now = crate::serve::pipeline::now_ms();
    with_pool!(db, pool => {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now)
        .bind(now - 60_000)
        .execute(pool)
        .await
        .map(|_| ())
    })?;
    let organisations: Vec<String> = serde_json::from_str(&organisations).unwrap_or_default();
    Ok(Some(Subject {
        id: subject.clone(),
        admin: admin != 0 || admins.contains(&subject),
        name: subject,
        provider: "token".into(),
        organisations,
        teams: Vec::new(),
    }))
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Row id.
    pub id: i64,
    /// Who it speaks for.
    pub subject: String,
    /// Whether it carries every right.
    pub admin: bool,
    /// The organisations its subject belongs to.
    pub organisations: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds (to the minute).
    pub last_used_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
}

/// Store a new token for `subject`; returns its id and the token, which
/// exists nowhere else once the caller has shown it.
pub async fn create_token(
    db: &Database,
    subject: &str,
    admin: bool,
    organisations: &[String],
) -> anyhow::Result<(i64, String)> {
    let token = generate_token()
        .map_err(|e| anyhow::anyhow!("cannot draw a token from the OS random source: {e}"))?;
    let organisations = serde_json::to_string(organisations)?;
    let id: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(
            "INSERT INTO api_tokens (subject, admin, organisations, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(subject)
        .bind(i64::from(admin))
        .bind(&organisations)
        .bind(hash_token(&token))
        .bind(crate::serve::pipeline::now_ms())
        .fetch_one(pool)
        .await
    })?;
    Ok((id, token))
}

/// Which tokens to revoke.
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    /// Every token of this subject.
    Subject(&'a str),
    /// The token with this id.
    Id(i64),
}

/// Revoke tokens not yet revoked; returns how many were.
pub async fn revoke_tokens(db: &Database, which: Revoke<'_>) -> Result<u64, sqlx::Error> {
    let now = crate::serve::pipeline::now_ms();
    with_pool!(db, pool => {
        let q = match which {
            Revoke::Subject(s) => sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(s),
            Revoke::Id(id) => sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id),
        };
        q.execute(pool).await.map(|r| r.rows_affected())
    })
}

/// Every token, oldest first.
pub async fn list_tokens(db: &Database) -> Result<Vec<TokenRow>, sqlx::Error> {
    type Tuple = (i64, String, i64, String, i64, Option<i64>, Option<i64>);
    let rows: Vec<Tuple> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, subject, admin, organisations, created_at, last_used_at, revoked_at \
             FROM api_tokens ORDER BY id",
        )
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|t| TokenRow {
            id: t.0,
            subject: t.1,
            admin: t.2 != 0,
            organisations: serde_json::from_str(&t.3).unwrap_or_default(),
            created_at: t.4,
            last_used_at: t.5,
            revoked_at: t.6,
        })
        .collect())
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The caller: `None` without an `Authorization` header; 401 with one that
/// does not carry a valid token.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Subject>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    match token_subject(&state.db, token, &state.plugins.config.serve.admins).await {
        Ok(Some(subject)) => Ok(Some(subject)),
        Ok(None) => Err(unauthorized(
            "the API token is not valid: it is unknown or was revoked",
        )),
        Err(e) => Err(ApiError::database("checking the API token", e)),
    }
}

/// The caller, who must have a token.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Subject, ApiError> {
    caller(state, headers).await?.ok_or_else(|| {
        unauthorized(
            "this action needs an API token: send `Authorization: Bearer <token>` \
             (an operator creates one with `kiln token create`)",
        )
    })
}

/// What the API knows of the project a resource belongs to.
#[derive(Debug, Clone)]
pub struct ProjectRef {
    /// Forge instance.
    pub forge: String,
    /// `owner/repo`.
    pub name: String,
    /// The owning organisation or user.
    pub owner: String,
    /// Whether the forge says it is private.
    pub private: bool,
}

impl ProjectRef {
    /// The authz resource for this project, or a run or job of it.
    pub fn resource(&self, kind: ResourceKind, run: Option<i64>) -> Resource {
        Resource {
            kind,
            project: Some(self.name.clone()),
            owner: Some(self.owner.clone()),
            public: !self.private,
            run: run.map(|r| r as u64),
            branch: None,
            pull_request: None,
        }
    }
}

/// The pull request a run built, for the authz plugin's author rule: its
/// number and author as the event recorded them.
pub fn pull_request_ref(number: i64, author: Option<String>, forge: &str) -> PullRequestRef {
    PullRequestRef {
        number: number as u64,
        author: author.unwrap_or_default(),
        author_provider: forge.to_owned(),
    }
}

/// The authz plugin in use: `[serve] authz`, else [`AUTHZ_PLUGIN`].
pub fn authz_plugin(config: &crate::config::KilnConfig) -> &str {
    config.serve.authz.as_deref().unwrap_or(AUTHZ_PLUGIN)
}

/// Ask the authz plugin. A missing or failing plugin denies, saying why.
pub async fn decide(
    state: &AppState,
    subject: Option<&Subject>,
    action: Action,
    resource: &Resource,
) -> Decision {
    let plugins = &state.plugins;
    let name = authz_plugin(&plugins.config);
    let Some(plugin) = plugins.registry.get(name) else {
        return Decision {
            allow: false,
            reason: format!(
                "the authz plugin `{name}` is not installed, so nothing can be allowed"
            ),
        };
    };
    let (grant, limits) = crate::serve::pipeline::forge::grant(plugins, name);
    let ctx = CallContext {
        plugin: name.to_owned(),
        project: resource.project.clone().unwrap_or_default(),
        grant: Arc::new(grant),
        secrets: plugins.secrets.clone(),
        store: Arc::new(NoStore),
        kv: plugins.kv.clone(),
        log: LogSink::new(64 << 10),
    };
    let called = plugins
        .registry
        .runtime()
        .decide(&plugin, subject, action, resource, &Vec::new(), ctx, limits)
        .await;
    for line in &called.log {
        tracing::debug!(plugin = name, "{}", line.message);
    }
    match called.result {
        Ok(decision) => decision,
        Err(e) => {
            tracing::warn!(plugin = name, error = %e, "authz call failed");
            Decision {
                allow: false,
                reason: format!("the authz plugin `{name}` failed, so nothing is allowed: {e}"),
            }
        }
    }
}

/// Read access to projects for one request: public projects without asking,
/// private ones asked once per project.
pub struct Readable<'a> {
    state: &'a AppState,
    subject: Option<&'a Subject>,
    known: HashMap<(String, String), bool>,
}

impl<'a> Readable<'a> {
    /// For `subject` (`None`: anonymous).
    pub fn new(state: &'a AppState, subject: Option<&'a Subject>) -> Self {
        Readable {
            state,
            subject,
            known: HashMap::new(),
        }
    }

    /// Whether the subject may read `project`.
    pub async fn project(&mut self, project: &ProjectRef) -> bool {
        if !project.private {
            return true;
        }
        let key = (project.forge.clone(), project.name.clone());
        if let Some(known) = self.known.get(&key) {
            return *known;
        }
        let resource = project.resource(ResourceKind::Project, None);
        let allow = decide(self.state, self.subject, Action::Read, &resource)
            .await
            .allow;
        self.known.insert(key, allow);
        allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[TOKEN_PREFIX.len()..]));
        // SHA-256 of "abc".
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
