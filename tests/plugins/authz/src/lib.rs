//! Test plugin `kiln-test-authz` (authz world): the default policy.
//! Administrators may do anything; members of the organisation that owns a
//! project may read, rebuild, cancel and approve its runs (administering
//! stays with administrators); the author of a pull request may rebuild or
//! cancel the runs of their own pull request; anyone, signed in or not, may
//! read a public project. Everything else is denied with a reason. Not
//! shipped.

use kiln_plugin_sdk::{
    Action, Authz, Config, Decision, PluginInfo, Resource, Subject, WorldKind, export_authz,
};

struct DefaultPolicy;

fn verb(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Rebuild => "rebuild",
        Action::Cancel => "cancel",
        Action::Approve => "approve",
        Action::Administer => "administer",
    }
}

fn what(resource: &Resource) -> String {
    match (&resource.project, resource.run) {
        (Some(project), Some(run)) => format!("run {run} of {project}"),
        (Some(project), None) => project.clone(),
        (None, _) => "this Kiln".into(),
    }
}

/// Whether `subject` wrote the pull request `resource` built.
fn is_author(subject: &Subject, resource: &Resource) -> bool {
    resource.pull_request.as_ref().is_some_and(|pr| {
        pr.author_provider == subject.provider && pr.author.eq_ignore_ascii_case(&subject.name)
    })
}

impl Authz for DefaultPolicy {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Authz,
            "kiln-test-authz",
            env!("CARGO_PKG_VERSION"),
            "The default policy",
        )
    }

    fn decide(
        subject: Option<Subject>,
        action: Action,
        resource: Resource,
        _config: Config,
    ) -> Decision {
        let (verb, what) = (verb(action), what(&resource));
        if let Some(s) = subject.as_ref().filter(|s| s.admin) {
            return Decision::allow(format!("{} is an administrator", s.name));
        }
        if action == Action::Read && resource.public {
            return Decision::allow(format!("{what} is public"));
        }
        let Some(subject) = subject else {
            return Decision::deny(format!("sign in to {verb} {what}"));
        };
        if let Some(owner) = &resource.owner
            && action != Action::Administer
            && subject.organisations.iter().any(|o| o == owner)
        {
            return Decision::allow(format!("{} is a member of {owner}", subject.name));
        }
        if matches!(action, Action::Rebuild | Action::Cancel) && is_author(&subject, &resource) {
            return Decision::allow(format!(
                "{} wrote pull request #{}",
                subject.name,
                resource.pull_request.as_ref().map_or(0, |pr| pr.number)
            ));
        }
        match &resource.owner {
            Some(owner) if action != Action::Administer => Decision::deny(format!(
                "{} may not {verb} {what}: only members of {owner} and administrators may",
                subject.name
            )),
            _ => Decision::deny(format!(
                "{} may not {verb} {what}: only administrators may",
                subject.name
            )),
        }
    }
}

export_authz!(DefaultPolicy);
