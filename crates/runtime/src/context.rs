//! What the embedder hands the runtime for one call: who is calling, what is
//! granted, where secrets, the store and the key-value cache come from, and
//! where log lines go.
//!
//! The traits here are the seams to the rest of Kiln (the Nix adapter, the
//! secret configuration, the database later). This module holds no policy:
//! grant checks happen in `crate::host`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::grant::Grant;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Store path metadata, as the `store` interface returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathInfo {
    /// Full store path.
    pub path: String,
    /// `sha256:<nix base-32>`.
    pub nar_hash: String,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// Full store paths, sorted.
    pub references: Vec<String>,
    /// Deriver, when known.
    pub deriver: Option<String>,
    /// Signatures present in the local store.
    pub signatures: Vec<String>,
    /// Content address.
    pub ca: Option<String>,
}

/// The local Nix store, as plugins may see it. Implemented by the host on top
/// of the Nix adapter.
pub trait StoreBackend: Send + Sync {
    /// Metadata of a valid path.
    fn path_info<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<PathInfo, String>>;
    /// The closure of `paths`, sorted.
    fn closure<'a>(&'a self, paths: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// The uncompressed NAR serialisation of `path`.
    fn dump_nar<'a>(&'a self, path: &'a str)
    -> BoxFuture<'a, Result<Box<dyn Read + Send>, String>>;
    /// Add signatures to `path` in the local store.
    fn add_signatures<'a>(
        &'a self,
        path: &'a str,
        signatures: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Register `path` as a GC root called `name`.
    fn add_gc_root<'a>(&'a self, name: &'a str, path: &'a str)
    -> BoxFuture<'a, Result<(), String>>;
}

/// A store that has nothing; for plugins that need no store and for tests.
pub struct NoStore;

impl StoreBackend for NoStore {
    fn path_info<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<PathInfo, String>> {
        Box::pin(async move { Err(format!("no store is attached; cannot read {path}")) })
    }
    fn closure<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Err("no store is attached".to_owned()) })
    }
    fn dump_nar<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Box<dyn Read + Send>, String>> {
        Box::pin(async { Err("no store is attached".to_owned()) })
    }
    fn add_signatures<'a>(
        &'a self,
        _: &'a str,
        _: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("no store is attached".to_owned()) })
    }
    fn add_gc_root<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("no store is attached".to_owned()) })
    }
}

/// Where secret values come from (files, environment, later a vault).
pub trait SecretProvider: Send + Sync {
    /// `None` when no secret of that name is configured.
    fn get(&self, name: &str) -> Option<Result<Vec<u8>, String>>;
}

/// Secrets held in memory (for `kiln plugin run --secret` and tests).
#[derive(Default, Clone)]
pub struct StaticSecrets(pub HashMap<String, Vec<u8>>);

impl SecretProvider for StaticSecrets {
    fn get(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        self.0.get(name).cloned().map(Ok)
    }
}

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Debug detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
    /// A line the plugin wrote to stdout.
    Stdout,
    /// A line the plugin wrote to stderr.
    Stderr,
}

/// One log line from a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Severity or stream.
    pub level: Level,
    /// The text.
    pub message: String,
}

/// Collects a call's log lines, capped in bytes; shared with the embedder.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    dropped: usize,
}

impl LogSink {
    /// A sink keeping at most `cap` bytes of messages.
    pub fn new(cap: usize) -> Self {
        LogSink {
            inner: Arc::new(Mutex::new(LogInner {
                lines: Vec::new(),
                bytes: 0,
                cap,
                dropped: 0,
            })),
        }
    }

    /// Append a line (dropped, and counted, past the cap).
    pub fn push(&self, level: Level, message: impl Into<String>) {
        let message = message.into();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.bytes + message.len() > g.cap {
            g.dropped += message.len();
            return;
        }
        g.bytes += message.len();
        g.lines.push(LogLine { level, message });
    }

    /// The lines so far, with a closing note when some were dropped.
    pub fn lines(&self) -> Vec<LogLine> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = g.lines.clone();
        if g.dropped > 0 {
            lines.push(LogLine {
                level: Level::Warn,
                message: format!(
                    "[kiln] {} bytes of plugin log dropped past the {}-byte cap",
                    g.dropped, g.cap
                ),
            });
        }
        lines
    }
}

