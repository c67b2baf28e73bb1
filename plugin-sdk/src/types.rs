//! The plain Rust types plugin authors see, re-exported from the generated
//! bindings, plus constructors and conversions that make them pleasant:
//! a `PluginInfo` builder, `PluginError::failed`/`retry_after`, `Display`
//! for host errors, and constructors for webhook outcomes, git credentials
//! and decisions.
//!
//! This module adds convenience only; it must not change what crosses the
//! boundary (the WIT in `../wit` is the contract).

use std::fmt;

pub use crate::wit::authz::kiln::plugin::authz_types::{
    Action, Decision, PullRequestRef, Resource, ResourceKind, Subject,
};
pub use crate::wit::forge::kiln::plugin::forge_types::{
    ChangeEvent, FailedJob, GitCredentials, Header, PullRequest, PullRequestAction,
    PullRequestEvent, PushEvent, Repository, StatusReport, StatusState, WebhookDisposition,
    WebhookError, WebhookOutcome, WebhookRequest,
};
pub use crate::wit::post_build::kiln::plugin::post_build_types::{
    BuildInfo, Output, PathSignatures, StepOutcome,
};
pub use crate::wit::post_build::kiln::plugin::store::{
    Compression, NarSummary, ValidPathInfo as PathInfo,
};
pub use crate::wit::post_build::kiln::plugin::types::{
    Capabilities, ConfigKey, HostError, HostErrorKind, PluginError, PluginInfo, Retry,
    StoreOperation, WorldKind,
};

impl PluginInfo {
    /// Describes a plugin of `world` that asks for nothing yet; add requests
    /// with the builder methods below.
    pub fn new(
        world: WorldKind,
        name: impl Into<String>,
        version: impl Into<String>,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            world,
            summary: summary.into(),
            capabilities: Capabilities {
                hosts: Vec::new(),
                secrets: Vec::new(),
                store: Vec::new(),
                directories: Vec::new(),
                kv: false,
            },
            config: Vec::new(),
        }
    }

    /// Asks for outgoing HTTP to `host` (optionally `host:port`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.capabilities.hosts.push(host.into());
        self
    }

    /// Asks to read the secret `name`.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.capabilities.secrets.push(name.into());
        self
    }

    /// Asks for a store operation.
    pub fn store(mut self, operation: StoreOperation) -> Self {
        self.capabilities.store.push(operation);
        self
    }

    /// Asks to write files in the directory the operator grants as `name`.
    pub fn directory(mut self, name: impl Into<String>) -> Self {
        self.capabilities.directories.push(name.into());
        self
    }

    /// Asks for the per-plugin key-value cache.
    pub fn kv(mut self) -> Self {
        self.capabilities.kv = true;
        self
    }

    /// Documents a configuration key that must be set.
    pub fn required_config(mut self, name: impl Into<String>, doc: impl Into<String>) -> Self {
        self.config.push(ConfigKey {
            name: name.into(),
            doc: doc.into(),
            required: true,
            default: None,
        });
        self
    }

    /// Documents an optional configuration key and its default, if any.
    pub fn optional_config(
        mut self,
        name: impl Into<String>,
        doc: impl Into<String>,
        default: Option<&str>,
    ) -> Self {
        self.config.push(ConfigKey {
            name: name.into(),
            doc: doc.into(),
            required: false,
            default: default.map(str::to_owned),
        });
        self
    }
}

impl PluginError {
    /// A permanent failure with a message for the user.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }

    /// A transient failure: ask the host to requeue the work after `seconds`.
    pub fn retry_after(seconds: u32, reason: impl fmt::Display) -> Self {
        Self::RetryAfter(Retry {
            seconds,
            reason: reason.to_string(),
        })
    }
}

impl From<HostError> for PluginError {
    fn from(error: HostError) -> Self {
        Self::Failed(error.describe())
    }
}

impl fmt::Display for HostErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Denied => "denied",
            Self::NotFound => "not found",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        })
    }
}

impl HostError {
    /// `<kind>: <message>`, e.g. `denied: secret `x` is not granted`. (The
    /// generated `Display` shows the record's debug form.)
    pub fn describe(&self) -> String {
        format!("{}: {}", self.kind, self.message)
    }
}

impl StepOutcome {
    /// An outcome with a report line and no signatures.
    pub fn message(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            signatures: Vec::new(),
        }
    }
}

impl Decision {
    /// Allow, with the reason shown to the user.
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            allow: true,
            reason: reason.into(),
        }
    }

    /// Deny, with the reason shown to the user.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reason: reason.into(),
        }
    }
}

impl WebhookRequest {
    /// The value of the first header called `name`, compared ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

impl WebhookOutcome {
    /// Changes to build, from the delivery with id `delivery` (if the forge
    /// sends one).
    pub fn events(delivery: Option<String>, events: Vec<ChangeEvent>) -> Self {
        Self {
            delivery,
            disposition: WebhookDisposition::Events(events),
        }
    }

    /// A verified delivery with nothing to build, and why.
    pub fn ignored(delivery: Option<String>, note: impl Into<String>) -> Self {
        Self {
            delivery,
            disposition: WebhookDisposition::Ignored(note.into()),
        }
    }
}

impl WebhookError {
    /// Authentic and well-formed, but not handled now: ask the host to keep
    /// the request and call again after `seconds`.
    pub fn retry_after(seconds: u32, reason: impl fmt::Display) -> Self {
        Self::RetryAfter(Retry {
            seconds,
            reason: reason.to_string(),
        })
    }
}

impl GitCredentials {
    /// Fetch `url` without credentials (a public repository).
    pub fn anonymous(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            valid_for_seconds: None,
        }
    }

    /// Fetch `url` with basic auth `username`/`token`, reusable for
    /// `valid_for_seconds` (`None`: until a fetch fails).
    pub fn token(
        url: impl Into<String>,
        username: impl Into<String>,
        token: impl Into<String>,
        valid_for_seconds: Option<u32>,
    ) -> Self {
        Self {
            url: url.into(),
            username: Some(username.into()),
            password: Some(token.into()),
            valid_for_seconds,
        }
    }
}
