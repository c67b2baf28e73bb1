//! `kiln.toml`, the operator's configuration.
//!
//! This file introduces the plugin sections (`[plugins]`, `[grants.<plugin>]`,
//! `[secrets.<name>]`), the operator's default post-build steps
//! (`[[post_build]]`) and per-project settings (`[projects."<name>"]`);
//! later features add their own sections here. Unknown keys are errors that
//! name the key and line. Secrets are never written in the file itself: each
//! names a file or an environment variable, and `KILN_SECRET_<NAME>`
//! (upper-case, `-` as `_`) overrides any of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_engine::repo_config::PostBuildStep;
use kiln_runtime::context::SecretProvider;
use kiln_runtime::{Grant, Limits};
use serde::Deserialize;

/// The whole `kiln.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KilnConfig {
    /// Plugin directory, compile cache and default budgets.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// What each plugin may do, by plugin name.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
    /// Where secret values come from, by secret name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Post-build steps run for every project (that `projects` covers),
    /// before the repository's own.
    #[serde(default)]
    pub post_build: Vec<DefaultStep>,
    /// Per-project settings, by exact project name.
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectSettings>,
    /// `kiln serve`: where it listens and keeps its state.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Forge instances webhooks arrive for, by instance name (the
    /// `<instance>` of `/webhooks/<instance>`).
    #[serde(default)]
    pub forges: BTreeMap<String, ForgeInstance>,
    /// Sign-in to `kiln serve`'s web UI.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[auth]`: how people sign in to the web UI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Sign-in providers, by name (the `<provider>` of `/login/<provider>`
    /// and the provider of a signed-in subject).
    #[serde(default)]
    pub providers: BTreeMap<String, AuthProvider>,
}

/// What kind of service a sign-in provider is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// GitHub or GitHub Enterprise (OAuth app).
    Github,
    /// Gitea or Forgejo (OAuth2 application).
    Gitea,
    /// Any OpenID Connect provider, found by discovery.
    Oidc,
}

impl ProviderKind {
    /// The name written in `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitea => "gitea",
            ProviderKind::Oidc => "oidc",
        }
    }
}

/// `[auth.providers.<name>]`: one OAuth or OIDC provider. Which URL keys
/// apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthProvider {
    /// `github`, `gitea` or `oidc`.
    pub kind: ProviderKind,
    /// The OAuth client id.
    pub client_id: String,
    /// The `[secrets.<name>]` holding the client secret.
    pub client_secret: String,
    /// github: the REST API (default `https://api.github.com`).
    pub api: Option<String>,
    /// github: the web host that signs in (default `https://github.com`).
    pub web: Option<String>,
    /// gitea: the instance (`https://codeberg.org`).
    pub url: Option<String>,
    /// oidc: the issuer; `{issuer}/.well-known/openid-configuration` names
    /// the endpoints.
    pub issuer: Option<String>,
    /// Scopes asked for (github: `read:org`; gitea: none; oidc: `openid
    /// profile email`).
    pub scopes: Option<Vec<String>>,
}

/// `[serve]`: the service's address and state. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default `127.0.0.1:8010`).
    pub listen: Option<std::net::SocketAddr>,
    /// Directory of the SQLite database (default `$XDG_STATE_HOME/kiln`,
    /// else `~/.local/state/kiln`).
    pub data_dir: Option<PathBuf>,
    /// `sqlite://…` or `postgres://…`; `KILN_DATABASE_URL` overrides it.
    /// Default: `kiln.sqlite3` in the data directory.
    pub database_url: Option<String>,
    /// The service's public URL, for the links in forge statuses (default
    /// `http://<listen address>`).
    pub url: Option<String>,
    /// Runs evaluating and building at once, over all projects (default 2).
    pub max_runs: Option<usize>,
    /// Runs at once of one project (default 1), so that one busy
    /// repository cannot take every slot.
    pub max_runs_per_project: Option<usize>,
    /// Build slots shared by all runs in progress (default: the number of
    /// CPUs): never more builds than this at once, however many runs.
    pub max_jobs: Option<usize>,
    /// Seconds between reconciliations with the forges: discovery by
    /// topic, and branch heads compared with what was built (default 300;
    /// 0 = only at start).
    pub poll_interval_secs: Option<u64>,
    /// Most statuses posted per failed attribute on one commit (default 20);
    /// the rest are counted in the summary status.
    pub max_failure_statuses: Option<usize>,
    /// Systems to build (default: the host's and its remote builders').
    pub systems: Option<Vec<String>>,
    /// Subjects (API token subjects or sign-in logins) with every right.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The `authz` plugin that decides every control action and every read
    /// of a private project, by the name its `describe` returns (default
    /// the built-in `authz-default`).
    pub authz: Option<String>,
}

