//! Test plugin `kiln-test-nar`: opens each output's NAR with the compression
//! named by the `compression` setting (`none`, `xz` or `zstd`), reads it to
//! the end through `io::Read`, and reports the bytes it counted and their
//! SHA-256 next to the host's summary, so the NAR stream can be tested. If
//! `extra` is set, it opens that path too (to test the closure check).
//! Not shipped.

use std::io::Read;

use kiln_narinfo::NarHash;
use kiln_plugin_sdk::{
    BuildInfo, Compression, Config, PluginError, PluginInfo, PostBuild, StepOutcome,
    StoreOperation, WorldKind, export_post_build, store,
};
use sha2::{Digest, Sha256};

struct Nar;

/// Streams `path`'s NAR and describes what was read and what the host says.
fn stream(path: &str, compression: Compression) -> Result<String, PluginError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        PluginError::failed(format!("{what} of {path}: {e}"))
    };
    let mut reader =
        store::open_nar(path, compression).map_err(|e| fail("opening the NAR", &e.describe()))?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 100_000];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail("reading the NAR", &e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        bytes += n as u64;
    }
    let summary = reader
        .summary()
        .map_err(|e| fail("the NAR summary", &e.describe()))?;
    Ok(format!(
        "bytes={bytes} sha={} file-size={} file-hash={} nar-size={} nar-hash={}",
        NarHash::from_digest(hash.finalize().into()).to_nix(),
        summary.file_size,
        summary.file_hash,
        summary.nar_size,
        summary.nar_hash,
    ))
}

impl PostBuild for Nar {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "kiln-test-nar",
            env!("CARGO_PKG_VERSION"),
            "Streams each output's NAR and reports its size and hash",
        )
        .store(StoreOperation::NarStream)
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let compression = match config.get("compression").unwrap_or("none") {
            "none" => Compression::None,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            other => {
                return Err(PluginError::failed(format!(
                    "unknown compression `{other}`; expected none, xz or zstd"
                )));
            }
        };
        let mut lines = Vec::new();
        for output in &build.outputs {
            lines.push(stream(&output.path, compression)?);
        }
        if let Some(extra) = config.get("extra") {
            lines.push(stream(extra, compression)?);
        }
        Ok(StepOutcome::message(lines.join("\n")))
    }
}

export_post_build!(Nar);
