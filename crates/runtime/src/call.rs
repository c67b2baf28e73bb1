//! Calling a plugin: a fresh `Store` per call, instantiated from the
//! plugin's `InstancePre`, under the call's limits, and every way it can go
//! wrong turned into a [`CallError`] that says what happened in words.
//!
//! Limits: linear memory through a `ResourceLimiter`; CPU through the epoch
//! deadline callback, which counts the ticks spent executing WebAssembly and
//! yields to the executor on each (so the wall-clock timeout can fire); wall
//! clock through `tokio::time::timeout` around instantiation and the call,
//! which also covers time blocked in host calls such as HTTP or NAR streams.

use wasmtime::{Store, UpdateDeadline};

use crate::bindings::post_build_types::{BuildInfo, StepOutcome};
use crate::bindings::types::{Config, PluginError};
use crate::context::{CallContext, Level, LogLine};
use crate::engine::TICK;
use crate::grant::Limits;
use crate::host::HostState;
use crate::plugin::{Plugin, WorldPre};
use crate::{Runtime, bindings};

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin reported a failure.
    #[error("{0}")]
    Failed(String),
    /// The plugin asked to be retried later.
    #[error("asked to be retried in {seconds} s: {reason}")]
    RetryAfter {
        /// Delay.
        seconds: u32,
        /// Why.
        reason: String,
    },
    /// The plugin trapped (a panic, an illegal operation).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap and what the plugin last printed.
        message: String,
    },
    /// The CPU budget ran out.
    #[error("plugin `{plugin}` used up its CPU budget of {cpu_ms} ms and was stopped")]
    CpuBudget {
        /// Plugin name.
        plugin: String,
        /// The budget.
        cpu_ms: u64,
    },
    /// The wall-clock timeout passed.
    #[error("plugin `{plugin}` did not finish within its wall-clock timeout of {seconds} s")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The timeout.
        seconds: u64,
    },
    /// The memory cap was hit.
    #[error(
        "plugin `{plugin}` exceeded its memory cap of {cap_mib} MiB (it asked for {wanted_mib} MiB)"
    )]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        cap_mib: u64,
        /// What it tried to grow to.
        wanted_mib: u64,
    },
    /// stdout or stderr went past the cap.
    #[error(
        "plugin `{plugin}` wrote more than its {cap_kib} KiB output cap to stdout or stderr and was stopped"
    )]
    OutputCap {
        /// Plugin name.
        plugin: String,
        /// The cap.
        cap_kib: u64,
    },
    /// The plugin is not of the world the caller needs.
    #[error("plugin `{plugin}` is a {actual} plugin, not a {wanted} plugin")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// Its world.
        actual: &'static str,
        /// The world needed.
        wanted: &'static str,
    },
    /// Instantiation or the host failed.
    #[error("plugin `{plugin}` could not run: {message}")]
    Host {
        /// Plugin name.
        plugin: String,
        /// Detail.
        message: String,
    },
}

/// What a call returns besides its value: the log lines.
#[derive(Debug, Clone)]
pub struct Called<T> {
    /// The result.
    pub result: Result<T, CallError>,
    /// Log lines, stdout and stderr of the call.
    pub log: Vec<LogLine>,
}

/// The epoch callback's error when the CPU budget is used up.
#[derive(Debug, thiserror::Error)]
#[error("CPU budget exhausted")]
struct CpuBudgetExhausted;

impl Runtime {
    pub(crate) fn new_store(&self, ctx: CallContext, limits: &Limits) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(ctx, limits));
        store.limiter(|s| &mut s.limiter);
        let budget = (limits.cpu_ms / TICK.as_millis() as u64).max(1);
        let mut used = 0u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            used += 1;
            if used > budget {
                Err(CpuBudgetExhausted.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Run a post-build plugin on one built job.
    pub async fn run_post_build(
        &self,
        plugin: &Plugin,
        build: &BuildInfo,
        config: &Config,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<StepOutcome> {
        let WorldPre::PostBuild(pre) = &plugin.pre else {
            return self.wrong_world(plugin, "post-build", &ctx);
        };
        let mut store = self.new_store(ctx, &limits);
        // Store operations may only name paths in the job's closure.
        store.data_mut().store_roots = Some(build.outputs.iter().map(|o| o.path.clone()).collect());
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let instance = pre.instantiate_async(&mut store).await?;
            let run = instance.call_run(&mut store, build, config).await?;
            Ok(run.map_err(plugin_error))
        })
        .await;
        conclude(&plugin.info.name, store, &limits, outcome)
    }

    /// Call `describe` on a freshly loaded component.
    pub(crate) async fn describe_pre(
        &self,
        name: &str,
        pre: &WorldPre,
        ctx: CallContext,
        limits: Limits,
    ) -> Called<bindings::types::PluginInfo> {
        let mut store = self.new_store(ctx, &limits);
        let outcome = tokio::time::timeout(limits.timeout(), async {
            let info = match pre {
                WorldPre::PostBuild(pre) => {
                    pre.instantiate_async(&mut store)
                        .await?
                        .call_describe(&mut store)
                        .await
                }
                WorldPre::Forge(pre) => {
                    pre.instantiate_async(&mut store)
                        .await?
                        .call_describe(&mut store)
                        .await
                }
                WorldPre::Authz(pre) => {
                    pre.instantiate_async(&mut store)
                        .await?
                        .call_describe(&mut store)
                        .await
                }
            }?;
            Ok(Ok(info))
        })
        .await;
        conclude(name, store, &limits, outcome)
    }

    pub(crate) fn wrong_world<T>(
        &self,
        plugin: &Plugin,
        wanted: &'static str,
        ctx: &CallContext,
    ) -> Called<T> {
        Called {
            result: Err(CallError::WrongWorld {
                plugin: plugin.info.name.clone(),
                actual: plugin.info.world.as_str(),
                wanted,
            }),
            log: ctx.log.lines(),
        }
    }
}

