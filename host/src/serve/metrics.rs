//! Prometheus metrics of the service, formatted by hand in the text
//! exposition format: webhooks by forge instance and outcome, deliveries
//! stored, and that the process is up.
//!
//! This module only counts; handlers decide what to count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::app::AppState;

/// What became of one webhook request: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Verified, parsed and stored with its events (202).
    Accepted,
    /// Verified and stored, but nothing to build (202).
    Ignored,
    /// Verified; the plugin asked to be called again later; stored (202).
    RetryLater,
    /// A delivery id already stored (200).
    Duplicate,
    /// Signature or token wrong or missing (401).
    Unauthenticated,
    /// Authentic but unparsable (400).
    Malformed,
    /// No such forge instance (404).
    UnknownForge,
    /// Body over the limit (413).
    TooLarge,
    /// The plugin trapped, ran out of a budget or is not installed (500).
    PluginFailed,
    /// The database refused the delivery (503).
    StoreFailed,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Ignored => "ignored",
            Outcome::RetryLater => "retry_later",
            Outcome::Duplicate => "duplicate",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Malformed => "malformed",
            Outcome::UnknownForge => "unknown_forge",
            Outcome::TooLarge => "too_large",
            Outcome::PluginFailed => "plugin_failed",
            Outcome::StoreFailed => "store_failed",
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    webhooks: Mutex<BTreeMap<(String, Outcome), u64>>,
    deliveries_stored: AtomicI64,
}

impl Metrics {
    /// Start with `stored` deliveries already in the database.
    pub fn new(stored: i64) -> Self {
        Metrics {
            webhooks: Mutex::default(),
            deliveries_stored: AtomicI64::new(stored),
        }
    }

    /// Count one webhook for `forge` (empty for an unknown instance, so that
    /// a caller cannot create label values at will).
    pub fn webhook(&self, forge: &str, outcome: Outcome) {
        let mut map = self.webhooks.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((forge.to_owned(), outcome)).or_default() += 1;
    }

    /// Count one more stored delivery.
    pub fn stored(&self) {
        self.deliveries_stored.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP kiln_up Whether the Kiln service is up.\n# TYPE kiln_up gauge\nkiln_up 1\n",
        );
        out.push_str(
            "# HELP kiln_webhooks_total Webhook requests by forge instance and outcome.\n\
             # TYPE kiln_webhooks_total counter\n",
        );
        let map = self.webhooks.lock().unwrap_or_else(|e| e.into_inner());
        for ((forge, outcome), n) in map.iter() {
            let _ = writeln!(
                out,
                "kiln_webhooks_total{{forge=\"{}\",outcome=\"{}\"}} {n}",
                escape(forge),
                outcome.as_str()
            );
        }
        let _ = write!(
            out,
            "# HELP kiln_deliveries_stored Webhook deliveries in the database.\n\
             # TYPE kiln_deliveries_stored gauge\n\
             kiln_deliveries_stored {}\n",
            self.deliveries_stored.load(Ordering::Relaxed)
        );
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn get(State(state): State<std::sync::Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_the_text_format() {
        let m = Metrics::new(3);
        m.webhook("github", Outcome::Accepted);
        m.webhook("github", Outcome::Accepted);
        m.webhook("", Outcome::UnknownForge);
        m.stored();
        let text = m.render();
        assert!(text.contains("kiln_up 1\n"), "{text}");
        assert!(
            text.contains("kiln_webhooks_total{forge=\"github\",outcome=\"accepted\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kiln_webhooks_total{forge=\"\",outcome=\"unknown_forge\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kiln_deliveries_stored 4\n"), "{text}");
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
