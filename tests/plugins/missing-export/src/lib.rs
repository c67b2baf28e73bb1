//! Test plugin `kiln-test-missing-export`: a forge plugin built against a
//! copy of the WIT package (in `wit/`) whose forge world lacks
//! `report-status`, so `kiln plugin check` must name the missing export.
//! Not shipped; it uses wit-bindgen directly because the SDK cannot build an
//! incomplete world.

// The generated forge bindings have functions with many parameters.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({
        world: "forge",
        path: "wit",
        generate_all,
    });
}

use bindings::kiln::plugin::forge_types::{
    GitCredentials, PullRequest, Repository, WebhookDisposition, WebhookError, WebhookOutcome,
    WebhookRequest,
};
use bindings::kiln::plugin::types::{Capabilities, PluginError, PluginInfo, WorldKind};

struct Incomplete;

impl bindings::Guest for Incomplete {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "kiln-test-missing-export".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            world: WorldKind::Forge,
            summary: "A forge plugin without report-status".into(),
            capabilities: Capabilities {
                hosts: vec![],
                secrets: vec![],
                store: vec![],
                directories: vec![],
                kv: false,
            },
            config: vec![],
        }
    }

    fn handle_webhook(
        _request: WebhookRequest,
        _config: Vec<(String, String)>,
    ) -> Result<WebhookOutcome, WebhookError> {
        Ok(WebhookOutcome {
            delivery: None,
            disposition: WebhookDisposition::Ignored("nothing to do".into()),
        })
    }

    fn list_repositories(_config: Vec<(String, String)>) -> Result<Vec<Repository>, PluginError> {
        Ok(vec![])
    }

    fn clone_credentials(
        repository: Repository,
        _config: Vec<(String, String)>,
    ) -> Result<GitCredentials, PluginError> {
        Ok(GitCredentials {
            url: repository.clone_url,
            username: None,
            password: None,
            valid_for_seconds: None,
        })
    }

    fn list_pull_requests(
        _repository: Repository,
        _config: Vec<(String, String)>,
    ) -> Result<Vec<PullRequest>, PluginError> {
        Ok(vec![])
    }
}

bindings::export!(Incomplete with_types_in bindings);