pub(crate) fn plugin_error(e: PluginError) -> CallError {
    match e {
        PluginError::Failed(msg) => CallError::Failed(msg),
        PluginError::RetryAfter(r) => CallError::RetryAfter {
            seconds: r.seconds,
            reason: r.reason,
        },
    }
}

/// What a call wrapper's `tokio::time::timeout` around instantiation and the
/// call yields: the wall clock ran out, Wasmtime failed (a trap, a limit,
/// the host), or the plugin returned, successfully or with its own error.
pub(crate) type Outcome<T> =
    Result<wasmtime::Result<Result<T, CallError>>, tokio::time::error::Elapsed>;

/// Turn a call's outcome into a [`Called`]: classify traps and limits, then
/// [`finish`].
pub(crate) fn conclude<T>(
    plugin: &str,
    store: Store<HostState>,
    limits: &Limits,
    outcome: Outcome<T>,
) -> Called<T> {
    let result = match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(classify(plugin, e, &store, limits)),
        Err(_) => Err(CallError::Timeout {
            plugin: plugin.to_owned(),
            seconds: limits.timeout_secs,
        }),
    };
    finish(store, result)
}

/// Move stdout/stderr into the log and append denials to a failure.
pub(crate) fn finish<T>(store: Store<HostState>, result: Result<T, CallError>) -> Called<T> {
    let state = store.into_data();
    let capped = state.stdout.contents().len() >= state.output_cap
        || state.stderr.contents().len() >= state.output_cap;
    let result = match result {
        // A plugin that hit the output cap fails even if it ignored the
        // closed stream and returned normally.
        Ok(_) | Err(CallError::Failed(_)) | Err(CallError::Trap { .. }) if capped => {
            Err(CallError::OutputCap {
                plugin: state.ctx.plugin.clone(),
                cap_kib: state.output_cap_kib,
            })
        }
        other => other,
    };
    for (level, pipe) in [
        (Level::Stdout, &state.stdout),
        (Level::Stderr, &state.stderr),
    ] {
        let text = pipe.contents();
        for line in String::from_utf8_lossy(&text).lines() {
            state.ctx.log.push(level, line.to_owned());
        }
    }
    let denials = state
        .denials
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let result = match result {
        Err(CallError::Failed(msg)) if !denials.is_empty() => Err(CallError::Failed(format!(
            "{msg} (denied by Kiln: {})",
            denials.join("; ")
        ))),
        other => other,
    };
    Called {
        result,
        log: state.ctx.log.lines(),
    }
}

/// Turn a trap or host error into words.
pub(crate) fn classify(
    plugin: &str,
    err: wasmtime::Error,
    store: &Store<HostState>,
    limits: &Limits,
) -> CallError {
    let plugin = plugin.to_owned();
    if err.downcast_ref::<CpuBudgetExhausted>().is_some()
        || err.chain().any(|c| c.is::<CpuBudgetExhausted>())
    {
        return CallError::CpuBudget {
            plugin,
            cpu_ms: limits.cpu_ms,
        };
    }
    let state = store.data();
    if let Some(wanted) = state.limiter.memory_exceeded {
        return CallError::Memory {
            plugin,
            cap_mib: limits.memory_mib,
            wanted_mib: (wanted >> 20) as u64,
        };
    }
    let cap = limits.output_kib.saturating_mul(1024) as usize;
    if state.stdout.contents().len() >= cap || state.stderr.contents().len() >= cap {
        return CallError::OutputCap {
            plugin,
            cap_kib: limits.output_kib,
        };
    }
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        let stderr = state.stderr.contents();
        let text = String::from_utf8_lossy(&stderr);
        let said: Vec<&str> = text
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let message = if said.is_empty() {
            trap.to_string()
        } else {
            format!("{trap}; it printed: {}", said.join(" | "))
        };
        return CallError::Trap { plugin, message };
    }
    CallError::Host {
        plugin,
        message: format!("{err:#}"),
    }
}

impl Runtime {
    /// The baseline for the per-call benchmark: `calls` calls of `run` on
    /// one live instance (no store or instantiation per call). Returns the
    /// time of each call.
    pub async fn time_calls_on_live_instance(
        &self,
        plugin: &Plugin,
        build: &BuildInfo,
        config: &Config,
        ctx: CallContext,
        calls: usize,
    ) -> Result<Vec<std::time::Duration>, CallError> {
        let WorldPre::PostBuild(pre) = &plugin.pre else {
            return Err(CallError::WrongWorld {
                plugin: plugin.info.name.clone(),
                actual: plugin.info.world.as_str(),
                wanted: "post-build",
            });
        };
        let limits = Limits {
            cpu_ms: u64::MAX / 2,
            ..Limits::default()
        };
        let mut store = self.new_store(ctx, &limits);
        let name = &plugin.info.name;
        let host = |e: wasmtime::Error| CallError::Host {
            plugin: name.clone(),
            message: format!("{e:#}"),
        };
        let instance = pre.instantiate_async(&mut store).await.map_err(host)?;
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = std::time::Instant::now();
            instance
                .call_run(&mut store, build, config)
                .await
                .map_err(host)?
                .map_err(plugin_error)?;
            times.push(start.elapsed());
        }
        Ok(times)
    }
}
