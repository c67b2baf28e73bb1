//! Reconciliation with the forges, at start and every `poll_interval_secs`:
//! discovery (the plugin's repositories, by topic) refreshes the projects,
//! and each project's default-branch head is compared with what was built.
//! A head nobody built — its webhook was lost while Kiln was down, or the
//! project is poll-only — goes through intake like a push event. Likewise
//! each open pull request the plugin lists (`list-pull-requests`) whose head
//! has no target goes through intake like an `opened` event. A head whose
//! webhook is stored but not yet handled is left to intake.

use std::sync::Arc;

use super::intake::{self, Change, ChangeKind};
use super::{Pipeline, forge, git, store};

/// The reconciliation loop.
pub async fn run(p: Arc<Pipeline>) {
    loop {
        reconcile_once(&p).await;
        if p.settings.poll_interval.is_zero() {
            return;
        }
        tokio::time::sleep(p.settings.poll_interval).await;
    }
}

/// One pass: discovery, then branch heads.
pub async fn reconcile_once(p: &Pipeline) {
    for (instance, settings) in &p.forges {
        if !settings.discover {
            continue;
        }
        match forge::list_repositories(p, instance).await {
            Ok(repos) => {
                for r in &repos {
                    let json = forge::repository_json(r);
                    if let Err(e) =
                        store::upsert_project(&p.db, instance, &json, "discovered").await
                    {
                        tracing::error!(instance, "cannot record project {}: {e}", r.full_name);
                    }
                }
                tracing::info!(instance, "discovery: {} repositories", repos.len());
            }
            Err(e) => tracing::warn!(instance, "discovery failed: {e}"),
        }
    }
    let projects = match store::projects(&p.db).await {
        Ok(projects) => projects,
        Err(e) => {
            tracing::error!("cannot list projects: {e}");
            return;
        }
    };
    for project in projects {
        if !p.forges.contains_key(&project.forge) {
            continue;
        }
        if let Err(e) = head_of_default_branch(p, &project).await {
            tracing::warn!(project = %project.name, "reconciliation: {e}");
        }
        if let Err(e) = open_pull_requests(p, &project).await {
            tracing::warn!(project = %project.name, "reconciliation of pull requests: {e}");
        }
    }
}

async fn head_of_default_branch(p: &Pipeline, project: &store::ProjectRow) -> Result<(), String> {
    let Some(repo) = forge::repository_from_json(&project.repository) else {
        return Err("the repository record is unreadable".into());
    };
    let creds = intake::credentials(p, &project.forge, &repo)
        .await
        .map_err(|e| e.to_string())?;
    let wanted = format!("refs/heads/{}", project.default_branch);
    let heads = git::ls_remote(
        &project.clone_url,
        std::slice::from_ref(&wanted),
        creds.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    for (rev, name) in heads.into_iter().filter(|(_, n)| *n == wanted) {
        let branch = project.default_branch.clone();
        if store::line_has_rev(&p.db, project.id, &branch, &rev)
            .await
            .map_err(|e| e.to_string())?
        {
            continue;
        }
        // A stored webhook for this head is intake's to handle (at start,
        // reconciliation may run before intake reached it).
        if store::event_waits_at(&p.db, &project.forge, &project.name, &rev)
            .await
            .map_err(|e| e.to_string())?
        {
            continue;
        }
        tracing::info!(project = %project.name, %rev, "reconciliation found an unbuilt head of {branch}");
        let change = Change {
            repository: project.repository.clone(),
            message: None,
            kind: ChangeKind::Push {
                git_ref: name,
                branch: Some(branch),
                rev,
            },
        };
        let outcome = intake::handle(p, &project.forge, &change, None)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(project = %project.name, "reconciliation: {outcome:?}");
    }
    Ok(())
}

async fn open_pull_requests(p: &Pipeline, project: &store::ProjectRow) -> Result<(), String> {
    let Some(repo) = forge::repository_from_json(&project.repository) else {
        return Err("the repository record is unreadable".into());
    };
    let pulls = match forge::list_pull_requests(p, &project.forge, &repo).await {
        Ok(pulls) => pulls,
        // The SDK's default for a plugin that cannot list them: webhooks
        // alone bring its pull requests, which is no failure to warn about.
        Err(e) if e.to_string().contains("does not list pull requests") => {
            tracing::debug!(project = %project.name, "{e}");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    for pr in pulls {
        let number = i64::try_from(pr.number).map_err(|e| e.to_string())?;
        let built = store::pull_request_has_rev(&p.db, project.id, number, &pr.head_rev)
            .await
            .map_err(|e| e.to_string())?;
        let waiting = store::event_waits_at(&p.db, &project.forge, &project.name, &pr.head_rev)
            .await
            .map_err(|e| e.to_string())?;
        if built || waiting {
            continue;
        }
        tracing::info!(project = %project.name, number, rev = %pr.head_rev, "reconciliation found an unbuilt head of an open pull request");
        let change = Change {
            repository: project.repository.clone(),
            message: None,
            kind: ChangeKind::PullRequest {
                number,
                action: "opened".into(),
                trusted: pr.author_trusted && !pr.from_fork,
                head_rev: pr.head_rev,
                head_branch: pr.head_branch,
                head_clone_url: pr.head_clone_url,
                base_branch: pr.base_branch,
            },
        };
        let outcome = intake::handle(p, &project.forge, &change, None)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(project = %project.name, number, "reconciliation: {outcome:?}");
    }
    Ok(())
}
