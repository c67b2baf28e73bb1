//! Change events as the forge plugin returned them, turned into `events`
//! rows: the columns the pipeline selects on, plus the whole event as JSON.

use kiln_runtime::bindings::forge_types::{ChangeEvent, PullRequestAction};
use serde_json::json;

use super::db::NewEvent;

/// The row for one event.
pub fn row(event: &ChangeEvent) -> NewEvent {
    match event {
        ChangeEvent::Push(p) => NewEvent {
            kind: "push",
            project: p.repository.full_name.clone(),
            git_ref: Some(p.git_ref.clone()),
            branch: p.branch.clone(),
            rev: p.rev.clone(),
            pull_request: None,
            payload: json!({
                "kind": "push",
                "repository": super::pipeline::forge::repository_json(&p.repository),
                "git_ref": p.git_ref,
                "branch": p.branch,
                "before": p.before,
                "rev": p.rev,
                "message": p.message,
            })
            .to_string(),
        },
        ChangeEvent::PullRequest(e) => {
            let pr = &e.pull_request;
            NewEvent {
                kind: "pull_request",
                project: e.repository.full_name.clone(),
                git_ref: None,
                branch: Some(pr.head_branch.clone()),
                rev: pr.head_rev.clone(),
                pull_request: i64::try_from(pr.number).ok(),
                payload: json!({
                    "kind": "pull_request",
                    "repository": super::pipeline::forge::repository_json(&e.repository),
                    "message": e.message,
                    "pull_request": {
                        "number": pr.number,
                        "title": pr.title,
                        "author": pr.author,
                        "author_trusted": pr.author_trusted,
                        "from_fork": pr.from_fork,
                        "head_rev": pr.head_rev,
                        "head_branch": pr.head_branch,
                        "head_clone_url": pr.head_clone_url,
                        "base_branch": pr.base_branch,
                        "action": action(pr.action),
                        "web_url": pr.web_url,
                    },
                })
                .to_string(),
            }
        }
    }
}

fn action(a: PullRequestAction) -> &'static str {
    match a {
        PullRequestAction::Opened => "opened",
        PullRequestAction::Updated => "updated",
        PullRequestAction::Reopened => "reopened",
        PullRequestAction::Closed => "closed",
        PullRequestAction::Merged => "merged",
    }
}
