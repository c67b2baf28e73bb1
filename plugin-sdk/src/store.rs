//! The narrow Nix store view: path info, closures, NAR streams (compressed
//! by the host) read through [`std::io::Read`], adding signatures and GC
//! roots.
//!
//! This module forwards to the host, which checks the grant on every call,
//! and orders paths so that references come first (for uploads); it must
//! not parse NARs or compress.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use crate::wit::post_build::kiln::plugin::store as host;
use crate::{Compression, HostError, NarSummary, PathInfo};

/// Groups `paths` into levels: every path's references among `paths` are in
/// an earlier level, so writing narinfos level by level never publishes a
/// path whose references are missing. A reference cycle (which Nix does not
/// produce, but a corrupt store could) ends in one last level.
pub fn dependency_levels(paths: &[PathInfo]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.as_str(), i))
        .collect();
    let mut waiting: Vec<BTreeSet<usize>> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.references
                .iter()
                .filter_map(|r| index.get(r.as_str()).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    let mut done = vec![false; paths.len()];
    let mut out = Vec::new();
    let mut left = paths.len();
    while left > 0 {
        let level: Vec<usize> = (0..paths.len())
            .filter(|&i| !done[i] && waiting[i].is_empty())
            .collect();
        let level = if level.is_empty() {
            (0..paths.len()).filter(|&i| !done[i]).collect()
        } else {
            level
        };
        for &i in &level {
            done[i] = true;
        }
        for w in &mut waiting {
            for i in &level {
                w.remove(i);
            }
        }
        left -= level.len();
        out.push(level);
    }
    out
}

/// `infos` with every path after the paths it references among them (in
/// [`dependency_levels`] order), so that an upload cut short never leaves
/// a path whose references are missing.
pub fn dependencies_first(infos: Vec<PathInfo>) -> Vec<PathInfo> {
    let order: Vec<usize> = dependency_levels(&infos).into_iter().flatten().collect();
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: format!("/nix/store/{name}"),
            nar_hash: String::new(),
            nar_size: 0,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn references_come_in_earlier_levels() {
        // d -> c -> {a, b}; b -> a; e stands alone; x is outside the set.
        let paths = vec![
            info("d", &["c", "d"]),
            info("c", &["a", "b", "x"]),
            info("b", &["a"]),
            info("a", &[]),
            info("e", &[]),
        ];
        assert_eq!(
            dependency_levels(&paths),
            vec![vec![3, 4], vec![2], vec![1], vec![0]]
        );
        let cycle = vec![info("p", &["q"]), info("q", &["p"]), info("r", &[])];
        assert_eq!(dependency_levels(&cycle), vec![vec![2], vec![0, 1]]);
    }

    #[test]
    fn dependencies_come_first() {
        let ordered = dependencies_first(vec![info("a", &["b", "a"]), info("b", &[])]);
        let names: Vec<&str> = ordered.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(names, ["/nix/store/b", "/nix/store/a"]);
    }
}
