//! Prometheus metrics of the service, kept with `prometheus-client` and
//! served in the OpenMetrics text format at `/metrics`:
//!
//! - webhooks by forge instance and outcome, deliveries stored;
//! - runs by state, jobs queued per system and running (read from the
//!   database at each scrape, so they are right after a restart);
//! - job results by status, job and evaluation durations (histograms);
//! - post-build step durations and failures by plugin;
//! - dispatches by job kind and builder (as Launchpad counts
//!   `build.count,builder_name=…,job_type=…`);
//! - statuses posted by forge instance and outcome.
//!
//! This module only counts; the handlers and the pipeline decide what.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::app::AppState;

/// What became of one webhook request: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeLabelValue)]
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    forge: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SystemLabel {
    system: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DispatchLabels {
    job_type: &'static str,
    builder_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PostLabels {
    forge: String,
    outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 50 ms to ~3.6 h.
    Histogram::new(exponential_buckets(0.05, 2.0, 18))
}

struct Inner {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    deliveries: Gauge,
    runs: Family<StateLabel, Gauge>,
    queued: Family<SystemLabel, Gauge>,
    running: Gauge,
    results: Family<StatusLabel, Counter>,
    job_seconds: Family<StatusLabel, Histogram, fn() -> Histogram>,
    eval_seconds: Histogram,
    step_seconds: Family<PluginLabel, Histogram, fn() -> Histogram>,
    step_failures: Family<PluginLabel, Counter>,
    dispatches: Family<DispatchLabels, Counter>,
    posts: Family<PostLabels, Counter>,
    /// Label values of the database gauges set at the last scrape, so that
    /// a value that went away is set back to zero.
    seen: Mutex<(Vec<String>, Vec<String>)>,
}

/// The service's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(0)
    }
}

