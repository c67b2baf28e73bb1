//! The narrow Nix store view: path info, closures, NAR streams (compressed
//! by the host) read through [`std::io::Read`], adding signatures and GC
//! roots.
//!
//! This module forwards to the host, which checks the grant on every call;
//! it must not parse NARs or compress.

use std::io;

use crate::wit::post_build::kiln::plugin::store as host;
use crate::{Compression, HostError, NarSummary, PathInfo};

/// Metadata of a valid store path (`nar_hash` is `sha256:<nix base-32>`).
pub fn path_info(path: &str) -> Result<PathInfo, HostError> {
    host::path_info(path)
}

/// The closure of `paths` (including them), sorted.
pub fn closure(paths: &[String]) -> Result<Vec<String>, HostError> {
    host::closure(paths)
}

/// Adds `signatures` (`name:base64`) to `path` in the local store.
pub fn add_signatures(path: &str, signatures: &[String]) -> Result<(), HostError> {
    host::add_signatures(path, signatures)
}

/// Registers `path` as a GC root named `name` under the operator's root
/// directory.
pub fn add_gc_root(name: &str, path: &str) -> Result<(), HostError> {
    host::add_gc_root(name, path)
}

/// Opens `path`'s NAR, compressed by the host with `compression`.
pub fn open_nar(path: &str, compression: Compression) -> Result<NarReader, HostError> {
    Ok(NarReader {
        stream: host::open_nar(path, compression)?,
        finished: false,
    })
}

/// A NAR being read. Read it to the end, then ask for its [`summary`].
///
/// [`summary`]: NarReader::summary
pub struct NarReader {
    stream: host::NarStream,
    finished: bool,
}

impl NarReader {
    /// Reads the next chunk of at most `max` bytes; empty at the end.
    pub fn read_chunk(&mut self, max: u32) -> Result<Vec<u8>, HostError> {
        if self.finished {
            return Ok(Vec::new());
        }
        let chunk = self.stream.read(max.max(1))?;
        self.finished = chunk.is_empty();
        Ok(chunk)
    }

    /// Hashes and sizes of what was streamed; valid once the end was read.
    pub fn summary(&self) -> Result<NarSummary, HostError> {
        self.stream.summary()
    }
}

impl io::Read for NarReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let max = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let chunk = self.read_chunk(max).map_err(io::Error::other)?;
        // The host never returns more than asked; guard anyway.
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        Ok(n)
    }
}
