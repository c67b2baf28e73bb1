//! Hostile test plugin `kiln-test-alloc`: allocates 16 MiB blocks and writes
//! to every page of each, up to config `mib` (default 4096, all of wasm32's
//! address space), so a memory cap must stop it. Not shipped.

use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build,
};

const BLOCK: usize = 16 << 20;

struct Alloc;

impl PostBuild for Alloc {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-alloc",
            env!("CARGO_PKG_VERSION"),
            "Allocates past any cap",
        )
        .optional_config("mib", "How many MiB to allocate and touch", Some("4096"))
    }

    fn run(_build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let mib: usize = config.get_parsed("mib")?.unwrap_or(4096);
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        // Count blocks in MiB: `mib << 20` overflows a 32-bit usize.
        for _ in 0..mib.div_ceil(BLOCK >> 20) {
            let mut block = vec![0u8; BLOCK];
            for page in block.iter_mut().step_by(4096) {
                *page = 1;
            }
            blocks.push(std::hint::black_box(block));
        }
        Ok(StepOutcome::message(format!(
            "allocated {} MiB",
            blocks.len() * 16
        )))
    }
}

export_post_build!(Alloc);