impl Metrics {
    /// Start with `stored` deliveries already in the database.
    pub fn new(stored: i64) -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "Whether the Kiln service is up", up);
        let inner = Inner {
            webhooks: Family::default(),
            deliveries: Gauge::default(),
            runs: Family::default(),
            queued: Family::default(),
            running: Gauge::default(),
            results: Family::default(),
            job_seconds: Family::new_with_constructor(seconds_histogram),
            eval_seconds: seconds_histogram(),
            step_seconds: Family::new_with_constructor(seconds_histogram),
            step_failures: Family::default(),
            dispatches: Family::default(),
            posts: Family::default(),
            seen: Mutex::default(),
            registry,
        };
        let mut inner = inner;
        let r = &mut inner.registry;
        r.register(
            "webhooks",
            "Webhook requests by forge instance and outcome",
            inner.webhooks.clone(),
        );
        r.register(
            "deliveries_stored",
            "Webhook deliveries in the database",
            inner.deliveries.clone(),
        );
        r.register("runs", "Runs by state", inner.runs.clone());
        r.register(
            "queue_depth",
            "Jobs of running runs waiting for a build slot, by system",
            inner.queued.clone(),
        );
        r.register(
            "jobs_running",
            "Jobs being built now",
            inner.running.clone(),
        );
        r.register(
            "job_results",
            "Jobs that reached a final status, by status",
            inner.results.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Build time of finished jobs, by status",
            inner.job_seconds.clone(),
        );
        r.register(
            "eval_duration_seconds",
            "Time from a run's start to the end of its evaluation",
            inner.eval_seconds.clone(),
        );
        r.register(
            "plugin_step_duration_seconds",
            "Post-build step durations, by plugin",
            inner.step_seconds.clone(),
        );
        r.register(
            "plugin_step_failures",
            "Post-build steps that failed, by plugin",
            inner.step_failures.clone(),
        );
        r.register(
            "dispatches",
            "Work handed out, by job type (evaluation, build, post_build, status) and builder",
            inner.dispatches.clone(),
        );
        r.register(
            "statuses_posted",
            "Forge status posts by forge instance and outcome",
            inner.posts.clone(),
        );
        inner.deliveries.set(stored);
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Count one webhook for `forge` (empty for an unknown instance, so that
    /// a caller cannot create label values at will).
    pub fn webhook(&self, forge: &str, outcome: Outcome) {
        self.inner
            .webhooks
            .get_or_create(&WebhookLabels {
                forge: forge.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Count one more stored delivery.
    pub fn stored(&self) {
        self.inner.deliveries.inc();
    }

    /// Set the deliveries in the database.
    pub fn set_stored(&self, n: i64) {
        self.inner.deliveries.set(n);
    }

    /// A job reached final `status` after `duration`.
    pub fn job_finished(&self, status: &str, duration: Duration) {
        let label = StatusLabel {
            status: status.to_owned(),
        };
        self.inner.results.get_or_create(&label).inc();
        self.inner
            .job_seconds
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
    }

    /// A run's evaluation took `duration`.
    pub fn evaluated(&self, duration: Duration) {
        self.inner.eval_seconds.observe(duration.as_secs_f64());
    }

    /// A post-build step of `plugin` ran for `duration`; `failed` if it did.
    pub fn step(&self, plugin: &str, duration: Duration, failed: bool) {
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        self.inner
            .step_seconds
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
        if failed {
            self.inner.step_failures.get_or_create(&label).inc();
        }
    }

    /// Work of `job_type` was handed to `builder`.
    pub fn dispatched(&self, job_type: &'static str, builder: &str) {
        self.inner
            .dispatches
            .get_or_create(&DispatchLabels {
                job_type,
                builder_name: builder.to_owned(),
            })
            .inc();
    }

    /// A status post to `forge` ended with `outcome` (`posted`,
    /// `rate_limited`, `failed`).
    pub fn status_posted(&self, forge: &str, outcome: &'static str) {
        self.inner
            .posts
            .get_or_create(&PostLabels {
                forge: forge.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Set the gauges read from the database: runs by state, queued jobs
    /// per system, running jobs. Values absent now are set to zero.
    pub fn set_gauges(&self, runs: &[(String, i64)], queued: &[(String, i64)], running: i64) {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        for state in &seen.0 {
            self.inner
                .runs
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(0);
        }
        for system in &seen.1 {
            self.inner
                .queued
                .get_or_create(&SystemLabel {
                    system: system.clone(),
                })
                .set(0);
        }
        for (state, n) in runs {
            self.inner
                .runs
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        for (system, n) in queued {
            self.inner
                .queued
                .get_or_create(&SystemLabel {
                    system: system.clone(),
                })
                .set(*n);
        }
        self.inner.running.set(running);
        seen.0.extend(runs.iter().map(|r| r.0.clone()));
        seen.0.sort();
        seen.0.dedup();
        seen.1.extend(queued.iter().map(|q| q.0.clone()));
        seen.1.sort();
        seen.1.dedup();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// `GET /metrics`: the database gauges are read first.
pub async fn get(State(state): State<std::sync::Arc<AppState>>) -> impl IntoResponse {
    if let Err(e) = state.pipeline.refresh_gauges().await {
        tracing::warn!("cannot read the gauges: {e}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
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
        m.job_finished("failed", Duration::from_millis(120));
        m.dispatched("build", "localhost");
        m.step("binary-cache", Duration::from_secs(2), true);
        m.set_gauges(&[("running".into(), 2)], &[("x86_64-linux".into(), 5)], 1);
        m.set_gauges(&[("queued".into(), 1)], &[], 0);
        let text = m.render();
        for line in [
            "kiln_up 1\n",
            "kiln_webhooks_total{forge=\"github\",outcome=\"accepted\"} 2\n",
            "kiln_webhooks_total{forge=\"\",outcome=\"unknown_forge\"} 1\n",
            "kiln_deliveries_stored 4\n",
            "kiln_job_results_total{status=\"failed\"} 1\n",
            "kiln_job_duration_seconds_count{status=\"failed\"} 1\n",
            "kiln_dispatches_total{job_type=\"build\",builder_name=\"localhost\"} 1\n",
            "kiln_plugin_step_failures_total{plugin=\"binary-cache\"} 1\n",
            // A state or system that went away reads zero, not its old value.
            "kiln_runs{state=\"running\"} 0\n",
            "kiln_runs{state=\"queued\"} 1\n",
            "kiln_queue_depth{system=\"x86_64-linux\"} 0\n",
            "kiln_jobs_running 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
