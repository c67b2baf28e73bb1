//! Intake: each stored change event (or one found by reconciliation)
//! becomes a run target. See `pipeline/mod.rs` for the whole flow; this
//! module decides what an event asks for, prepares the commit to evaluate
//! in the project's mirror and records the target in one transaction.
//!
//! An event whose forge or git is unreachable stays `new` and is tried
//! again with backoff; one that asks for nothing buildable is `ignored` with
//! the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::repo_config::{FILE_NAME, RepoConfig};
use serde_json::Value;

use super::git::{self, Credentials, Merged};
use super::store::{self, Attach, EventRow, ProjectRow};
use super::{Pipeline, forge};

/// Branches a merge queue or bors builds before merging.
const MERGE_QUEUE_BRANCHES: [&str; 3] = ["gh-readonly-queue/*", "staging", "trying"];

/// What an event asks for, from its stored JSON.
#[derive(Debug, Clone)]
pub struct Change {
    /// The repository record (JSON as stored).
    pub repository: Value,
    /// The head commit's message when the forge sent it.
    pub message: Option<String>,
    /// Push or pull request.
    pub kind: ChangeKind,
}

/// The two kinds of change.
#[derive(Debug, Clone)]
pub enum ChangeKind {
    /// A ref moved.
    Push {
        /// `refs/heads/<branch>`, `refs/tags/…`
        git_ref: String,
        /// The branch, for a branch ref.
        branch: Option<String>,
        /// The new head (zeros when deleted).
        rev: String,
    },
    /// A pull request changed.
    PullRequest {
        /// Its number.
        number: i64,
        /// `opened`, `updated`, `reopened`, `closed`, `merged`.
        action: String,
        /// May use secrets without approval.
        trusted: bool,
        /// Head commit.
        head_rev: String,
        /// Head branch (in the fork for a fork).
        head_branch: String,
        /// Where the head lives.
        head_clone_url: String,
        /// The branch it merges into.
        base_branch: String,
    },
}

impl Change {
    /// Read an event's payload (as `events.rs` writes it).
    pub fn parse(payload: &Value) -> Result<Change, String> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let need = |v: &Value, k: &str| s(v, k).ok_or_else(|| format!("the event has no `{k}`"));
        let repository = payload
            .get("repository")
            .cloned()
            .ok_or("the event has no repository")?;
        let message = s(payload, "message");
        let kind = match payload.get("kind").and_then(Value::as_str) {
            Some("push") => ChangeKind::Push {
                git_ref: need(payload, "git_ref")?,
                branch: s(payload, "branch"),
                rev: need(payload, "rev")?,
            },
            Some("pull_request") => {
                let pr = payload
                    .get("pull_request")
                    .ok_or("the event has no pull_request")?;
                let flag = |k: &str| pr.get(k).and_then(Value::as_bool).unwrap_or(false);
                ChangeKind::PullRequest {
                    number: pr
                        .get("number")
                        .and_then(Value::as_i64)
                        .ok_or("the pull request has no number")?,
                    action: need(pr, "action")?,
                    trusted: flag("author_trusted") && !flag("from_fork"),
                    head_rev: need(pr, "head_rev")?,
                    head_branch: need(pr, "head_branch")?,
                    head_clone_url: need(pr, "head_clone_url")?,
                    base_branch: need(pr, "base_branch")?,
                }
            }
            other => return Err(format!("unknown event kind {other:?}")),
        };
        Ok(Change {
            repository,
            message,
            kind,
        })
    }
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A target of run `run` (new or shared).
    Started {
        /// The run.
        run: i64,
    },
    /// Nothing to build, and why.
    Ignored(String),
}

/// Why an event could not be handled now (it is tried again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

impl From<sqlx::Error> for Retry {
    fn from(e: sqlx::Error) -> Self {
        Retry(format!("database: {e}"))
    }
}

/// Projects whose events are handled at once (each project's in order),
/// so that one slow fetch does not hold up the others.
const PARALLEL_PROJECTS: usize = 4;