/// `[forges.<instance>]`: one forge that sends webhooks, served by a forge
/// plugin. The plugin's grant (its webhook secret, its API host) stays under
/// `[grants.<plugin>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ForgeInstance {
    /// The forge plugin, by the name its `describe` returns.
    pub plugin: String,
    /// Repositories built even without the discovery topic (`owner/repo`,
    /// `owner/*` or `*`); a webhook for any other repository is stored and
    /// ignored.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Ask the plugin for the repositories to build (by topic) at start and
    /// at each reconciliation (default true).
    #[serde(default = "yes")]
    pub discover: bool,
    /// This instance's secrets under the names the plugin asks for: plugin
    /// name → `[secrets.<name>]` (`github-webhook-secret = "ghe-webhook"`),
    /// so two instances of one plugin each have their own. Names not listed
    /// are looked up as they are.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Every other key: the plugin's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl ForgeInstance {
    /// The settings as the plugin's config pairs: strings as they are, other
    /// scalars as TOML text, arrays and tables as JSON.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        let text = |v: &toml::Value| match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                serde_json::to_string(v).unwrap_or_default()
            }
            other => other.to_string(),
        };
        self.settings
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect()
    }
}

/// One operator `[[post_build]]` step: the shape of a repository's step,
/// plus the projects it applies to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DefaultStep {
    /// Projects (`owner/repo`, `owner/*` or `*`) this step runs for.
    #[serde(default = "all_projects")]
    pub projects: Vec<String>,
    /// The step, as a repository would write it.
    #[serde(flatten)]
    pub step: PostBuildStep,
}

fn all_projects() -> Vec<String> {
    vec!["*".to_owned()]
}

impl DefaultStep {
    /// Whether this step runs for `project`.
    pub fn covers_project(&self, project: &str) -> bool {
        self.projects.iter().any(|p| project_match(p, project))
    }
}

/// `*` matches everything; `owner/*` matches that owner's projects (the
/// rule `[grants.*] projects` follows).
fn project_match(pattern: &str, project: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => project.starts_with(prefix),
        None => pattern == project,
    }
}

/// Whether some project matches both patterns.
fn patterns_overlap(a: &str, b: &str) -> bool {
    match (a.strip_suffix('*'), b.strip_suffix('*')) {
        (Some(pa), Some(pb)) => pa.starts_with(pb) || pb.starts_with(pa),
        (Some(p), None) => b.starts_with(p),
        (None, Some(p)) => a.starts_with(p),
        (None, None) => a == b,
    }
}

/// `[projects."<name>"]`: the operator's settings for one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// The project's default branch, whose `buildbot-nix.toml` selects
    /// post-build steps (default: detected from the repository).
    pub default_branch: Option<String>,
    /// Run steps that use secrets on pull requests from forks too.
    #[serde(default)]
    pub secrets_on_fork_pull_requests: bool,
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of third-party `.wasm` plugins, watched for changes.
    pub directory: Option<PathBuf>,
    /// Compile cache directory (default: `$XDG_CACHE_HOME/kiln/wasm` or
    /// `~/.cache/kiln/wasm`).
    pub cache_dir: Option<PathBuf>,
    /// Load the first-party plugins shipped in the binary.
    #[serde(default = "yes")]
    pub builtin: bool,
    /// Default budgets of every plugin call.
    #[serde(default)]
    pub limits: Limits,
}

fn yes() -> bool {
    true
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            directory: None,
            cache_dir: None,
            builtin: true,
            limits: Limits::default(),
        }
    }
}

/// Where one secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Read from this file (trailing newline kept as is).
    pub file: Option<PathBuf>,
    /// Read from this environment variable.
    pub env: Option<String>,
}

