//! Test plugin `kiln-test-authz` (authz world): administrators may do
//! anything, everyone else nothing. Not shipped.

use kiln_plugin_sdk::{
    Action, Authz, Config, Decision, PluginInfo, Resource, Subject, WorldKind, export_authz,
};

struct AdminsOnly;

impl Authz for AdminsOnly {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Authz,
            "kiln-test-authz",
            env!("CARGO_PKG_VERSION"),
            "Admins only",
        )
    }

    fn decide(
        subject: Option<Subject>,
        _action: Action,
        _resource: Resource,
        _config: Config,
    ) -> Decision {
        match subject {
            Some(subject) if subject.admin => {
                Decision::allow(format!("{} is an administrator", subject.name))
            }
            Some(subject) => Decision::deny(format!("{} is not an administrator", subject.name)),
            None => Decision::deny("sign in as an administrator"),
        }
    }
}

export_authz!(AdminsOnly);
