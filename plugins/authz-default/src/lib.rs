//! `authz-default`: the access policy `kiln serve` applies when the operator
//! names no other authz plugin.
//!
//! - An administrator (`[serve] admins`, or an admin API token) may do
//!   anything.
//! - A member of the organisation that owns a project may read it and
//!   rebuild, cancel and approve its runs and jobs.
//! - The author of a pull request may rebuild or cancel the runs of that
//!   pull request (not approve them: approval is what lets an untrusted
//!   author's code use secrets).
//! - Anyone, signed in or not, may read a public project.
//! - Administering the instance is for administrators only.
//!
//! Every decision carries a sentence naming who, what and why, since the API
//! shows a denial's reason to the person refused. Organisation and login
//! comparisons ignore ASCII case, as GitHub and Gitea do.
//!
//! The plugin asks for no capability: it decides from its arguments alone.

use kiln_plugin_sdk::{
    Action, Authz, Config, Decision, PluginInfo, Resource, ResourceKind, Subject, WorldKind,
    export_authz,
};

struct DefaultPolicy;

impl Authz for DefaultPolicy {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Authz,
            "authz-default",
            env!("CARGO_PKG_VERSION"),
            "Default access policy: administrators do anything, organisation members \
             control their projects, anyone reads public projects",
        )
    }

    fn decide(
        subject: Option<Subject>,
        action: Action,
        resource: Resource,
        _config: Config,
    ) -> Decision {
        decide(subject.as_ref(), action, &resource)
    }
}

fn decide(subject: Option<&Subject>, action: Action, resource: &Resource) -> Decision {
    let target = describe_resource(resource);
    let verb = verb(action);
    if let Some(s) = subject.filter(|s| s.admin) {
        return Decision::allow(format!("{} is an administrator", who(s)));
    }
    if action == Action::Read && resource.public && resource.kind != ResourceKind::Instance {
        return Decision::allow(format!("{target} is public"));
    }
    if action == Action::Administer || resource.kind == ResourceKind::Instance {
        return Decision::deny(match subject {
            Some(s) => format!(
                "{} may not {verb} {target}: only administrators may",
                who(s)
            ),
            None => format!("sign in as an administrator to {verb} {target}"),
        });
    }
    let owner = resource.owner.as_deref().filter(|o| !o.is_empty());
    let Some(subject) = subject else {
        return Decision::deny(match owner {
            Some(owner) => format!("sign in as a member of {owner} to {verb} {target}"),
            None => format!("sign in to {verb} {target}"),
        });
    };
    if let Some(owner) = owner
        && member_of(subject, owner)
    {
        return Decision::allow(format!(
            "{} is a member of {owner}, which owns {}",
            who(subject),
            project(resource)
        ));
    }
    if matches!(action, Action::Rebuild | Action::Cancel)
        && let Some(pr) = &resource.pull_request
        && pr.author_provider == subject.provider
        && pr.author.eq_ignore_ascii_case(&subject.name)
    {
        return Decision::allow(format!(
            "{} opened pull request #{} of {}",
            who(subject),
            pr.number,
            project(resource)
        ));
    }
    match owner {
        Some(owner) => Decision::deny(format!(
            "{} is not a member of {owner}, which owns {}: only its members and \
             administrators may {verb} {target}",
            who(subject),
            project(resource)
        )),
        None => Decision::deny(format!(
            "{} may not {verb} {target}: its owner is unknown, so only administrators may",
            who(subject)
        )),
    }
}

/// The subject as a person reads it: the name, else the id.
fn who(s: &Subject) -> &str {
    if s.name.is_empty() { &s.id } else { &s.name }
}

/// Whether `s` belongs to `owner`: one of its organisations, or the user
/// who owns the project.
fn member_of(s: &Subject, owner: &str) -> bool {
    s.organisations
        .iter()
        .chain(std::iter::once(&s.name))
        .any(|o| o.eq_ignore_ascii_case(owner))
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Rebuild => "rebuild",
        Action::Cancel => "cancel",
        Action::Approve => "approve",
        Action::Administer => "administer",
    }
}

fn project(resource: &Resource) -> &str {
    resource.project.as_deref().unwrap_or("the project")
}

/// `acme/widget`, `run 12 of acme/widget`, `a job of run 12 of acme/widget`.
fn describe_resource(resource: &Resource) -> String {
    let project = project(resource);
    match (resource.kind, resource.run) {
        (ResourceKind::Instance, _) => "this Kiln instance".to_owned(),
        (ResourceKind::Project, _) => project.to_owned(),
        (ResourceKind::Run, Some(run)) => format!("run {run} of {project}"),
        (ResourceKind::Job, Some(run)) => format!("a job of run {run} of {project}"),
        (ResourceKind::Run | ResourceKind::Job, None) => format!("the runs of {project}"),
    }
}

export_authz!(DefaultPolicy);
