//! Test plugin `kiln-test-forge` (forge world): a small GitHub-like forge.
//! A webhook is authentic when `x-hub-signature-256` is the HMAC-SHA256 of
//! its body under secret `webhook-secret`; `x-github-event` says what it is
//! (`push`, `pull_request`, `ping`, anything else is ignored) and
//! `x-github-delivery` is its delivery id. Bodies are a small subset of
//! GitHub's JSON. Statuses are POSTed as JSON to config `status_url`; one
//! repository is listed; clone credentials carry secret `clone-token`.
//! Config `mode` makes a call misbehave for the host's tests: `trap`
//! panics, `loop` never returns, `retry` asks for a webhook to be retried,
//! `retry-once` asks so only the first time it sees a body.
//! Not shipped.

use kiln_plugin_sdk::{
    ChangeEvent, Config, Forge, GitCredentials, PluginError, PluginInfo, PullRequest,
    PullRequestAction, PullRequestEvent, PushEvent, Repository, StatusReport, StatusState,
    WebhookError, WebhookOutcome, WebhookRequest, WorldKind, export_forge, http, kv, log, secrets,
    webhook,
};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret";
const CLONE_TOKEN: &str = "clone-token";

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

/// Misbehave as config `mode` asks.
fn misbehave(config: &Config) {
    match config.get("mode") {
        Some("trap") => panic!("kiln-test-forge: deliberate panic"),
        Some("loop") => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        _ => {}
    }
}

fn text(v: &Value, pointer: &str) -> Result<String, WebhookError> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| WebhookError::Malformed(format!("`{pointer}` is missing or not a string")))
}

fn parse_repository(v: &Value) -> Result<Repository, WebhookError> {
    Ok(Repository {
        full_name: text(v, "/repository/full_name")?,
        owner: text(v, "/repository/owner/login")?,
        name: text(v, "/repository/name")?,
        clone_url: text(v, "/repository/clone_url")?,
        web_url: text(v, "/repository/html_url").ok(),
        default_branch: text(v, "/repository/default_branch")?,
        private: v
            .pointer("/repository/private")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        topics: Vec::new(),
    })
}

fn parse_push(v: &Value) -> Result<ChangeEvent, WebhookError> {
    let git_ref = text(v, "/ref")?;
    Ok(ChangeEvent::Push(PushEvent {
        repository: parse_repository(v)?,
        branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        git_ref,
        before: text(v, "/before")?,
        rev: text(v, "/after")?,
        message: text(v, "/head_commit/message").ok(),
    }))
}

fn parse_pull_request(v: &Value) -> Result<ChangeEvent, WebhookError> {
    let merged = v
        .pointer("/pull_request/merged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let action = match text(v, "/action")?.as_str() {
        "opened" => PullRequestAction::Opened,
        "synchronize" => PullRequestAction::Updated,
        "reopened" => PullRequestAction::Reopened,
        "closed" if merged => PullRequestAction::Merged,
        "closed" => PullRequestAction::Closed,
        other => {
            return Err(WebhookError::Malformed(format!(
                "unknown pull_request action `{other}`"
            )));
        }
    };
    let number = v
        .pointer("/number")
        .and_then(Value::as_u64)
        .ok_or_else(|| WebhookError::Malformed("`/number` is missing".into()))?;
    let repository = parse_repository(v)?;
    let head_repo = text(v, "/pull_request/head/repo/full_name")?;
    Ok(ChangeEvent::PullRequest(PullRequestEvent {
        pull_request: PullRequest {
            number,
            title: text(v, "/pull_request/title")?,
            author: text(v, "/pull_request/user/login")?,
            author_trusted: text(v, "/pull_request/author_association")
                .is_ok_and(|a| a == "MEMBER" || a == "OWNER"),
            from_fork: head_repo != repository.full_name,
            head_rev: text(v, "/pull_request/head/sha")?,
            head_branch: text(v, "/pull_request/head/ref")?,
            head_clone_url: text(v, "/pull_request/head/repo/clone_url")?,
            base_branch: text(v, "/pull_request/base/ref")?,
            action,
            web_url: text(v, "/pull_request/html_url").ok(),
        },
        repository,
        message: None,
    }))
}

