//! `POST /webhooks/<instance>[/<rest>]`: hand the request to the instance's
//! forge plugin, which verifies it before parsing, and store what it
//! accepted before answering.
//!
//! | plugin verdict | stored | answer |
//! | --- | --- | --- |
//! | events | delivery (`received`) and its events, one transaction | 202 `{"delivery", "id", "events"}` |
//! | ignored | delivery (`ignored`, the note in `error`) | 202, `events: 0` |
//! | retry-after | delivery (`received`, `retry_at`) keyed by the body's hash | 202 (503 + `Retry-After` when it cannot be stored) |
//! | a delivery id already stored | nothing | 200 `{"duplicate": true}` |
//! | unauthenticated / malformed | nothing | 401 / 400 |
//!
//! A plugin's messages are logged, never sent back. This module does not
//! process stored deliveries; the pipeline will pick up `received` rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kiln_runtime::bindings::forge_types::{
    Header, WebhookDisposition, WebhookError, WebhookRequest,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::app::{AppState, MAX_WEBHOOK_BYTES};
use super::db::{NewDelivery, NewEvent, Stored};
use super::metrics::Outcome;
use crate::config::ForgeInstance;

/// How long a client should wait after the database refused a delivery.
const STORE_RETRY_SECS: u32 = 5;

/// The handler.
pub async fn receive(
    State(state): State<Arc<AppState>>,
    Path(params): Path<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let instance = params.get("instance").cloned().unwrap_or_default();
    let (outcome, response) = handle(&state, &instance, &params, method, uri, headers, body).await;
    let forge = if outcome == Outcome::UnknownForge {
        ""
    } else {
        instance.as_str()
    };
    state.metrics.webhook(forge, outcome);
    response
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

async fn handle(
    state: &AppState,
    instance: &str,
    params: &BTreeMap<String, String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> (Outcome, Response) {
    let Some(forge) = state.forges.get(instance) else {
        let r = answer(
            StatusCode::NOT_FOUND,
            json!({"error": "no forge instance of this name is configured"}),
        );
        return (Outcome::UnknownForge, r);
    };
    let too_large = || {
        let r = answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("webhook bodies are limited to {MAX_WEBHOOK_BYTES} bytes")}),
        );
        (Outcome::TooLarge, r)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BYTES as u64) {
        return too_large();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_WEBHOOK_BYTES).await else {
        return too_large();
    };

    let path = match (params.get("rest"), uri.query()) {
        (rest, Some(q)) => format!("/{}?{q}", rest.map_or("", String::as_str)),
        (rest, None) => format!("/{}", rest.map_or("", String::as_str)),
    };
    let request = WebhookRequest {
        method: method.to_string(),
        path,
        headers: headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect(),
        body: body.to_vec(),
    };
    let verdict = ask_plugin(state, instance, forge, &request).await;
    let mut delivery = NewDelivery {
        forge: instance.to_owned(),
        delivery: String::new(),
        received_at: now_ms(),
        headers: serde_json::to_string(
            &request
                .headers
                .iter()
                .map(|h| [&h.name, &h.value])
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default(),
        path: request.path,
        body: request.body,
        status: "received",
        error: None,
        retry_at: None,
        events: Vec::new(),
    };
    let outcome = match verdict {
        Verdict::Events {
            delivery: id,
            events,
        } => {
            delivery.delivery = id.unwrap_or_else(|| body_key(&delivery.body));
            delivery.events = events;
            Outcome::Accepted
        }
        Verdict::Ignored { delivery: id, note } => {
            delivery.delivery = id.unwrap_or_else(|| body_key(&delivery.body));
            tracing::info!(instance, delivery = %delivery.delivery, "webhook ignored: {note}");
            delivery.status = "ignored";
            delivery.error = Some(note);
            Outcome::Ignored
        }
        Verdict::Refused(outcome, message) => return refused(instance, outcome, &message),
        Verdict::PluginFailed => return plugin_failed(),
        Verdict::RetryAfter { seconds, reason } => {
            tracing::info!(
                instance,
                seconds,
                "webhook kept for a later retry: {reason}"
            );
            delivery.delivery = body_key(&delivery.body);
            delivery.error = Some(reason);
            delivery.retry_at = Some(delivery.received_at + i64::from(seconds) * 1000);
            Outcome::RetryLater
        }
    };

    match state.ingest.store(delivery.clone()).await {
        Ok(Stored::New(id)) => {
            state.metrics.stored();
            if !delivery.events.is_empty() {
                state.pipeline.events_stored();
            }
            let mut body = json!({
                "delivery": delivery.delivery,
                "id": id,
                "events": delivery.events.len(),
            });
            if let Some(at) = delivery.retry_at {
                body["retry_after"] = json!((at - delivery.received_at) / 1000);
            }
            (outcome, answer(StatusCode::ACCEPTED, body))
        }
        Ok(Stored::Duplicate) => {
            let r = answer(
                StatusCode::OK,
                json!({"duplicate": true, "delivery": delivery.delivery}),
            );
            (Outcome::Duplicate, r)
        }
        Err(e) => {
            tracing::error!(instance, error = %e, "cannot store a webhook delivery");
            let retry = match delivery.retry_at {
                Some(at) => (at - delivery.received_at) / 1000,
                None => i64::from(STORE_RETRY_SECS),
            };
            let mut r = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the delivery could not be stored; send it again later"}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry.max(1)));
            (Outcome::StoreFailed, r)
        }
    }
}

