//! Typed access to a plugin's configuration: the `list<tuple<string,
//! string>>` the host passes, where scalars are their TOML text (strings
//! unquoted) and arrays and tables are JSON.
//!
//! This module reads and explains; it must not invent defaults (callers
//! pass theirs) or print values (they may be sensitive).

use std::fmt;
use std::str::FromStr;

use crate::PluginError;

/// A plugin's configuration for one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

/// A configuration key that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A required key is not set.
    Missing {
        /// The key.
        key: String,
    },
    /// A key is set to text that does not parse as the expected type.
    Invalid {
        /// The key.
        key: String,
        /// What was expected, e.g. `a boolean (true or false)`.
        expected: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { key } => write!(
                f,
                "configuration key `{key}` is required but not set; set it in the plugin's section"
            ),
            Self::Invalid { key, expected } => {
                write!(f, "configuration key `{key}` must be {expected}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for PluginError {
    fn from(error: ConfigError) -> Self {
        PluginError::Failed(error.to_string())
    }
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl Config {
    /// The text of `key`, if set (the last value wins when set twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The text of `key`, or an error naming it when it is not set.
    pub fn require(&self, key: &str) -> Result<&str, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
        })
    }

    /// `key` as a boolean (`true`/`false`), or `default` when not set.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ConfigError::Invalid {
                key: key.to_owned(),
                expected: "a boolean (true or false)".to_owned(),
            }),
        }
    }

    /// `key` parsed with [`FromStr`] (numbers, durations in seconds…), or
    /// `None` when not set.
    pub fn get_parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        self.get(key)
            .map(|text| {
                text.trim().parse().map_err(|_| ConfigError::Invalid {
                    key: key.to_owned(),
                    expected: format!("a {}", short_type_name::<T>()),
                })
            })
            .transpose()
    }

    /// `key` as a list of strings (the host passes a TOML array as JSON),
    /// empty when not set.
    pub fn get_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        self.get(key).map_or(Ok(Vec::new()), |text| {
            serde_json::from_str(text).map_err(|_| ConfigError::Invalid {
                key: key.to_owned(),
                expected: "a list of strings, such as [\"main\", \"release\"]".to_owned(),
            })
        })
    }

    /// Every key/value pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        [
            ("bucket", "cache"),
            ("public", "true"),
            ("ttl", "60"),
            ("ttl", "90"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn get_and_require() {
        let config = config();
        assert_eq!(config.get("bucket"), Some("cache"));
        assert_eq!(config.get("nope"), None);
        assert_eq!(config.require("bucket"), Ok("cache"));
        let error = config.require("region").unwrap_err();
        assert_eq!(
            error.to_string(),
            "configuration key `region` is required but not set; set it in the plugin's section"
        );
        assert_eq!(
            PluginError::from(error),
            PluginError::Failed(
                "configuration key `region` is required but not set; set it in the plugin's section"
                    .into()
            )
        );
    }

    #[test]
    fn booleans() {
        let config = config();
        assert_eq!(config.get_bool("public", false), Ok(true));
        assert_eq!(config.get_bool("absent", true), Ok(true));
        assert_eq!(
            config.get_bool("bucket", false).unwrap_err().to_string(),
            "configuration key `bucket` must be a boolean (true or false)"
        );
    }

    #[test]
    fn parsed_values_and_last_one_wins() {
        let config = config();
        assert_eq!(config.get_parsed::<u32>("ttl"), Ok(Some(90)));
        assert_eq!(config.get_parsed::<u32>("absent"), Ok(None));
        assert_eq!(
            config.get_parsed::<u32>("bucket").unwrap_err().to_string(),
            "configuration key `bucket` must be a u32"
        );
        assert_eq!(config.iter().count(), 4);
    }
}
