//! Check runs (`report = "checks"`, App mode only): one check run per
//! status context and commit, created with `POST /repos/{owner}/{repo}/check-runs`
//! and moved along with `PATCH /repos/{owner}/{repo}/check-runs/{id}`. The
//! id is cached as `check-run/{owner}/{repo}/{sha}/{hash of the context}`
//! so that later reports patch the same run instead of adding another.
//!
//! A completed run that is reported running again (a rebuild) gets a new
//! run, as GitHub's re-runs do; an id GitHub no longer knows (404) too.

use kiln_plugin_sdk::{PluginError, StatusReport, StatusState, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Caller;
use crate::api::{self, Api};
use crate::app::{cache_get, cache_set};

/// How long a check run's id is kept: a day of reports on one commit.
const CHECK_RUN_TTL_SECS: u32 = 24 * 3600;
/// GitHub's limit on `output.summary`, in characters.
const MAX_SUMMARY: usize = 65_535;

/// A check run this plugin made, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub completed: bool,
}

/// GitHub's `status` and, once completed, `conclusion` for Kiln's state.
pub fn status(state: StatusState) -> (&'static str, Option<&'static str>) {
    match state {
        StatusState::Pending => ("queued", None),
        StatusState::Running => ("in_progress", None),
        StatusState::Success => ("completed", Some("success")),
        StatusState::Failure | StatusState::Error => ("completed", Some("failure")),
        StatusState::Cancelled => ("completed", Some("cancelled")),
    }
}

/// The cache key of `report`'s check run. The context is hashed: it may be
/// long and hold any character.
pub fn key(report: &StatusReport) -> String {
    let context = Sha256::digest(report.context.as_bytes());
    let hex: String = context[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "check-run/{}/{}/{}/{hex}",
        report.repository.owner.to_ascii_lowercase(),
        report.repository.name.to_ascii_lowercase(),
        report.rev.to_ascii_lowercase()
    )
}

/// The body that creates (`create`) or updates `report`'s check run.
pub fn body(report: &StatusReport, create: bool) -> Value {
    let (status, conclusion) = status(report.state);
    let mut body = json!({
        "name": report.context,
        "status": status,
        "output": {
            "title": api::description(&report.description),
            "summary": summary(report),
        },
    });
    if create {
        body["head_sha"] = report.rev.as_str().into();
    }
    if let Some(conclusion) = conclusion {
        body["conclusion"] = conclusion.into();
    }
    if let Some(url) = &report.target_url {
        body["details_url"] = url.as_str().into();
    }
    body
}

/// The report's Markdown summary, else its description and failed jobs,
/// within GitHub's limit.
fn summary(report: &StatusReport) -> String {
    let mut text = match &report.summary {
        Some(summary) if !summary.trim().is_empty() => summary.clone(),
        _ => {
            let mut text = report.description.trim().to_owned();
            if !report.failures.is_empty() {
                text.push_str("\n\nFailed:\n");
                for failure in &report.failures {
                    match &failure.url {
                        Some(url) => text.push_str(&format!("- [`{}`]({url})\n", failure.attr)),
                        None => text.push_str(&format!("- `{}`\n", failure.attr)),
                    }
                }
            }
            text
        }
    };
    if text.chars().count() > MAX_SUMMARY {
        text = text.chars().take(MAX_SUMMARY - 1).collect();
        text.push('…');
    }
    text
}

/// The id in GitHub's answer to a check run's creation.
fn created_id(body: &[u8]) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Created {
        id: u64,
    }
    serde_json::from_slice::<Created>(body)
        .map(|c| c.id)
        .map_err(|e| e.to_string())
}

/// Creates or updates `report`'s check run as `caller`.
pub fn report(api: &Api, caller: &Caller, report: &StatusReport) -> Result<(), PluginError> {
    let repo_url = api.repo_url(&report.repository)?;
    api::commit_id(&report.rev)?;
    let key = key(report);
    let (status, _) = status(report.state);
    let completed = status == "completed";
    let cached = cache_get(&key)?.and_then(|v| serde_json::from_slice::<Record>(&v).ok());
    let where_ = format!(
        "`{}` on {}@{}",
        report.context, report.repository.full_name, report.rev
    );
    if let Some(record) = cached.filter(|r| !r.completed || completed) {
        let what = format!("update check run {} {where_}", record.id);
        let url = format!("{repo_url}/check-runs/{}", record.id);
        let body = body(report, false).to_string();
        let answer = caller.exchange(|token| {
            Ok(api
                .request("PATCH", url.clone(), token)
                .header("content-type", "application/json")
                .body(body.clone()))
        })?;
        if answer.response.status != 404 {
            caller.check(&what, answer)?;
            remember(
                &key,
                Record {
                    completed,
                    ..record
                },
            );
            return Ok(());
        }
        log::warn!(
            "GitHub no longer knows check run {} {where_}; creating another",
            record.id
        );
    }
    let what = format!("create check run {where_}");
    let url = format!("{repo_url}/check-runs");
    let body = body(report, true).to_string();
    let response = caller.send(&what, |token| {
        Ok(api
            .request("POST", url.clone(), token)
            .header("content-type", "application/json")
            .body(body.clone()))
    })?;
    let id = created_id(&response.body).map_err(|e| {
        PluginError::failed(format!("GitHub's answer to {what} does not parse: {e}"))
    })?;
    remember(&key, Record { id, completed });
    Ok(())
}

