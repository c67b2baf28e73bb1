//! What the operator grants a plugin, and the one check every host call makes.
//!
//! A plugin asks (in `describe`); only the operator's `kiln.toml` grants. The
//! grant is deny-by-default: an empty grant allows logging and nothing else.
//! [`Grant::check`] maps every [`Capability`] to its permission in one
//! exhaustive `match` with no catch-all arm, so a new capability cannot be
//! added without deciding how it is granted. This module must not perform the
//! operations it guards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Store operations, as named in `kiln.toml` and in `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreOp {
    /// Read path metadata.
    PathInfo,
    /// Stream NARs.
    NarStream,
    /// Add signatures to local store paths.
    AddSignatures,
    /// Register GC roots.
    AddGcRoot,
}

impl StoreOp {
    /// The name used in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::PathInfo => "path-info",
            StoreOp::NarStream => "nar-stream",
            StoreOp::AddSignatures => "add-signatures",
            StoreOp::AddGcRoot => "add-gc-root",
        }
    }
}

/// Resource budgets of one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap per instance, MiB.
    #[serde(default = "Limits::default_memory_mib")]
    pub memory_mib: u64,
    /// Time the plugin may spend executing WebAssembly, milliseconds.
    #[serde(default = "Limits::default_cpu_ms")]
    pub cpu_ms: u64,
    /// Wall-clock limit of one call, including time blocked in host calls
    /// (HTTP, NAR streams), seconds.
    #[serde(default = "Limits::default_timeout_secs")]
    pub timeout_secs: u64,
    /// Cap on stdout and stderr each, KiB. Writing past it fails the step.
    #[serde(default = "Limits::default_output_kib")]
    pub output_kib: u64,
}

impl Limits {
    fn default_memory_mib() -> u64 {
        64
    }
    fn default_cpu_ms() -> u64 {
        10_000
    }
    fn default_timeout_secs() -> u64 {
        60
    }
    fn default_output_kib() -> u64 {
        1024
    }

    /// The wall-clock timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: Self::default_memory_mib(),
            cpu_ms: Self::default_cpu_ms(),
            timeout_secs: Self::default_timeout_secs(),
            output_kib: Self::default_output_kib(),
        }
    }
}

/// Optional per-grant overrides of [`Limits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u64>,
    /// See [`Limits::cpu_ms`].
    pub cpu_ms: Option<u64>,
    /// See [`Limits::timeout_secs`].
    pub timeout_secs: Option<u64>,
    /// See [`Limits::output_kib`].
    pub output_kib: Option<u64>,
}

impl LimitOverrides {
    /// Apply these overrides on top of `base`.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            memory_mib: self.memory_mib.unwrap_or(base.memory_mib),
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            timeout_secs: self.timeout_secs.unwrap_or(base.timeout_secs),
            output_kib: self.output_kib.unwrap_or(base.output_kib),
        }
    }
}

/// The operator's grant for one plugin (`[grants.<plugin>]` in `kiln.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Host names (or `host:port`) the plugin may send HTTP requests to.
    /// `*.example.com` matches subdomains.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Secret names the plugin may read.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Store operations the plugin may use.
    #[serde(default)]
    pub store: Vec<StoreOp>,
    /// Logical directory name → path on disk the plugin may write small files into.
    #[serde(default)]
    pub directories: BTreeMap<String, PathBuf>,
    /// Whether the plugin may use its key-value cache.
    #[serde(default)]
    pub kv: bool,
    /// Projects (`owner/repo`, `owner/*` or `*`) this grant applies to.
    #[serde(default = "Grant::all_projects")]
    pub projects: Vec<String>,
    /// Budgets for this plugin, on top of `[plugins.limits]`
    /// (`limits = { timeout_secs = 600 }`).
    #[serde(default)]
    pub limits: LimitOverrides,
}

impl Grant {
    fn all_projects() -> Vec<String> {
        vec!["*".to_owned()]
    }

    /// Whether this grant applies to `project`.
    pub fn covers_project(&self, project: &str) -> bool {
        self.projects.iter().any(|p| glob_match(p, project))
    }

    /// Check one capability. Every host call goes through here.
    pub fn check(&self, capability: Capability<'_>) -> Result<(), Denied> {
        let allowed = match capability {
            Capability::Log => true,
            Capability::Secret(name) => self.secrets.iter().any(|s| s == name),
            Capability::Http { host, port } => {
                self.hosts.iter().any(|h| host_matches(h, host, port))
            }
            Capability::Store(op) => self.store.contains(&op),
            Capability::Directory(name) => self.directories.contains_key(name),
            Capability::Kv => self.kv,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied(capability.describe()))
        }
    }
}

