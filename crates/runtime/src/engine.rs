//! The Wasmtime engine Kiln runs every plugin on, and its epoch ticker.
//!
//! One engine per process: pooling allocator (instances are cheap to create
//! and tear down per call), epoch interruption (a background thread advances
//! the epoch every [`TICK`], which bounds both CPU time in WebAssembly and lets
//! a timed-out call be abandoned). This module must not know about worlds or
//! grants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(5);

/// The largest memory any grant may allow one instance, MiB.
pub const MAX_MEMORY_MIB: u64 = 1024;

/// Bytes at the start of each linear memory slot kept resident between
/// instances (reset with memset): a forge plugin's stack and data, so a
/// webhook call takes no page faults. Only slots in use grow resident.
const KEEP_RESIDENT: usize = 1 << 20;

/// Build the engine Kiln uses for all plugins.
pub fn new_engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256);
    pool.total_core_instances(2048);
    pool.total_memories(512);
    pool.total_tables(1024);
    pool.max_core_instances_per_component(64);
    pool.max_memories_per_component(8);
    pool.max_tables_per_component(16);
    pool.max_memory_size((MAX_MEMORY_MIB << 20) as usize);
    pool.total_stacks(256);
    // Instances are created per call, so resetting a slot must be cheap:
    // zero the first pages with memset rather than madvise (which costs a
    // TLB shootdown on every core), decommit the rest in batches, and on
    // Linux 6.7 or later reset only the pages the instance dirtied.
    pool.linear_memory_keep_resident(KEEP_RESIDENT);
    pool.table_keep_resident(64 << 10);
    pool.decommit_batch_size(16);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Advances an engine's epoch every [`TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Start ticking `engine`.
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawn the epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