fn state(s: StatusState) -> &'static str {
    match s {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error => "error",
        StatusState::Cancelled => "cancelled",
    }
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
        .secret(CLONE_TOKEN)
        .host("127.0.0.1")
        .kv()
        .optional_config("status_url", "Where statuses are POSTed as JSON", None)
        .optional_config(
            "mode",
            "`trap`, `loop`, `retry` or `retry-once`, to misbehave",
            None,
        )
    }

    fn handle_webhook(
        request: WebhookRequest,
        config: Config,
    ) -> Result<WebhookOutcome, WebhookError> {
        misbehave(&config);
        let signature = request.header("x-hub-signature-256").ok_or_else(|| {
            WebhookError::Unauthenticated("missing x-hub-signature-256 header".into())
        })?;
        let secret = secrets::get(SECRET).map_err(|e| {
            WebhookError::Unauthenticated(format!(
                "cannot read secret `{SECRET}`: {}",
                e.describe()
            ))
        })?;
        if !webhook::verify_hmac_sha256(&secret, &request.body, signature) {
            return Err(WebhookError::Unauthenticated(
                "x-hub-signature-256 does not match the body".into(),
            ));
        }
        let delivery = request.header("x-github-delivery").map(str::to_owned);
        if config.get("mode") == Some("retry") {
            return Err(WebhookError::retry_after(30, "the forge API is down"));
        }
        // `retry-once`: the first call for a body asks to be called again
        // in a second (remembered in kv), later ones handle it.
        if config.get("mode") == Some("retry-once") {
            let key = format!(
                "retried:{}",
                webhook::hmac_sha256_hex(b"key", &request.body)
            );
            if kv::get(&key).ok().flatten().is_none() {
                let _ = kv::set(&key, b"1", None);
                return Err(WebhookError::retry_after(
                    1,
                    "the forge API is down for now",
                ));
            }
        }
        let event = request.header("x-github-event").unwrap_or_default();
        let parse = match event {
            "push" => parse_push,
            "pull_request" => parse_pull_request,
            "ping" => return Ok(WebhookOutcome::ignored(delivery, "ping")),
            other => {
                return Ok(WebhookOutcome::ignored(
                    delivery,
                    format!("event `{other}` needs no build"),
                ));
            }
        };
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| WebhookError::Malformed(format!("body is not JSON: {e}")))?;
        log::info!("{event} delivery {}", delivery.as_deref().unwrap_or("-"));
        Ok(WebhookOutcome::events(delivery, vec![parse(&body)?]))
    }

    fn report_status(report: StatusReport, config: Config) -> Result<(), PluginError> {
        misbehave(&config);
        let url = config.require("status_url")?;
        let body = json!({
            "repository": report.repository.full_name,
            "sha": report.rev,
            "pull_request": report.pull_request,
            "context": report.context,
            "state": state(report.state),
            "description": report.description,
            "target_url": report.target_url,
            "summary": report.summary,
            "failures": report.failures.iter().map(|f| json!({"attr": f.attr, "url": f.url})).collect::<Vec<_>>(),
        });
        let response = http::send(
            http::Request::new("POST", url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )?;
        match response.status {
            200..=299 => Ok(()),
            429 => Err(PluginError::retry_after(
                response
                    .header("retry-after")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(60),
                "rate-limited by the forge",
            )),
            status => Err(PluginError::failed(format!(
                "the forge answered {status} to a status"
            ))),
        }
    }

    fn list_repositories(config: Config) -> Result<Vec<Repository>, PluginError> {
        misbehave(&config);
        Ok(vec![repository()])
    }

    fn clone_credentials(
        repository: Repository,
        config: Config,
    ) -> Result<GitCredentials, PluginError> {
        misbehave(&config);
        let token = secrets::get_string(CLONE_TOKEN)?;
        Ok(GitCredentials::token(
            repository.clone_url,
            "x-access-token",
            token,
            Some(3600),
        ))
    }
}

export_forge!(TestForge);