/// One thing a plugin may try to do through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability<'a> {
    /// Write to the job's log (always allowed).
    Log,
    /// Read a named secret.
    Secret(&'a str),
    /// Send an HTTP request to a host.
    Http {
        /// Host name, without port.
        host: &'a str,
        /// Port, when the URL has an explicit one.
        port: Option<u16>,
    },
    /// Use a store operation.
    Store(StoreOp),
    /// Write into a named directory.
    Directory(&'a str),
    /// Use the key-value cache.
    Kv,
}

impl Capability<'_> {
    fn describe(&self) -> String {
        match self {
            Capability::Log => "logging".to_owned(),
            Capability::Secret(name) => format!("secret `{name}`"),
            Capability::Http {
                host,
                port: Some(port),
            } => format!("HTTP to host `{host}:{port}`"),
            Capability::Http { host, port: None } => format!("HTTP to host `{host}`"),
            Capability::Store(op) => format!("store operation `{}`", op.as_str()),
            Capability::Directory(name) => format!("directory `{name}`"),
            Capability::Kv => "the key-value cache".to_owned(),
        }
    }
}

/// A denied capability; the message names what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not granted to this plugin")]
pub struct Denied(pub String);

fn host_matches(pattern: &str, host: &str, port: Option<u16>) -> bool {
    let (pat_host, pat_port) = match pattern.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            (h, p.parse::<u16>().ok())
        }
        _ => (pattern, None),
    };
    if pat_port.is_some() && port != pat_port {
        return false;
    }
    let host = host.trim_end_matches('.');
    if let Some(suffix) = pat_host.strip_prefix("*.") {
        host.len() > suffix.len() + 1
            && host
                .to_ascii_lowercase()
                .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
    } else {
        pat_host.eq_ignore_ascii_case(host)
    }
}

/// `*` matches everything; `owner/*` matches that owner's projects.
fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_grant_allows_only_logging() {
        let g = Grant::default();
        assert!(g.check(Capability::Log).is_ok());
        assert!(g.check(Capability::Kv).is_err());
        assert!(g.check(Capability::Secret("x")).is_err());
        assert!(g.check(Capability::Store(StoreOp::PathInfo)).is_err());
        assert!(g.check(Capability::Directory("out")).is_err());
        let err = g
            .check(Capability::Http {
                host: "example.com",
                port: None,
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTP to host `example.com` is not granted to this plugin"
        );
    }

    #[test]
    fn hosts_match_exactly_by_wildcard_and_port() {
        let g = Grant {
            hosts: vec![
                "api.github.com".into(),
                "*.cachix.org".into(),
                "127.0.0.1:9000".into(),
            ],
            ..Grant::default()
        };
        let ok = |h, p| g.check(Capability::Http { host: h, port: p }).is_ok();
        assert!(ok("api.github.com", None));
        assert!(ok("API.GitHub.com", Some(443)));
        assert!(!ok("github.com", None));
        assert!(ok("foo.cachix.org", None));
        assert!(!ok("cachix.org", None));
        assert!(!ok("evilcachix.org", None));
        assert!(ok("127.0.0.1", Some(9000)));
        assert!(!ok("127.0.0.1", Some(9001)));
        assert!(!ok("127.0.0.1", None));
    }

    #[test]
    fn projects_glob() {
        let g = Grant {
            projects: vec!["nix-community/*".into(), "me/repo".into()],
            ..Grant::default()
        };
        assert!(g.covers_project("nix-community/buildbot-nix"));
        assert!(g.covers_project("me/repo"));
        assert!(!g.covers_project("me/other"));
        // A grant written in kiln.toml without `projects` covers every
        // project; an empty grant built in code covers none.
        let parsed: Grant = toml::from_str("kv = true").unwrap();
        assert!(parsed.covers_project("anything"));
        assert!(!Grant::default().covers_project("anything"));
    }

    #[test]
    fn toml_grant_with_limits() {
        let g: Grant = toml::from_str(
            r#"
            secrets = ["signing-key"]
            store = ["path-info", "add-signatures"]
            limits = { timeout_secs = 600 }
            "#,
        )
        .unwrap();
        assert_eq!(g.store, vec![StoreOp::PathInfo, StoreOp::AddSignatures]);
        assert_eq!(g.limits.apply(Limits::default()).timeout_secs, 600);
        assert_eq!(g.limits.apply(Limits::default()).memory_mib, 64);
        let err = toml::from_str::<Grant>("secret = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
    }
}
