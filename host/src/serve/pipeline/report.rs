//! Forge statuses: what each run owes its targets, kept in the `statuses`
//! table as an outbox, and the loop that posts it.
//!
//! A run's state is turned into the statuses it should show ([`desired`]):
//! `kiln/nix-eval` and `kiln/nix-build` aggregates, one
//! `kiln/nix-build/<attr>` per failed attribute up to `max_failure_statuses`,
//! `kiln/approval` for a held pull request, and a Markdown summary on final
//! states. Each differing status bumps its row's `version`; the poster sends
//! only a row's latest version, so bursts of changes coalesce, and marks it
//! posted. A forge's `retry-after` pauses every post to that instance until
//! then; other failures back off per row. Superseded targets get nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::CallError;
use kiln_runtime::bindings::forge_types::{FailedJob, StatusReport, StatusState};
use serde_json::{Value, json};

use super::store;
use super::{Pipeline, forge, now_ms};

/// Pause after a wake-up, so that a burst of changes posts once.
const COALESCE: Duration = Duration::from_millis(150);
/// Longest backoff of a failing post.
const MAX_BACKOFF_MS: i64 = 10 * 60 * 1000;
/// Posts in flight at once.
const PARALLEL_POSTS: usize = 4;
/// Forges cut descriptions at 140 characters.
const DESCRIPTION_MAX: usize = 140;

/// One status a target should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `kiln/nix-eval`, …
    pub context: String,
    /// `pending`, `success`, `failure`, `error`.
    pub state: &'static str,
    /// One line.
    pub description: String,
    /// Link.
    pub target_url: Option<String>,
    /// Markdown report, on final states.
    pub summary: Option<String>,
    /// Failed attributes with links (JSON array).
    pub failures: String,
}

/// The facts about a run that its statuses show.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// Run id.
    pub id: i64,
    /// Run state.
    pub state: String,
    /// Why it failed as a whole, or was cancelled.
    pub error: Option<String>,
    /// Evaluation ended.
    pub evaluated: bool,
    /// Held for approval.
    pub needs_approval: bool,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Job counts by status.
    pub counts: HashMap<String, i64>,
    /// Failed jobs (id, attr, status, error), evaluation order.
    pub failed: Vec<(i64, String, String, Option<String>)>,
}

impl RunFacts {
    fn count(&self, status: &str) -> i64 {
        self.counts.get(status).copied().unwrap_or(0)
    }

    fn total(&self) -> i64 {
        self.counts.values().sum()
    }
}

