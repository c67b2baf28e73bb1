//! The installed plugins: the built-in ones shipped inside the binary and the
//! `.wasm` files in the operator's plugin directory, kept current.
//!
//! [`Registry::refresh`] rescans the directory and loads what is new or
//! changed (by size and modification time), drops what was removed, and
//! records files that failed to load with their error so `kiln plugin list`
//! can show them. [`Registry::watch`] refreshes periodically, so a plugin
//! dropped into the directory is available without a restart. A directory
//! plugin with the same name as a built-in one replaces it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::{Plugin, Runtime};

/// A plugin file that could not be loaded.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

#[derive(Default)]
struct State {
    builtin: BTreeMap<String, Arc<Plugin>>,
    from_dir: BTreeMap<String, Arc<Plugin>>,
    seen: HashMap<PathBuf, (SystemTime, u64, Option<String>)>,
    failures: Vec<LoadFailure>,
}

/// The set of installed plugins.
pub struct Registry {
    runtime: Arc<Runtime>,
    dir: Option<PathBuf>,
    state: RwLock<State>,
}

impl Registry {
    /// A registry over `dir` (if any), with nothing loaded yet.
    pub fn new(runtime: Arc<Runtime>, dir: Option<PathBuf>) -> Self {
        Registry {
            runtime,
            dir,
            state: RwLock::new(State::default()),
        }
    }

    /// The runtime plugins run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Load built-in plugins (name of file, bytes). A built-in plugin that
    /// fails to load is a bug in Kiln and is returned as an error.
    pub async fn add_builtin(&self, files: &[(&str, &[u8])]) -> wasmtime::Result<()> {
        for (file, bytes) in files {
            let plugin = self.runtime.load(&format!("builtin:{file}"), bytes).await?;
            self.write()
                .builtin
                .insert(plugin.info.name.clone(), Arc::new(plugin));
        }
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Rescan the plugin directory. Returns the names loaded or reloaded.
    pub async fn refresh(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, SystemTime, u64)> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .filter_map(|p| {
                    let m = std::fs::metadata(&p).ok()?;
                    m.is_file()
                        .then(|| (p, m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugin directory");
                Vec::new()
            }
        };
        files.sort();
        let mut loaded = Vec::new();
        let present: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
        for (path, mtime, len) in files {
            let unchanged = self
                .read()
                .seen
                .get(&path)
                .is_some_and(|(m, l, _)| *m == mtime && *l == len);
            if unchanged {
                continue;
            }
            let result = match tokio::fs::read(&path).await {
                Ok(bytes) => self
                    .runtime
                    .load(&path.display().to_string(), &bytes)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            };
            let mut st = self.write();
            st.failures.retain(|f| f.path != path);
            if let Some((_, _, Some(old))) = st.seen.remove(&path) {
                st.from_dir.remove(&old);
            }
            match result {
                Ok(plugin)
                    if st.seen.iter().any(|(p, (_, _, n))| {
                        *p != path && n.as_deref() == Some(plugin.info.name.as_str())
                    }) =>
                {
                    let error = format!(
                        "another file in the plugin directory already provides a plugin named `{}`; remove one of them",
                        plugin.info.name
                    );
                    tracing::warn!(path = %path.display(), %error, "plugin refused");
                    st.failures.push(LoadFailure {
                        path: path.clone(),
                        error,
                    });
                    st.seen.insert(path, (mtime, len, None));
                }
                Ok(plugin) => {
                    let name = plugin.info.name.clone();
                    tracing::info!(plugin = %name, path = %path.display(), "plugin loaded");
                    st.from_dir.insert(name.clone(), Arc::new(plugin));
                    st.seen.insert(path, (mtime, len, Some(name.clone())));
                    loaded.push(name);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "plugin failed to load");
                    st.failures.push(LoadFailure {
                        path: path.clone(),
                        error,
                    });
                    st.seen.insert(path, (mtime, len, None));
                }
            }
        }
        let mut st = self.write();
        let gone: Vec<PathBuf> = st
            .seen
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some((_, _, Some(name))) = st.seen.remove(&path) {
                st.from_dir.remove(&name);
            }
            st.failures.retain(|f| f.path != path);
        }
        loaded
    }

    /// Refresh every `interval` until the returned task is aborted.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                me.refresh().await;
            }
        })
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        let st = self.read();
        st.from_dir
            .get(name)
            .or_else(|| st.builtin.get(name))
            .cloned()
    }

    /// Every plugin, directory ones shadowing built-in ones of the same name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        let st = self.read();
        let mut all = st.builtin.clone();
        all.extend(st.from_dir.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.into_values().collect()
    }

    /// Files that failed to load.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.read().failures.clone()
    }

    /// The plugin directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}