/// Why `kiln.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Semantically wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl KilnConfig {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and check `text` (read from `path`, for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: KilnConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            let mut message = e.message().trim().to_owned();
            if array_table_lines(text, "post_build").contains(&line) {
                message.push_str(
                    " in this [[post_build]] entry (`plugin` is a string, `warn_only` and `on_cached` are booleans, `branches` and `projects` are lists of strings)",
                );
            }
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                message,
            }
        })?;
        check_default_steps(path, text, &config)?;
        for (name, project) in &config.projects {
            if let Some(b) = &project.default_branch
                && let Err(reason) = kiln_engine::source::check_branch_name("default_branch", b)
            {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    line: table_line(text, "projects", Some(name)).unwrap_or(1),
                    message: format!("[projects.\"{name}\"] {reason}"),
                });
            }
        }
        check_forges(path, text, &config)?;
        check_auth(path, text, &config)?;
        for (name, source) in &config.secrets {
            if source.file.is_some() == source.env.is_some() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!("[secrets.{name}] needs exactly one of `file` or `env`"),
                });
            }
        }
        let base = config.plugins.limits;
        if base.memory_mib == 0 || base.memory_mib > kiln_runtime::engine::MAX_MEMORY_MIB {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "[plugins.limits] memory_mib = {} must be between 1 and {}",
                    base.memory_mib,
                    kiln_runtime::engine::MAX_MEMORY_MIB
                ),
            });
        }
        if base.cpu_ms == 0 || base.timeout_secs == 0 || base.output_kib == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "[plugins.limits] cpu_ms, timeout_secs and output_kib must be above 0"
                    .to_owned(),
            });
        }
        for (plugin, grant) in &config.grants {
            for secret in &grant.secrets {
                if !config.secrets.contains_key(secret)
                    && std::env::var_os(env_override(secret)).is_none()
                {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        message: format!(
                            "[grants.{plugin}] grants secret `{secret}`, which is not defined: add [secrets.{secret}] with `file` or `env`, or set {}",
                            env_override(secret)
                        ),
                    });
                }
            }
            let mem = grant.limits.apply(config.plugins.limits).memory_mib;
            if mem > kiln_runtime::engine::MAX_MEMORY_MIB {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "[grants.{plugin}] memory_mib = {mem} is above the largest allowed, {}",
                        kiln_runtime::engine::MAX_MEMORY_MIB
                    ),
                });
            }
        }
        Ok(config)
    }

    /// The compile cache directory to use: `[plugins] cache_dir`, else
    /// `$XDG_CACHE_HOME/kiln/wasm` or `~/.cache/kiln/wasm`; `None` (compile
    /// every time) when neither is set, rather than a shared temporary
    /// directory another user could prepare.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.plugins.cache_dir {
            return Some(dir.clone());
        }
        xdg_dir("XDG_CACHE_HOME", ".cache").map(|base| base.join("kiln/wasm"))
    }

    /// The secrets provider for these settings.
    pub fn secret_provider(&self) -> ConfiguredSecrets {
        ConfiguredSecrets {
            sources: self.secrets.clone(),
        }
    }

    /// The operator's settings for `project` (defaults when it has none).
    pub fn project(&self, project: &str) -> ProjectSettings {
        self.projects.get(project).cloned().unwrap_or_default()
    }
}

