//! Test plugin `kiln-test-forge` (forge world): a webhook is authentic when
//! its `x-test-token` header equals secret `webhook-secret`; its body is the
//! pushed revision, returned as one push to `main` of `test/repo`. Reports
//! are logged; one repository is listed. Not shipped.

use kiln_plugin_sdk::{
    ChangeEvent, Config, Forge, PluginError, PluginInfo, PushEvent, Repository, StatusReport,
    WebhookError, WebhookOutcome, WebhookRequest, WorldKind, export_forge, log, secrets,
};

const SECRET: &str = "webhook-secret";

struct TestForge;

fn repository() -> Repository {
    Repository {
        full_name: "test/repo".into(),
        owner: "test".into(),
        name: "repo".into(),
        clone_url: "https://forge.invalid/test/repo.git".into(),
        web_url: None,
        default_branch: "main".into(),
        private: false,
        topics: vec!["build-with-kiln".into()],
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Forge for TestForge {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::Forge,
            "kiln-test-forge",
            env!("CARGO_PKG_VERSION"),
            "Test forge",
        )
        .secret(SECRET)
    }

    fn handle_webhook(
        request: WebhookRequest,
        _config: Config,
    ) -> Result<WebhookOutcome, WebhookError> {
        let token = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-test-token"))
            .ok_or_else(|| WebhookError::Unauthenticated("missing x-test-token header".into()))?;
        let secret = secrets::get(SECRET).map_err(|e| {
            WebhookError::Unauthenticated(format!(
                "cannot read secret `{SECRET}`: {}",
                e.describe()
            ))
        })?;
        if !same(token.value.as_bytes(), &secret) {
            return Err(WebhookError::Unauthenticated("wrong x-test-token".into()));
        }
        let rev = std::str::from_utf8(&request.body)
            .map_err(|_| WebhookError::Malformed("body is not UTF-8".into()))?
            .trim();
        Ok(WebhookOutcome::Events(vec![ChangeEvent::Push(PushEvent {
            repository: repository(),
            branch: "main".into(),
            rev: rev.into(),
            message: None,
        })]))
    }

    fn report_status(report: StatusReport, _config: Config) -> Result<(), PluginError> {
        log::info!("{} {}: {:?}", report.rev, report.context, report.state);
        Ok(())
    }

    fn list_repositories(_config: Config) -> Result<Vec<Repository>, PluginError> {
        Ok(vec![repository()])
    }
}

export_forge!(TestForge);
