//! The plugin host as Kiln's commands use it: a runtime with the compile
//! cache, the registry (built-in plugins plus the plugin directory), the Nix
//! store backend, secrets and the key-value cache — and running a post-build
//! step the way a build does, including recording the signatures it returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_nix::Nix;
use kiln_runtime::bindings::post_build_types::{BuildInfo, PathSignatures, StepOutcome};
use kiln_runtime::context::{KvStore, LogLine, LogSink, NoStore, SecretProvider, StoreBackend};
use kiln_runtime::host::store::is_signature;
use kiln_runtime::registry::Registry;
use kiln_runtime::{CallContext, CallError, CompileCache, Grant, Limits, Plugin, Runtime};

use crate::config::KilnConfig;
use crate::store::NixStore;

/// Everything needed to run plugins.
pub struct PluginHost {
    /// Installed plugins.
    pub registry: Arc<Registry>,
    /// The operator's configuration.
    pub config: KilnConfig,
    /// The store backend.
    pub store: Arc<dyn StoreBackend>,
    /// Secret values.
    pub secrets: Arc<dyn SecretProvider>,
    /// The key-value cache shared by all calls.
    pub kv: Arc<KvStore>,
}

/// The outcome of one post-build step, as a report records it.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// The step's result.
    pub result: Result<StepOutcome, CallError>,
    /// Its log.
    pub log: Vec<LogLine>,
    /// Signatures recorded against output paths (also added to the local
    /// store when possible).
    pub signatures: Vec<PathSignatures>,
    /// A problem adding signatures to the local store, if any.
    pub store_warning: Option<String>,
}

impl PluginHost {
    /// Start: open the compile cache, load built-in plugins and scan the
    /// plugin directory. `nix` may be absent for commands that need no store.
    pub async fn start(config: KilnConfig, nix: Option<Nix>) -> anyhow::Result<Self> {
        let cache = match config.cache_dir().map(|d| CompileCache::open(&d)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "compile cache unavailable; compiling every plugin at start");
                CompileCache::disabled()
            }
            None => CompileCache::disabled(),
        };
        let runtime = Arc::new(
            Runtime::new(cache)
                .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e:#}"))?,
        );
        let registry = Arc::new(Registry::new(runtime, config.plugins.directory.clone()));
        if config.plugins.builtin {
            registry
                .add_builtin(crate::builtin::BUILTIN)
                .await
                .map_err(|e| anyhow::anyhow!("a built-in plugin failed to load: {e:#}"))?;
        }
        registry.refresh().await;
        let store: Arc<dyn StoreBackend> = match nix {
            Some(nix) => Arc::new(NixStore::new(nix, gc_root_dir())),
            None => Arc::new(NoStore),
        };
        let secrets = Arc::new(config.secret_provider());
        Ok(PluginHost {
            registry,
            config,
            store,
            secrets,
            kv: Arc::new(KvStore::default()),
        })
    }

    /// The grant and limits `plugin` gets for `project`: its `[grants.*]`
    /// entry when that covers the project, else nothing.
    pub fn grant_for(&self, plugin: &str, project: &str) -> (Grant, Limits) {
        let base = self.config.plugins.limits;
        match self.config.grants.get(plugin) {
            Some(g) if g.covers_project(project) => (g.clone(), g.limits.apply(base)),
            _ => (Grant::default(), base),
        }
    }

    /// Run a post-build plugin with an explicit grant, then record the
    /// signatures it returned in the local store.
    pub async fn run_post_build(
        &self,
        plugin: &Plugin,
        build: &BuildInfo,
        config: &[(String, String)],
        grant: Grant,
        limits: Limits,
    ) -> StepRun {
        let log = LogSink::new(4 << 20);
        let ctx = CallContext {
            plugin: plugin.info.name.clone(),
            project: build.project.clone(),
            grant: Arc::new(grant),
            secrets: self.secrets.clone(),
            store: self.store.clone(),
            kv: self.kv.clone(),
            log,
        };
        let mut called = self
            .registry
            .runtime()
            .run_post_build(plugin, build, &config.to_vec(), ctx, limits)
            .await;
        if let Ok(outcome) = &called.result {
            let bad = outcome
                .signatures
                .iter()
                .flat_map(|p| &p.signatures)
                .find(|s| !is_signature(s));
            if let Some(bad) = bad {
                called.result = Err(CallError::Failed(format!(
                    "plugin `{}` returned a malformed signature {bad:?}; expected `name:base64`",
                    plugin.info.name
                )));
            }
        }
        let mut store_warning = None;
        let signatures = match &called.result {
            Ok(outcome) => {
                let outputs: Vec<&str> = build.outputs.iter().map(|o| o.path.as_str()).collect();
                let mut recorded = Vec::new();
                for ps in &outcome.signatures {
                    if !outputs.contains(&ps.path.as_str()) {
                        store_warning = Some(format!(
                            "ignored signatures for {}, which is not an output of this job",
                            ps.path
                        ));
                        continue;
                    }
                    if let Err(e) = self.store.add_signatures(&ps.path, &ps.signatures).await {
                        store_warning = Some(format!(
                            "could not add signatures to {} in the local store: {e}",
                            ps.path
                        ));
                    }
                    recorded.push(ps.clone());
                }
                recorded
            }
            Err(_) => Vec::new(),
        };
        StepRun {
            result: called.result,
            log: called.log,
            signatures,
            store_warning,
        }
    }
}

fn gc_root_dir() -> std::path::PathBuf {
    std::env::var_os("KILN_GC_ROOT_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/nix/var/nix/gcroots/kiln".into())
}

/// Parse `KEY=VALUE` pairs (from the command line) into a config list,
/// keeping the last value of a repeated key.
pub fn parse_pairs(pairs: &[String], what: &str) -> Result<Vec<(String, String)>, String> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{what} `{p}` must be KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{what} `{p}` has an empty key"));
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map.into_iter().collect())
}
