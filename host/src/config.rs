//! `kiln.toml`, the operator's configuration.
//!
//! This file introduces the plugin sections (`[plugins]`, `[grants.<plugin>]`,
//! `[secrets.<name>]`); later features add their own sections here. Unknown
//! keys are errors that name the key and line. Secrets are never written in
//! the file itself: each names a file or an environment variable, and
//! `KILN_SECRET_<NAME>` (upper-case, `-` as `_`) overrides any of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                message: e.message().to_owned(),
            }
        })?;
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
        let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
        std::env::var_os("XDG_CACHE_HOME")
            .and_then(non_empty)
            .or_else(|| {
                std::env::var_os("HOME")
                    .and_then(non_empty)
                    .map(|h| h.join(".cache"))
            })
            .map(|base| base.join("kiln/wasm"))
    }

    /// The secrets provider for these settings.
    pub fn secret_provider(&self) -> ConfiguredSecrets {
        ConfiguredSecrets {
            sources: self.secrets.clone(),
        }
    }
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