/// What a forge plugin made of a request.
pub enum Verdict {
    /// Change events to build, with the forge's delivery id if it sent one.
    Events {
        /// The forge's delivery id.
        delivery: Option<String>,
        /// The rows to store.
        events: Vec<NewEvent>,
    },
    /// Authentic, but nothing to build (the note says why).
    Ignored {
        /// The forge's delivery id.
        delivery: Option<String>,
        /// Why.
        note: String,
    },
    /// The plugin cannot decide now (its forge is unreachable or
    /// rate-limited): store the request and ask again after `seconds`.
    RetryAfter {
        /// How long to wait.
        seconds: u32,
        /// Why.
        reason: String,
    },
    /// Unauthenticated or malformed, with the plugin's reason.
    Refused(Outcome, String),
    /// The plugin is missing, trapped or ran out of time.
    PluginFailed,
}

/// Hand `request` to the forge plugin of `instance`; its log lines go to
/// the service's log.
pub async fn ask_plugin(
    state: &AppState,
    instance: &str,
    forge: &ForgeInstance,
    request: &WebhookRequest,
) -> Verdict {
    let Some(plugin) = state.plugins.registry.get(&forge.plugin) else {
        tracing::error!(instance, plugin = %forge.plugin, "the forge plugin is not installed");
        return Verdict::PluginFailed;
    };
    let (ctx, limits) = super::pipeline::forge::call_context(&state.plugins, instance, forge);
    let called = state
        .plugins
        .registry
        .runtime()
        .handle_webhook(&plugin, request, &forge.config_pairs(), ctx, limits)
        .await;
    for line in &called.log {
        tracing::debug!(instance, plugin = %forge.plugin, "{}", line.message);
    }
    match called.result {
        Ok(Ok(outcome)) => match outcome.disposition {
            WebhookDisposition::Events(events) => Verdict::Events {
                delivery: outcome.delivery,
                events: events.iter().map(super::events::row).collect(),
            },
            WebhookDisposition::Ignored(note) => Verdict::Ignored {
                delivery: outcome.delivery,
                note,
            },
        },
        Ok(Err(WebhookError::Unauthenticated(message))) => {
            Verdict::Refused(Outcome::Unauthenticated, message)
        }
        Ok(Err(WebhookError::Malformed(message))) => Verdict::Refused(Outcome::Malformed, message),
        Ok(Err(WebhookError::RetryAfter(retry))) => Verdict::RetryAfter {
            seconds: retry.seconds,
            reason: retry.reason,
        },
        Err(e) => {
            tracing::error!(instance, error = %e, "the forge plugin failed on a webhook");
            Verdict::PluginFailed
        }
    }
}

/// A webhook the plugin refused: its reason is logged, not sent back.
fn refused(instance: &str, outcome: Outcome, reason: &str) -> (Outcome, Response) {
    tracing::warn!(
        instance,
        "webhook refused as {}: {reason}",
        outcome.as_str()
    );
    let (status, public) = match outcome {
        Outcome::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            "the request is not authenticated for this forge instance",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "the forge plugin could not parse the request",
        ),
    };
    (outcome, answer(status, json!({ "error": public })))
}

fn plugin_failed() -> (Outcome, Response) {
    let r = answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "the forge plugin failed; see the service's log"}),
    );
    (Outcome::PluginFailed, r)
}

/// The key of a delivery the forge gave no id: the body's SHA-256, so that
/// a redelivery of the same body is a duplicate.
pub fn body_key(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