fn remember(key: &str, record: Record) {
    let value = serde_json::to_vec(&record).expect("a check-run record serialises");
    cache_set(key, &value, CHECK_RUN_TTL_SECS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::{FailedJob, Repository};

    fn report(state: StatusState) -> StatusReport {
        StatusReport {
            repository: Repository {
                full_name: "Acme/Widgets".into(),
                owner: "Acme".into(),
                name: "Widgets".into(),
                clone_url: "https://github.com/Acme/Widgets.git".into(),
                web_url: None,
                default_branch: "main".into(),
                private: false,
                topics: vec![],
            },
            rev: "A".repeat(40),
            pull_request: None,
            context: "kiln/check/x86_64-linux.hello".into(),
            state,
            description: "1 of 3 failed\nmore".into(),
            target_url: Some("https://kiln.test/runs/1".into()),
            summary: None,
            failures: vec![
                FailedJob {
                    attr: "x86_64-linux.hello".into(),
                    url: Some("https://kiln.test/jobs/5".into()),
                },
                FailedJob {
                    attr: "x86_64-linux.docs".into(),
                    url: None,
                },
            ],
        }
    }

    #[test]
    fn states_map_onto_status_and_conclusion() {
        assert_eq!(status(StatusState::Pending), ("queued", None));
        assert_eq!(status(StatusState::Running), ("in_progress", None));
        assert_eq!(status(StatusState::Success), ("completed", Some("success")));
        assert_eq!(status(StatusState::Error), ("completed", Some("failure")));
        assert_eq!(
            status(StatusState::Cancelled),
            ("completed", Some("cancelled"))
        );
    }

    #[test]
    fn a_created_run_names_the_commit_and_an_update_does_not() {
        let failed = report(StatusState::Failure);
        let create = body(&failed, true);
        assert_eq!(create["name"], "kiln/check/x86_64-linux.hello");
        assert_eq!(create["head_sha"], "A".repeat(40));
        assert_eq!(create["status"], "completed");
        assert_eq!(create["conclusion"], "failure");
        assert_eq!(create["details_url"], "https://kiln.test/runs/1");
        assert_eq!(create["output"]["title"], "1 of 3 failed");
        assert_eq!(
            create["output"]["summary"],
            "1 of 3 failed\nmore\n\nFailed:\n- [`x86_64-linux.hello`](https://kiln.test/jobs/5)\n- `x86_64-linux.docs`\n"
        );
        let update = body(&report(StatusState::Running), false);
        assert!(update.get("head_sha").is_none());
        assert!(update.get("conclusion").is_none());
        assert_eq!(update["status"], "in_progress");

        let mut summarised = report(StatusState::Success);
        summarised.summary = Some("**3 built**".into());
        assert_eq!(body(&summarised, true)["output"]["summary"], "**3 built**");
        summarised.summary = Some("x".repeat(MAX_SUMMARY + 10));
        let long = body(&summarised, true)["output"]["summary"]
            .as_str()
            .unwrap()
            .chars()
            .count();
        assert_eq!(long, MAX_SUMMARY);
    }

    #[test]
    fn keys_are_per_repository_commit_and_context() {
        let a = report(StatusState::Pending);
        let k = key(&a);
        assert!(
            k.starts_with(&format!("check-run/acme/widgets/{}/", "a".repeat(40))),
            "{k}"
        );
        assert_eq!(k.len(), "check-run/acme/widgets/".len() + 40 + 1 + 32);
        let mut b = report(StatusState::Success);
        assert_eq!(key(&b), k, "the state is not part of the key");
        b.context = "kiln/nix-build".into();
        assert_ne!(key(&b), k);
        b.context = "x".repeat(2000);
        assert!(key(&b).len() < 512);
    }

    #[test]
    fn the_created_id_is_read() {
        assert_eq!(created_id(br#"{"id": 4, "name": "x"}"#), Ok(4));
        assert!(created_id(b"{}").is_err());
    }
}