/// Each `[[post_build]]` names a plugin, applies to some project, and no
/// two for the same plugin apply to one project (a repository step for that
/// plugin would not know which to replace). Errors name the entry's line.
fn check_default_steps(path: &Path, text: &str, config: &KilnConfig) -> Result<(), ConfigError> {
    let lines = array_table_lines(text, "post_build");
    let err = |i: usize, message: String| ConfigError::Parse {
        path: path.to_owned(),
        line: lines.get(i).copied().unwrap_or(1),
        message,
    };
    for (i, d) in config.post_build.iter().enumerate() {
        if d.step.plugin.trim().is_empty() {
            return Err(err(
                i,
                "[[post_build]] `plugin` is empty; name an installed post-build plugin".into(),
            ));
        }
        if d.projects.is_empty() {
            return Err(err(
                i,
                format!(
                    "[[post_build]] for plugin `{}` has `projects = []`, so it never runs; list projects or leave `projects` out to run it for every project",
                    d.step.plugin
                ),
            ));
        }
        for (j, earlier) in config.post_build[..i].iter().enumerate() {
            if earlier.step.plugin != d.step.plugin {
                continue;
            }
            let both = d.projects.iter().find_map(|p| {
                earlier
                    .projects
                    .iter()
                    .find(|q| patterns_overlap(p, q))
                    .map(|q| (p, q))
            });
            if let Some((p, q)) = both {
                let first = lines.get(j).copied().unwrap_or(1);
                return Err(err(
                    i,
                    format!(
                        "[[post_build]] runs plugin `{}` again for projects that `{p}` and `{q}` (the entry at line {first}) both cover; give each entry `projects` that do not overlap",
                        d.step.plugin
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Each `[forges.<instance>]` has a name usable in a URL path and names a
/// plugin. Errors name the section's line.
fn check_forges(path: &Path, text: &str, config: &KilnConfig) -> Result<(), ConfigError> {
    for (name, forge) in &config.forges {
        let line = table_line(text, "forges", Some(name)).unwrap_or(1);
        let err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            line,
            message,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(err(format!(
                "[forges.\"{name}\"]: an instance name is used in `/webhooks/<instance>`; use only letters, digits, `-`, `_` and `.`"
            )));
        }
        if forge.plugin.trim().is_empty() {
            return Err(err(format!(
                "[forges.{name}] `plugin` is empty; name an installed forge plugin"
            )));
        }
        for (asked, configured) in &forge.secrets {
            if !config.secrets.contains_key(configured)
                && std::env::var_os(env_override(configured)).is_none()
            {
                return Err(err(format!(
                    "[forges.{name}] secrets: `{asked}` maps to `{configured}`, which is neither a [secrets.{configured}] section nor set as {}",
                    env_override(configured)
                )));
            }
        }
    }
    Ok(())
}

/// Each `[auth.providers.<name>]` has a name usable in a URL path, the
/// URL keys of its kind and a defined client secret. Errors name the line.
fn check_auth(path: &Path, text: &str, config: &KilnConfig) -> Result<(), ConfigError> {
    for (name, provider) in &config.auth.providers {
        let line = text
            .lines()
            .position(|l| {
                let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                [
                    format!("[auth.providers.{name}]"),
                    format!("[auth.providers.\"{name}\"]"),
                ]
                .contains(&l)
            })
            .map_or(1, |i| i + 1);
        let err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            line,
            message: format!("[auth.providers.{name}] {message}"),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(err(
                "is used in `/login/<provider>`; use only letters, digits, `-`, `_` and `.`".into(),
            ));
        }
        let given = [
            ("api", provider.api.is_some()),
            ("web", provider.web.is_some()),
            ("url", provider.url.is_some()),
            ("issuer", provider.issuer.is_some()),
        ];
        let (allowed, required): (&[&str], Option<&str>) = match provider.kind {
            ProviderKind::Github => (&["api", "web"], None),
            ProviderKind::Gitea => (&["url"], Some("url")),
            ProviderKind::Oidc => (&["issuer"], Some("issuer")),
        };
        let kind = provider.kind.as_str();
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(err(format!(
                "`{key}` does not apply to kind `{kind}` (it takes {})",
                allowed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(key) = required
            && !given.iter().any(|(k, set)| *k == key && *set)
        {
            return Err(err(format!("kind `{kind}` needs `{key}`")));
        }
        let secret = &provider.client_secret;
        if !config.secrets.contains_key(secret) && std::env::var_os(env_override(secret)).is_none()
        {
            return Err(err(format!(
                "client_secret names `{secret}`, which is neither a [secrets.{secret}] section nor set as {}",
                env_override(secret)
            )));
        }
    }
    Ok(())
}

/// The 1-based lines of each top-level `[[name]]` header, in order.
fn array_table_lines(text: &str, name: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.trim_start()
                .strip_prefix("[[")
                .and_then(|r| r.trim_start().strip_prefix(name))
                .is_some_and(|r| r.trim_start().starts_with("]]"))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The 1-based line of the `[table."key"]` (or `[table.key]`) header.
fn table_line(text: &str, table: &str, key: Option<&str>) -> Option<usize> {
    text.lines()
        .position(|l| {
            let Some(rest) = l.trim_start().strip_prefix('[') else {
                return false;
            };
            let Some(rest) = rest.trim_start().strip_prefix(table) else {
                return false;
            };
            match key {
                None => rest.trim_start().starts_with(']'),
                Some(k) => {
                    let rest = rest
                        .trim_start()
                        .strip_prefix('.')
                        .unwrap_or("")
                        .trim_start();
                    [format!("\"{k}\""), format!("'{k}'"), k.to_owned()]
                        .iter()
                        .any(|q| {
                            rest.strip_prefix(q.as_str())
                                .is_some_and(|r| r.trim_start().starts_with(']'))
                        })
                }
            }
        })
        .map(|i| i + 1)
}

/// An XDG base directory: `$var` when set and not empty, else
/// `$HOME/home_relative`; `None` when neither is set.
pub fn xdg_dir(var: &str, home_relative: &str) -> Option<PathBuf> {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    std::env::var_os(var).and_then(non_empty).or_else(|| {
        std::env::var_os("HOME")
            .and_then(non_empty)
            .map(|h| h.join(home_relative))
    })
}

/// The environment variable that overrides secret `name`.
pub fn env_override(name: &str) -> String {
    format!(
        "KILN_SECRET_{}",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// Secrets as `kiln.toml` configures them, read at the moment of use.
pub struct ConfiguredSecrets {
    sources: BTreeMap<String, SecretSource>,
}

impl SecretProvider for ConfiguredSecrets {
    fn get(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        if let Some(v) = std::env::var_os(env_override(name)) {
            return Some(Ok(v.into_encoded_bytes()));
        }
        let source = self.sources.get(name)?;
        Some(match (&source.file, &source.env) {
            (Some(file), _) => {
                std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))
            }
            (None, Some(var)) => std::env::var_os(var)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| format!("environment variable {var} is not set")),
            (None, None) => Err("no source configured".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../examples/kiln.toml");
        let c = KilnConfig::parse(Path::new("examples/kiln.toml"), text).unwrap();
        let sign = &c.grants["sign"];
        assert_eq!(sign.secrets, vec!["signing-key".to_owned()]);
        assert!(c.secrets.contains_key("signing-key"));
        assert_eq!(c.post_build.len(), 1);
        assert_eq!(c.post_build[0].step.plugin, "sign");
        assert_eq!(c.post_build[0].projects, ["*"]);
        assert!(c.post_build[0].step.settings.is_empty());
        let p = c.project("example-org/example-repo");
        assert_eq!(p.default_branch.as_deref(), Some("main"));
        assert!(!p.secrets_on_fork_pull_requests);
        assert_eq!(c.serve, ServeConfig::default());
        assert!(c.forges.is_empty());
        assert!(c.auth.providers.is_empty());
    }

    #[test]
    fn auth_providers_parse() {
        let c = KilnConfig::parse(
            Path::new("k.toml"),
            "[secrets.gh]\nenv = \"X\"\n\n[auth.providers.github]\nkind = \"github\"\nclient_id = \"id\"\nclient_secret = \"gh\"\n\n[auth.providers.sso]\nkind = \"oidc\"\nclient_id = \"kiln\"\nclient_secret = \"gh\"\nissuer = \"https://sso.example\"\nscopes = [\"openid\", \"groups\"]\n",
        )
        .unwrap();
        let github = &c.auth.providers["github"];
        assert_eq!(github.kind, ProviderKind::Github);
        assert_eq!((github.api.as_deref(), github.web.as_deref()), (None, None));
        let sso = &c.auth.providers["sso"];
        assert_eq!(sso.kind, ProviderKind::Oidc);
        assert_eq!(sso.issuer.as_deref(), Some("https://sso.example"));
        assert_eq!(
            sso.scopes.as_deref(),
            Some(&["openid".to_owned(), "groups".to_owned()][..])
        );
    }

    #[test]
    fn malformed_auth_providers_name_the_line() {
        let head = "[secrets.s]\nenv = \"X\"\n\n";
        let cases = [
            (
                format!("{head}[auth.providers.gh]\nkind = \"gitlab\"\n"),
                "k.toml:5:",
                "unknown variant `gitlab`",
            ),
            (
                format!("{head}[auth.providers.gh]\nkind = \"github\"\nclient_id = \"i\"\nclient_secret = \"s\"\nissuer = \"x\"\n"),
                "k.toml:4:",
                "`issuer` does not apply to kind `github`",
            ),
            (
                format!("{head}[auth.providers.tea]\nkind = \"gitea\"\nclient_id = \"i\"\nclient_secret = \"s\"\n"),
                "k.toml:4:",
                "kind `gitea` needs `url`",
            ),
            (
                format!("{head}[auth.providers.\"a/b\"]\nkind = \"oidc\"\nclient_id = \"i\"\nclient_secret = \"s\"\nissuer = \"x\"\n"),
                "k.toml:4:",
                "/login/<provider>",
            ),
            (
                "\n[auth.providers.sso]\nkind = \"oidc\"\nclient_id = \"i\"\nclient_secret = \"nowhere-undefined\"\nissuer = \"x\"\n".to_owned(),
                "k.toml:2:",
                "client_secret names `nowhere-undefined`, which is neither",
            ),
            (
                format!("{head}[auth.providers.gh]\nkind = \"github\"\nclient_id = \"i\"\nclient_secret = \"s\"\nsecret = \"x\"\n"),
                "k.toml:8:",
                "unknown field `secret`",
            ),
        ];
        let cases: Vec<(&str, &str, &str)> =
            cases.iter().map(|(t, a, n)| (t.as_str(), *a, *n)).collect();
        assert_errors(&cases);
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = KilnConfig::parse(Path::new("kiln.toml"), "").unwrap();
        assert!(c.plugins.builtin);
        assert_eq!(c.plugins.limits, Limits::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = KilnConfig::parse(
            Path::new("k.toml"),
            "[plugins]\nbuiltin = true\ndirectry = \"/x\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("k.toml:3:"), "{msg}");
        assert!(msg.contains("unknown field `directry`"), "{msg}");
    }

    #[test]
    fn default_steps_and_projects_parse() {
        let c = KilnConfig::parse(
            Path::new("k.toml"),
            "[[post_build]]\nplugin = \"gcroot\"\n\n[[post_build]]\nplugin = \"outputs\"\nprojects = [\"org/*\"]\nwarn_only = true\nname = \"x\"\n\n[projects.\"org/repo\"]\ndefault_branch = \"trunk\"\nsecrets_on_fork_pull_requests = true\n",
        )
        .unwrap();
        assert_eq!(c.post_build.len(), 2);
        assert_eq!(c.post_build[0].projects, ["*"]);
        let outputs = &c.post_build[1];
        assert_eq!(outputs.step.plugin, "outputs");
        assert!(outputs.step.warn_only);
        // `projects` is Kiln's, not a plugin setting.
        assert_eq!(outputs.step.settings.keys().collect::<Vec<_>>(), ["name"]);
        assert!(outputs.covers_project("org/repo"));
        assert!(!outputs.covers_project("other/repo"));
        let p = c.project("org/repo");
        assert_eq!(p.default_branch.as_deref(), Some("trunk"));
        assert!(p.secrets_on_fork_pull_requests);
        assert_eq!(c.project("other/repo"), ProjectSettings::default());
    }

    #[test]
    fn malformed_default_steps_name_the_line() {
        let cases = [
            (
                "[plugins]\nbuiltin = true\n\n[[post_build]]\nplugin = \"sign\"\nwarn_only = \"yes\"\n",
                "k.toml:4:",
                "expected a boolean in this [[post_build]] entry",
            ),
            ("[[post_build]]\nwarn_only = true\n", "k.toml:1:", "plugin"),
            (
                "\n[[post_build]]\nplugin = \"\"\n",
                "k.toml:2:",
                "`plugin` is empty",
            ),
            (
                "[[post_build]]\nplugin = \"sign\"\nprojects = []\n",
                "k.toml:1:",
                "never runs",
            ),
            (
                "[[post_build]]\nplugin = \"sign\"\nprojects = [\"org/*\"]\n\n[[post_build]]\nplugin = \"sign\"\nprojects = [\"org/repo\"]\n",
                "k.toml:5:",
                "the entry at line 1",
            ),
            (
                "[projects.\"org/repo\"]\ndefault_branch = \"main\"\nsecrets_on_forks = true\n",
                "k.toml:3:",
                "unknown field `secrets_on_forks`",
            ),
            (
                "\n[projects.\"org/repo\"]\ndefault_branch = \"-x\"\n",
                "k.toml:2:",
                "not a valid branch name",
            ),
        ];
        assert_errors(&cases);
        // Different projects may each have their own `sign`.
        KilnConfig::parse(
            Path::new("k.toml"),
            "[[post_build]]\nplugin = \"sign\"\nprojects = [\"a/*\"]\n[[post_build]]\nplugin = \"sign\"\nprojects = [\"b/*\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn serve_and_forge_sections_parse() {
        let c = KilnConfig::parse(
            Path::new("k.toml"),
            "[serve]\nlisten = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/kiln\"\n\n[forges.github]\nplugin = \"github\"\napp_id = 42\norg = \"acme\"\ntopics = [\"a\"]\n",
        )
        .unwrap();
        assert_eq!(c.serve.listen, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(
            c.serve.data_dir.as_deref(),
            Some(Path::new("/var/lib/kiln"))
        );
        assert_eq!(c.serve.database_url, None);
        let github = &c.forges["github"];
        assert_eq!(github.plugin, "github");
        assert_eq!(
            github.config_pairs(),
            [
                ("app_id".to_owned(), "42".to_owned()),
                ("org".to_owned(), "acme".to_owned()),
                ("topics".to_owned(), "[\"a\"]".to_owned())
            ]
        );
        assert_eq!(
            KilnConfig::parse(Path::new("k.toml"), "").unwrap().serve,
            ServeConfig::default()
        );
    }

    #[test]
    fn malformed_serve_and_forge_sections_name_the_line() {
        let cases = [
            (
                "[serve]\nlisten = \"127.0.0.1:8010\"\nport = 1\n",
                "k.toml:3:",
                "unknown field `port`",
            ),
            (
                "\n[serve]\nlisten = \"nowhere\"\n",
                "k.toml:3:",
                "invalid socket address",
            ),
            (
                "[forges.github]\nsecret = \"x\"\n",
                "k.toml:1:",
                "missing field `plugin`",
            ),
            (
                "\n[forges.\"a/b\"]\nplugin = \"github\"\n",
                "k.toml:2:",
                "/webhooks/<instance>",
            ),
            (
                "[forges.gh]\nplugin = \" \"\n",
                "k.toml:1:",
                "`plugin` is empty",
            ),
            (
                "[forges.ghe]\nplugin = \"github\"\nsecrets = { github-token = \"ghe-token-undefined\" }\n",
                "k.toml:1:",
                "`github-token` maps to `ghe-token-undefined`, which is neither",
            ),
        ];
        assert_errors(&cases);
    }

    /// Each (text, expected `file:line:` prefix, expected words) fails so.
    fn assert_errors(cases: &[(&str, &str, &str)]) {
        for (text, at, needle) in cases {
            let msg = KilnConfig::parse(Path::new("k.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(at), "{text:?}: {msg}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn project_patterns() {
        assert!(patterns_overlap("*", "a/b"));
        assert!(patterns_overlap("a/*", "a/b"));
        assert!(patterns_overlap("a/*", "a/b*"));
        assert!(!patterns_overlap("a/*", "b/*"));
        assert!(!patterns_overlap("a/b", "a/c"));
        assert!(project_match("a/*", "a/b") && !project_match("a/b", "a/c"));
    }

    #[test]
    fn granted_secret_must_be_defined() {
        let err = KilnConfig::parse(
            Path::new("k.toml"),
            "[grants.sign]\nsecrets = [\"signing-key-undefined\"]\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("[secrets.signing-key-undefined]"),
            "{err}"
        );
        let ok = KilnConfig::parse(
            Path::new("k.toml"),
            "[grants.sign]\nsecrets = [\"k\"]\nstore = [\"path-info\"]\n[secrets.k]\nfile = \"/dev/null\"\n",
        )
        .unwrap();
        assert_eq!(ok.secret_provider().get("k"), Some(Ok(Vec::new())));
        assert_eq!(ok.secret_provider().get("nope"), None);
    }
}