fn cut(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() <= DESCRIPTION_MAX {
        line.to_owned()
    } else {
        let mut out: String = line.chars().take(DESCRIPTION_MAX - 1).collect();
        out.push('…');
        out
    }
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The statuses run `f` should show on a target (`pull_request` tells
/// whether the approval status applies).
pub fn desired(
    f: &RunFacts,
    public_url: &str,
    max_failures: usize,
    pull_request: bool,
) -> Vec<Desired> {
    let run_url = format!("{public_url}/api/v1/runs/{}", f.id);
    let job_url = |id: i64| format!("{public_url}/api/v1/jobs/{id}/log");
    let total = f.total();
    let failed_build = f.count("failed") + f.count("timed_out") + f.count("dependency_failed");
    let eval_errors = f.count("eval_error");
    let is_final = matches!(
        f.state.as_str(),
        "succeeded" | "failed" | "error" | "cancelled"
    );
    let failures: Vec<Value> = f
        .failed
        .iter()
        .take(50)
        .map(|(id, attr, _, _)| json!({"attr": attr, "url": job_url(*id)}))
        .collect();
    let failures = Value::Array(failures).to_string();
    let status = |context: &str, state: &'static str, description: String| Desired {
        context: context.to_owned(),
        state,
        description: cut(&description),
        target_url: Some(run_url.clone()),
        summary: None,
        failures: "[]".to_owned(),
    };
    let mut out = Vec::new();
    match f.state.as_str() {
        "queued" => {
            out.push(status("kiln/nix-eval", "pending", "Queued".into()));
            out.push(status(
                "kiln/nix-build",
                "pending",
                "Waiting for evaluation".into(),
            ));
        }
        "cancelled" => {
            let why = f.error.clone().unwrap_or_else(|| "cancelled".into());
            out.push(status(
                "kiln/nix-eval",
                "error",
                format!("Cancelled: {why}"),
            ));
            out.push(status(
                "kiln/nix-build",
                "error",
                format!("Cancelled: {why}"),
            ));
        }
        "error" => {
            let why = f.error.clone().unwrap_or_else(|| "the run failed".into());
            out.push(status("kiln/nix-eval", "failure", why.clone()));
            let mut build = status("kiln/nix-build", "failure", format!("Not built: {why}"));
            build.summary = Some(format!(
                "### Kiln could not build this commit\n\n```\n{why}\n```\n"
            ));
            out.push(build);
        }
        _ if !f.evaluated && !is_final => {
            out.push(status("kiln/nix-eval", "pending", "Evaluating".into()));
            out.push(status(
                "kiln/nix-build",
                "pending",
                "Waiting for evaluation".into(),
            ));
        }
        state => {
            out.push(if eval_errors > 0 {
                status(
                    "kiln/nix-eval",
                    "failure",
                    format!(
                        "{} of {total} failed to evaluate",
                        plural(eval_errors, "attribute", "attributes")
                    ),
                )
            } else {
                status(
                    "kiln/nix-eval",
                    "success",
                    format!("{} evaluated", plural(total, "job", "jobs")),
                )
            });
            let names: Vec<&str> = f.failed.iter().take(3).map(|j| j.1.as_str()).collect();
            let mut build = if state == "running" {
                let mut d = format!("Building {}", plural(total, "job", "jobs"));
                if failed_build + eval_errors > 0 {
                    d.push_str(&format!(
                        "; {} failed so far: {}",
                        failed_build + eval_errors,
                        names.join(", ")
                    ));
                }
                status("kiln/nix-build", "pending", d)
            } else if failed_build + eval_errors > 0 {
                status(
                    "kiln/nix-build",
                    "failure",
                    format!(
                        "{} of {total} failed: {}",
                        failed_build + eval_errors,
                        names.join(", ")
                    ),
                )
            } else {
                status(
                    "kiln/nix-build",
                    "success",
                    format!(
                        "{} built, {} cached",
                        f.count("succeeded"),
                        f.count("cached")
                    ),
                )
            };
            if is_final {
                build.summary = Some(summary(f, &job_url));
                build.failures = failures.clone();
            }
            out.push(build);
        }
    }
    // One status per failed attribute, as they fail.
    for (id, attr, status_name, error) in f.failed.iter().take(max_failures) {
        let what = match status_name.as_str() {
            "eval_error" => "Evaluation failed",
            "timed_out" => "Timed out",
            _ => "Build failed",
        };
        let description = match error {
            Some(e) => format!("{what}: {e}"),
            None => what.to_owned(),
        };
        out.push(Desired {
            context: format!("kiln/nix-build/{attr}"),
            state: "failure",
            description: cut(&description),
            target_url: Some(job_url(*id)),
            summary: None,
            failures: "[]".to_owned(),
        });
    }
    if pull_request && (f.needs_approval || f.approved_by.is_some()) {
        out.push(match &f.approved_by {
            Some(by) => status("kiln/approval", "success", format!("Approved by {by}")),
            None => status(
                "kiln/approval",
                "pending",
                format!(
                    "Built without secrets; a member may approve: POST /api/v1/runs/{}/approve",
                    f.id
                ),
            ),
        });
    }
    out
}

fn summary(f: &RunFacts, job_url: &dyn Fn(i64) -> String) -> String {
    let mut s = format!(
        "### Kiln run {}: {}\n\n| jobs | built | cached | failed | dependency failed | evaluation errors |\n|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} |\n",
        f.id,
        f.state,
        f.total(),
        f.count("succeeded"),
        f.count("cached"),
        f.count("failed") + f.count("timed_out"),
        f.count("dependency_failed"),
        f.count("eval_error"),
    );
    if !f.failed.is_empty() {
        s.push_str("\n**Failed:**\n\n");
        for (id, attr, _, error) in f.failed.iter().take(50) {
            s.push_str(&format!("- [`{attr}`]({})", job_url(*id)));
            if let Some(e) = error {
                s.push_str(&format!(": {}", cut(e)));
            }
            s.push('\n');
        }
        if f.failed.len() > 50 {
            s.push_str(&format!("- … and {} more\n", f.failed.len() - 50));
        }
    }
    s
}

/// The reporter loop.
pub async fn run(p: Arc<Pipeline>) {
    // Statuses computed before a restart are in the table; runs whose
    // statuses may not have been computed are recomputed once.
    match store::runs_with_active_targets(&p.db).await {
        Ok(runs) => {
            let mut dirty = p.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.extend(runs);
        }
        Err(e) => tracing::error!("cannot list runs to report: {e}"),
    }
    let mut paused: HashMap<String, i64> = HashMap::new();
    loop {
        let dirty: BTreeSet<i64> =
            std::mem::take(&mut *p.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        for run in dirty {
            if let Err(e) = refresh(&p, run).await {
                tracing::error!(run, "cannot compute statuses: {e}");
                p.dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(run);
            }
        }
        let next = match post_owed(&p, &mut paused).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("cannot post statuses: {e}");
                Some(now_ms() + 5_000)
            }
        };
        let wait = next
            .map(|t| Duration::from_millis((t - now_ms()).clamp(50, 30_000) as u64))
            .unwrap_or(Duration::from_secs(30));
        tokio::select! {
            _ = p.report_wake.notified() => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Recompute the statuses of run `run`'s active targets.
async fn refresh(p: &Pipeline, run: i64) -> Result<(), sqlx::Error> {
    let Some(facts) = store::run_facts(&p.db, run, p.settings.max_failure_statuses + 1).await?
    else {
        return Ok(());
    };
    for (target, pull_request) in store::active_targets(&p.db, run).await? {
        let want = desired(
            &facts,
            &p.settings.public_url,
            p.settings.max_failure_statuses,
            pull_request,
        );
        store::upsert_statuses(&p.db, target, &want).await?;
    }
    Ok(())
}

/// Post what is owed and due; returns when to look again.
async fn post_owed(
    p: &Arc<Pipeline>,
    paused: &mut HashMap<String, i64>,
) -> Result<Option<i64>, sqlx::Error> {
    let now = now_ms();
    paused.retain(|_, until| *until > now);
    let owed = store::owed_statuses(&p.db, now, 256).await?;
    let mut set = tokio::task::JoinSet::new();
    for s in owed {
        if paused.contains_key(&s.forge) {
            continue;
        }
        while set.len() >= PARALLEL_POSTS {
            if let Some(Ok((forge, pause))) = set.join_next().await
                && let Some(until) = pause
            {
                paused.insert(forge, until);
            }
        }
        let p = p.clone();
        set.spawn(async move {
            let forge_name = s.forge.clone();
            let pause = post_one(&p, s).await;
            (forge_name, pause)
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok((forge, Some(until))) = done {
            paused.insert(forge, until);
        }
    }
    store::next_status_due(&p.db).await
}

/// Post one status; returns until when its forge is rate-limited, if it is.
async fn post_one(p: &Pipeline, s: store::OwedStatus) -> Option<i64> {
    let Some(repository) = forge::repository_from_json(&s.repository) else {
        tracing::error!(
            status = s.id,
            "the project's repository record is unreadable"
        );
        return None;
    };
    let failures: Vec<FailedJob> = serde_json::from_str::<Vec<Value>>(&s.failures)
        .unwrap_or_default()
        .iter()
        .map(|f| FailedJob {
            attr: f["attr"].as_str().unwrap_or_default().to_owned(),
            url: f["url"].as_str().map(str::to_owned),
        })
        .collect();
    let report = StatusReport {
        repository,
        rev: s.rev.clone(),
        pull_request: s.pull_request.and_then(|n| u64::try_from(n).ok()),
        context: s.context.clone(),
        state: match s.state.as_str() {
            "success" => StatusState::Success,
            "failure" => StatusState::Failure,
            "error" => StatusState::Error,
            "running" => StatusState::Running,
            "cancelled" => StatusState::Cancelled,
            _ => StatusState::Pending,
        },
        description: s.description.clone(),
        target_url: s.target_url.clone(),
        summary: s.summary.clone(),
        failures,
    };
    p.metrics.dispatched("status", &s.forge);
    let result = forge::report_status(p, &s.forge, &report).await;
    p.metrics.status_posted(
        &s.forge,
        match &result {
            Ok(()) => "posted",
            Err(CallError::RetryAfter { .. }) => "rate_limited",
            Err(_) => "failed",
        },
    );
    let now = now_ms();
    let (pause, outcome) = match result {
        Ok(()) => (None, store::PostOutcome::Posted(s.version)),
        Err(CallError::RetryAfter { seconds, reason }) => {
            let until = now + i64::from(seconds.max(1)) * 1000;
            tracing::warn!(forge = %s.forge, seconds, "the forge asks to wait: {reason}");
            (
                Some(until),
                store::PostOutcome::Later {
                    at: until,
                    error: format!("retry after {seconds} s: {reason}"),
                },
            )
        }
        Err(e) => {
            let backoff = (5_000i64 << s.attempts.clamp(0, 12)).min(MAX_BACKOFF_MS);
            tracing::warn!(forge = %s.forge, context = %s.context, "posting a status failed: {e}");
            (
                None,
                store::PostOutcome::Later {
                    at: now + backoff,
                    error: e.to_string(),
                },
            )
        }
    };
    if let Err(e) = store::record_post(&p.db, s.id, &outcome).await {
        tracing::error!(status = s.id, "cannot record a post: {e}");
    }
    pause
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: &str) -> RunFacts {
        RunFacts {
            id: 7,
            state: state.into(),
            evaluated: true,
            counts: [("succeeded".to_owned(), 3), ("cached".to_owned(), 1)]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_green_run_is_two_successes() {
        let d = desired(&facts("succeeded"), "http://k", 20, false);
        let contexts: Vec<_> = d.iter().map(|s| (s.context.as_str(), s.state)).collect();
        assert_eq!(
            contexts,
            [("kiln/nix-eval", "success"), ("kiln/nix-build", "success")]
        );
        assert_eq!(d[1].description, "3 built, 1 cached");
        assert_eq!(d[1].target_url.as_deref(), Some("http://k/api/v1/runs/7"));
        assert!(d[1].summary.as_deref().unwrap().contains("| 4 | 3 | 1 |"));
    }

    #[test]
    fn failures_are_listed_and_capped() {
        let mut f = facts("failed");
        f.counts.insert("failed".into(), 3);
        f.failed = (1..=3)
            .map(|i| {
                (
                    i,
                    format!("x86_64-linux.f{i}"),
                    "failed".to_owned(),
                    Some("builder failed".to_owned()),
                )
            })
            .collect();
        let d = desired(&f, "http://k", 2, false);
        let build = d.iter().find(|s| s.context == "kiln/nix-build").unwrap();
        assert_eq!(build.state, "failure");
        assert!(
            build
                .description
                .starts_with("3 of 7 failed: x86_64-linux.f1"),
            "{}",
            build.description
        );
        let per: Vec<_> = d
            .iter()
            .filter(|s| s.context.starts_with("kiln/nix-build/"))
            .collect();
        assert_eq!(per.len(), 2, "capped");
        assert_eq!(
            per[0].target_url.as_deref(),
            Some("http://k/api/v1/jobs/1/log")
        );
        let list: Vec<Value> = serde_json::from_str(&build.failures).unwrap();
        assert_eq!(
            list.len(),
            3,
            "the failure list is not capped by the status cap"
        );
    }

    #[test]
    fn held_pull_requests_show_the_approval_status() {
        let mut f = facts("running");
        f.needs_approval = true;
        let d = desired(&f, "http://k", 20, true);
        let a = d.iter().find(|s| s.context == "kiln/approval").unwrap();
        assert_eq!(a.state, "pending");
        assert!(
            desired(&f, "http://k", 20, false)
                .iter()
                .all(|s| s.context != "kiln/approval")
        );
        let mut e = facts("error");
        e.error = Some("error: flake.nix:3: syntax error\nmore".into());
        let d = desired(&e, "http://k", 20, false);
        assert_eq!(d[0].description, "error: flake.nix:3: syntax error");
        assert_eq!(d[0].state, "failure");
    }
}