/// The intake loop.
pub async fn run(p: Arc<Pipeline>) {
    let backoff: Arc<Mutex<HashMap<i64, (Instant, u32)>>> = Arc::default();
    loop {
        match store::new_events(&p.db, 256).await {
            Ok(events) => {
                // Each project's due events, oldest first.
                let mut by_project: BTreeMap<(String, String), Vec<EventRow>> = BTreeMap::new();
                {
                    let waiting = backoff.lock().unwrap_or_else(|e| e.into_inner());
                    for ev in events {
                        if waiting
                            .get(&ev.id)
                            .is_some_and(|(t, _)| *t > Instant::now())
                        {
                            continue;
                        }
                        by_project
                            .entry((ev.forge.clone(), ev.project.clone()))
                            .or_default()
                            .push(ev);
                    }
                }
                let mut tasks = tokio::task::JoinSet::new();
                for (_, events) in by_project {
                    while tasks.len() >= PARALLEL_PROJECTS {
                        tasks.join_next().await;
                    }
                    let p = p.clone();
                    let backoff = backoff.clone();
                    tasks.spawn(async move {
                        for ev in events {
                            handle_with_backoff(&p, &ev, &backoff).await;
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
            Err(e) => tracing::error!("cannot read new events: {e}"),
        }
        tokio::select! {
            _ = p.intake_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Handle one event; when it cannot be handled now, note why and wait
/// longer before each new try (up to five minutes).
async fn handle_with_backoff(
    p: &Pipeline,
    ev: &EventRow,
    backoff: &Mutex<HashMap<i64, (Instant, u32)>>,
) {
    match handle_event(p, ev).await {
        Ok(()) => {
            backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ev.id);
        }
        Err(Retry(why)) => {
            let wait = {
                let mut waiting = backoff.lock().unwrap_or_else(|e| e.into_inner());
                let tries = waiting.get(&ev.id).map_or(0, |b| b.1) + 1;
                let wait = Duration::from_secs((5u64 << tries.min(6)).min(300));
                waiting.insert(ev.id, (Instant::now() + wait, tries));
                wait
            };
            tracing::warn!(
                event = ev.id,
                "event not handled yet, retrying in {wait:?}: {why}"
            );
            let _ = store::note_event(&p.db, ev.id, &why).await;
        }
    }
}

async fn handle_event(p: &Pipeline, ev: &EventRow) -> Result<(), Retry> {
    let outcome = match Change::parse(&ev.payload) {
        Ok(change) => handle(p, &ev.forge, &change, Some(ev.id)).await?,
        Err(e) => Outcome::Ignored(format!("unreadable event: {e}")),
    };
    match &outcome {
        Outcome::Started { run } => {
            tracing::info!(event = ev.id, run, project = %ev.project, "event queued a run");
        }
        Outcome::Ignored(why) => {
            tracing::info!(event = ev.id, project = %ev.project, "event ignored: {why}");
            store::ignore_event(&p.db, ev.id, why).await?;
        }
    }
    Ok(())
}

/// Turn one change into a run target; `event` is the stored event, `None`
/// for one reconciliation found.
pub async fn handle(
    p: &Pipeline,
    instance: &str,
    change: &Change,
    event: Option<i64>,
) -> Result<Outcome, Retry> {
    let Some(repo) = forge::repository_from_json(&change.repository) else {
        return Ok(Outcome::Ignored(
            "the event names no usable repository".into(),
        ));
    };
    let Some(project) = resolve_project(p, instance, &change.repository, &repo.full_name).await?
    else {
        return Ok(Outcome::Ignored(format!(
            "project {} is not configured for forge `{instance}` (it lacks the discovery topic and matches no `projects` pattern)",
            repo.full_name
        )));
    };
    // Lines to supersede before anything that may fail.
    let (line, head_rev) = match &change.kind {
        ChangeKind::Push {
            branch: None,
            git_ref,
            ..
        } => {
            return Ok(Outcome::Ignored(format!(
                "{git_ref} is not a branch; only branches and pull requests are built"
            )));
        }
        ChangeKind::Push {
            branch: Some(b),
            rev,
            ..
        } => (store::Line::Branch(b.clone()), rev.clone()),
        ChangeKind::PullRequest {
            number, head_rev, ..
        } => (store::Line::PullRequest(*number), head_rev.clone()),
    };
    let deleted = head_rev.chars().all(|c| c == '0');
    let closed = matches!(&change.kind, ChangeKind::PullRequest { action, .. } if action == "closed" || action == "merged");
    if deleted || closed {
        let stopped = store::supersede_line(&p.db, project.id, &line, None).await?;
        for run in stopped {
            p.stop(run);
        }
        p.runner_wake.notify_one();
        return Ok(Outcome::Ignored(if closed {
            "the pull request was closed; its runs are stopped".into()
        } else {
            "the branch was deleted; its runs are stopped".into()
        }));
    }

    let mirror = git::mirror_path(&p.settings.data_dir, instance, &project.name);
    let creds = credentials(p, instance, &repo).await?;
    git::ensure_mirror(&mirror)
        .await
        .map_err(|e| Retry(e.to_string()))?;
    git::fetch_branches(&mirror, &project.clone_url, creds.as_ref())
        .await
        .map_err(|e| Retry(format!("fetching {}: {e}", project.clone_url)))?;

    let (eval_rev, kind, branch, pull_request, trusted) = match &change.kind {
        ChangeKind::Push { branch, rev, .. } => {
            let branch = branch.clone().unwrap_or_default();
            if let Some(why) = branch_not_built(&mirror, &project, &branch).await {
                return Ok(Outcome::Ignored(why));
            }
            if !git::has_commit(&mirror, rev).await {
                let local = format!("refs/kiln/heads/{branch}");
                git::fetch_rev(
                    &mirror,
                    &project.clone_url,
                    rev,
                    Some(&branch),
                    &local,
                    creds.as_ref(),
                )
                .await
                .map_err(|e| Retry(e.to_string()))?;
            }
            (rev.clone(), "push", Some(branch), None, true)
        }
        ChangeKind::PullRequest {
            number,
            trusted,
            head_rev,
            head_branch,
            head_clone_url,
            base_branch,
            ..
        } => {
            let same_host = host_of(head_clone_url) == host_of(&project.clone_url);
            git::fetch_rev(
                &mirror,
                head_clone_url,
                head_rev,
                Some(head_branch),
                &format!("refs/kiln/pull/{number}/head"),
                if same_host { creds.as_ref() } else { None },
            )
            .await
            .map_err(|e| Retry(e.to_string()))?;
            let Ok(base) = git::resolve(&mirror, &format!("refs/heads/{base_branch}")).await else {
                return Ok(Outcome::Ignored(format!(
                    "the base branch `{base_branch}` of pull request #{number} is not in the repository"
                )));
            };
            let message = format!("Merge pull request #{number} into {base_branch}");
            let merged = git::merge(
                &mirror,
                &base,
                head_rev,
                &message,
                &format!("refs/kiln/pull/{number}/merge"),
            )
            .await
            .map_err(|e| Retry(e.to_string()))?;
            let eval_rev = match merged {
                Merged::Commit(c) => c,
                Merged::Conflict(files) => {
                    let run = store::attach(
                        &p.db,
                        &Attach {
                            project: project.id,
                            event,
                            kind: "pull_request",
                            branch: Some(head_branch.clone()),
                            pull_request: Some(*number),
                            head_rev: head_rev.clone(),
                            eval_rev: head_rev.clone(),
                            tree: format!("conflict:{base}:{head_rev}"),
                            message: None,
                            trusted: *trusted,
                            error: Some(format!(
                                "pull request #{number} does not merge into `{base_branch}` ({}): {files}",
                                short(&base)
                            )),
                        },
                    )
                    .await?;
                    p.finish_attach(&run);
                    return Ok(Outcome::Started { run: run.run });
                }
            };
            (
                eval_rev,
                "pull_request",
                Some(head_branch.clone()),
                Some(*number),
                *trusted,
            )
        }
    };
    let message = match &change.message {
        Some(m) => m.clone(),
        None => git::message_of(&mirror, &head_rev)
            .await
            .unwrap_or_default(),
    };
    if skip_ci(&message) {
        let stopped = store::supersede_line(&p.db, project.id, &line, Some(&head_rev)).await?;
        for run in stopped {
            p.stop(run);
        }
        return Ok(Outcome::Ignored(format!(
            "the head commit {} asks to skip CI",
            short(&head_rev)
        )));
    }
    let tree = git::tree_of(&mirror, &eval_rev)
        .await
        .map_err(|e| Retry(e.to_string()))?;
    let attached = store::attach(
        &p.db,
        &Attach {
            project: project.id,
            event,
            kind,
            branch,
            pull_request,
            head_rev,
            eval_rev,
            tree,
            message: Some(message.lines().next().unwrap_or_default().to_owned()),
            trusted,
            error: None,
        },
    )
    .await?;
    p.finish_attach(&attached);
    Ok(Outcome::Started { run: attached.run })
}

impl Pipeline {
    /// After a target was recorded: stop superseded runs, wake the runner
    /// and the reporter.
    pub(crate) fn finish_attach(&self, attached: &store::Attached) {
        for run in &attached.stopped {
            self.stop(*run);
            self.mark_dirty(*run);
        }
        self.mark_dirty(attached.run);
        self.runner_wake.notify_one();
    }
}

/// The project `name` of `instance`: known (discovered or seen before), or
/// matching the instance's `projects` patterns. Its record is refreshed from
/// the event.
async fn resolve_project(
    p: &Pipeline,
    instance: &str,
    repository: &Value,
    name: &str,
) -> Result<Option<ProjectRow>, sqlx::Error> {
    let known = store::project(&p.db, instance, name).await?;
    let configured = p.forges.get(instance).is_some_and(|f| {
        kiln_runtime::Grant {
            projects: f.projects.clone(),
            ..Default::default()
        }
        .covers_project(name)
            && !f.projects.is_empty()
    });
    if known.is_none() && !configured {
        return Ok(None);
    }
    let source = match &known {
        Some(k) => k.source.clone(),
        None => "configured".to_owned(),
    };
    store::upsert_project(&p.db, instance, repository, &source)
        .await
        .map(Some)
}

/// Clone credentials from the plugin, `None` for a public repository.
pub(crate) async fn credentials(
    p: &Pipeline,
    instance: &str,
    repo: &kiln_runtime::bindings::forge_types::Repository,
) -> Result<Option<Credentials>, Retry> {
    match forge::clone_credentials(p, instance, repo).await {
        Ok(c) if c.password.is_some() => Ok(Some(Credentials {
            username: c.username,
            password: c.password,
        })),
        Ok(_) => Ok(None),
        // A public repository needs none; the fetch will say if it did.
        Err(e) if !repo.private => {
            tracing::debug!(instance, "no clone credentials for {}: {e}", repo.full_name);
            Ok(None)
        }
        Err(e) => Err(Retry(format!(
            "clone credentials for {}: {e}",
            repo.full_name
        ))),
    }
}

/// Why a push to `branch` is not built, or `None` when it is: the default
/// branch, merge-queue branches and the default branch's `build_branches`.
async fn branch_not_built(
    mirror: &std::path::Path,
    project: &ProjectRow,
    branch: &str,
) -> Option<String> {
    if branch == project.default_branch
        || MERGE_QUEUE_BRANCHES
            .iter()
            .any(|pattern| branch_matches(pattern, branch))
    {
        return None;
    }
    let default_ref = format!("refs/heads/{}", project.default_branch);
    let config = match git::show_file(mirror, &default_ref, FILE_NAME).await {
        Ok(Some(text)) => {
            RepoConfig::parse(&text, &format!("{}:{FILE_NAME}", project.default_branch)).ok()
        }
        _ => None,
    };
    let extra = config.map(|c| c.build_branches).unwrap_or_default();
    if extra.iter().any(|pattern| branch_matches(pattern, branch)) {
        return None;
    }
    Some(format!(
        "branch `{branch}` is not built: only the default branch `{}`, merge-queue branches and the default branch's `build_branches` are",
        project.default_branch
    ))
}

/// `pattern` is a branch name, or ends in `*` to match a prefix.
fn branch_matches(pattern: &str, branch: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => branch.starts_with(prefix),
        None => pattern == branch,
    }
}

/// `[skip ci]` or `[ci skip]` anywhere in the message.
pub fn skip_ci(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("[skip ci]") || m.contains("[ci skip]")
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', ':']).next().unwrap_or("")
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_markers_and_branch_patterns() {
        assert!(skip_ci("Fix typo [skip ci]"));
        assert!(skip_ci("docs\n\n[CI SKIP]"));
        assert!(!skip_ci("skip ci"));
        assert!(branch_matches(
            "gh-readonly-queue/*",
            "gh-readonly-queue/main/pr-1-abc"
        ));
        assert!(branch_matches("staging", "staging"));
        assert!(!branch_matches("staging", "staging-2"));
        assert_eq!(host_of("https://x:y@github.com/o/r.git"), "github.com");
        assert_eq!(host_of("git@github.com:o/r.git"), "github.com");
        assert_eq!(host_of("file:///tmp/r.git"), "");
    }

    #[test]
    fn events_parse_as_stored() {
        let push = serde_json::json!({
            "kind": "push", "repository": {"full_name": "o/r"}, "git_ref": "refs/heads/main",
            "branch": "main", "before": "0", "rev": "abc", "message": "m"
        });
        let c = Change::parse(&push).unwrap();
        assert!(matches!(c.kind, ChangeKind::Push { ref rev, .. } if rev == "abc"));
        let pr = serde_json::json!({
            "kind": "pull_request", "repository": {}, "message": null,
            "pull_request": {"number": 7, "action": "opened", "author_trusted": true,
                "from_fork": true, "head_rev": "h", "head_branch": "f",
                "head_clone_url": "u", "base_branch": "main"}
        });
        let c = Change::parse(&pr).unwrap();
        assert!(
            matches!(
                c.kind,
                ChangeKind::PullRequest {
                    trusted: false,
                    number: 7,
                    ..
                }
            ),
            "a fork is never trusted without approval"
        );
        assert!(Change::parse(&serde_json::json!({"kind": "tag"})).is_err());
    }
}