/// (plugin, key) → (value, expiry).
type KvMap = HashMap<(String, String), (Vec<u8>, Option<Instant>)>;

/// A per-plugin key-value cache with expiry, shared across calls.
#[derive(Default)]
pub struct KvStore {
    map: Mutex<KvMap>,
}

/// Largest key, bytes.
pub const KV_MAX_KEY: usize = 512;
/// Largest value, bytes.
pub const KV_MAX_VALUE: usize = 256 * 1024;
/// Most keys per plugin.
pub const KV_MAX_KEYS: usize = 4096;
/// Most bytes (keys and values) per plugin.
pub const KV_MAX_BYTES: usize = 16 << 20;

impl KvStore {
    /// The live value of `key` for `plugin`.
    pub fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let k = (plugin.to_owned(), key.to_owned());
        match map.get(&k) {
            Some((_, Some(exp))) if *exp <= Instant::now() => {
                map.remove(&k);
                None
            }
            Some((v, _)) => Some(v.clone()),
            None => None,
        }
    }

    /// Store `value` under `key` for `plugin`, expiring after `ttl`.
    pub fn set(
        &self,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), String> {
        if key.len() > KV_MAX_KEY {
            return Err(format!(
                "key is {} bytes; the limit is {KV_MAX_KEY}",
                key.len()
            ));
        }
        if value.len() > KV_MAX_VALUE {
            return Err(format!(
                "value is {} bytes; the limit is {KV_MAX_VALUE}",
                value.len()
            ));
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        let k = (plugin.to_owned(), key.to_owned());
        let (mut keys, mut bytes) = (0, 0);
        for ((p, key), (v, _)) in map.iter() {
            if p == plugin && *key != k.1 {
                keys += 1;
                bytes += key.len() + v.len();
            }
        }
        if keys >= KV_MAX_KEYS {
            return Err(format!("the plugin already has {KV_MAX_KEYS} keys"));
        }
        if bytes + k.1.len() + value.len() > KV_MAX_BYTES {
            return Err(format!(
                "the plugin's key-value cache would exceed {} MiB",
                KV_MAX_BYTES >> 20
            ));
        }
        map.insert(k, (value, ttl.map(|t| now + t)));
        Ok(())
    }

    /// Remove `key` for `plugin`.
    pub fn delete(&self, plugin: &str, key: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(plugin.to_owned(), key.to_owned()));
    }
}

/// Everything one plugin call may reach, decided by the embedder.
#[derive(Clone)]
pub struct CallContext {
    /// The plugin's name, for messages and the kv namespace.
    pub plugin: String,
    /// The project the call serves (`owner/repo`, or the flake for `kiln run`).
    pub project: String,
    /// The operator's grant for this plugin and project.
    pub grant: Arc<Grant>,
    /// Secret values.
    pub secrets: Arc<dyn SecretProvider>,
    /// The Nix store.
    pub store: Arc<dyn StoreBackend>,
    /// The key-value cache.
    pub kv: Arc<KvStore>,
    /// Log lines of this call.
    pub log: LogSink,
}

impl CallContext {
    /// A context with nothing granted, no secrets and no store.
    pub fn empty(plugin: &str) -> Self {
        CallContext {
            plugin: plugin.to_owned(),
            project: String::new(),
            grant: Arc::new(Grant::default()),
            secrets: Arc::new(StaticSecrets::default()),
            store: Arc::new(NoStore),
            kv: Arc::new(KvStore::default()),
            log: LogSink::new(1 << 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_expires_and_is_namespaced() {
        let kv = KvStore::default();
        kv.set("a", "k", b"1".to_vec(), None).unwrap();
        kv.set("b", "k", b"2".to_vec(), Some(Duration::from_millis(0)))
            .unwrap();
        assert_eq!(kv.get("a", "k"), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k"), None);
        assert!(
            kv.set("a", &"x".repeat(KV_MAX_KEY + 1), vec![], None)
                .is_err()
        );
        kv.delete("a", "k");
        assert_eq!(kv.get("a", "k"), None);
    }

    #[test]
    fn log_sink_caps_and_says_so() {
        let log = LogSink::new(10);
        log.push(Level::Info, "12345");
        log.push(Level::Info, "123456789");
        let lines = log.lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].message.contains("9 bytes of plugin log dropped"),
            "{lines:?}"
        );
    }
}
