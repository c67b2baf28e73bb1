//! `kiln:plugin/store`: path info, closures, NAR streams the host compresses
//! natively, signatures and GC roots — each checked against the grant.
//!
//! NAR streams are produced on a blocking thread: the store backend's NAR
//! reader is hashed (SHA-256 of the NAR), compressed (zstd or xz, in native
//! code — plugins cannot link C compressors) and hashed again (the file hash),
//! and handed to the guest in bounded chunks, so memory stays flat whatever
//! the path's size.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use kiln_narinfo::NarHash;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use wasmtime::component::Resource;

use crate::bindings::store::{
    Compression, Host, HostNarStream, NarSummary, ValidPathInfo as PathInfo,
};
use crate::bindings::types::{HostError, HostErrorKind};
use crate::grant::{Capability, StoreOp};

use super::{HostState, host_error};

const CHUNK: usize = 256 * 1024;
const MAX_READ: u32 = 4 << 20;
/// NAR streams one call may have open at once.
const MAX_OPEN_NARS: usize = 4;

/// Whether `path` is a top-level store path: `/nix/store/<32 base-32
/// characters>-<name>`, nothing below it, no option-like text.
pub fn is_store_path(path: &str) -> bool {
    const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    let Some(base) = path.strip_prefix("/nix/store/") else {
        return false;
    };
    let (hash, name) = match (base.get(..32), base.get(32..)) {
        (Some(h), Some(n)) => (h, n),
        _ => return false,
    };
    let Some(name) = name.strip_prefix('-') else {
        return false;
    };
    hash.chars().all(|c| NIX32.contains(c))
        && !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c))
}

/// Whether `sig` is a well-formed `name:base64` signature, safe to put on
/// a narinfo `Sig:` line.
pub fn is_signature(sig: &str) -> bool {
    !sig.chars().any(|c| c.is_whitespace() || c.is_control())
        && kiln_narinfo::Signature::parse(sig).is_ok()
}

/// A NAR being streamed to a plugin.
pub struct NarStream {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    pending: Vec<u8>,
    offset: usize,
    done: bool,
    summary: Arc<Mutex<Option<NarSummary>>>,
}

impl NarStream {
    /// Start streaming `reader` (an uncompressed NAR) with `compression`.
    pub fn spawn(reader: Box<dyn Read + Send>, compression: Compression) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let summary = Arc::new(Mutex::new(None));
        let out = summary.clone();
        std::thread::Builder::new()
            .name("kiln-nar".into())
            .spawn(move || {
                if let Err(e) = produce(reader, compression, &tx, &out) {
                    let _ = tx.blocking_send(Err(e));
                }
            })
            .expect("spawn a NAR stream thread");
        NarStream {
            rx,
            pending: Vec::new(),
            offset: 0,
            done: false,
            summary,
        }
    }

    async fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        let max = max.clamp(1, MAX_READ) as usize;
        while self.offset >= self.pending.len() && !self.done {
            match self.rx.recv().await {
                Some(Ok(chunk)) => {
                    self.pending = chunk;
                    self.offset = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
        let end = (self.offset + max).min(self.pending.len());
        let out = self.pending[self.offset..end].to_vec();
        self.offset = end;
        Ok(out)
    }
}

/// Counts and hashes what passes through, then forwards it as chunks.
struct ChunkSink<'a> {
    tx: &'a mpsc::Sender<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    hash: Sha256,
    size: u64,
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hash.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the plugin closed the NAR stream",
                )
            })?;
        }
        Ok(())
    }
}

fn produce(
    mut reader: Box<dyn Read + Send>,
    compression: Compression,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
    summary: &Mutex<Option<NarSummary>>,
) -> Result<(), String> {
    let sink = ChunkSink {
        tx,
        buf: Vec::with_capacity(CHUNK),
        hash: Sha256::new(),
        size: 0,
    };
    let mut nar_hash = Sha256::new();
    let mut nar_size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let io = |e: std::io::Error| format!("NAR stream: {e}");
    let mut pump = |w: &mut dyn Write| -> Result<(), String> {
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            nar_hash.update(&buf[..n]);
            nar_size += n as u64;
            w.write_all(&buf[..n]).map_err(io)?;
        }
    };
    let mut sink = match compression {
        Compression::None => {
            let mut sink = sink;
            pump(&mut sink)?;
            sink
        }
        Compression::Zstd => {
            let mut enc = zstd::Encoder::new(sink, 3).map_err(io)?;
            pump(&mut enc)?;
            enc.finish().map_err(io)?
        }
        Compression::Xz => {
            let mut enc = xz2::write::XzEncoder::new(sink, 6);
            pump(&mut enc)?;
            enc.finish().map_err(io)?
        }
    };
    sink.flush().map_err(io)?;
    let file_digest: [u8; 32] = sink.hash.finalize().into();
    let nar_digest: [u8; 32] = nar_hash.finalize().into();
    *summary.lock().unwrap_or_else(|e| e.into_inner()) = Some(NarSummary {
        file_hash: NarHash::from_digest(file_digest).to_nix(),
        file_size: sink.size,
        nar_hash: NarHash::from_digest(nar_digest).to_nix(),
        nar_size,
    });
    Ok(())
}

impl HostState {
    fn check_store(&self, op: StoreOp) -> Result<(), HostError> {
        self.ctx
            .grant
            .check(Capability::Store(op))
            .map_err(|d| self.denied(d))
    }

    /// A store operation may only name store paths in the closure of the
    /// job's outputs (when the embedder scoped the call to a job).
    async fn in_scope(&mut self, path: &str) -> Result<(), HostError> {
        if !is_store_path(path) {
            return Err(host_error(
                HostErrorKind::Invalid,
                format!("`{path}` is not a store path"),
            ));
        }
        let Some(roots) = &self.store_roots else {
            return Ok(());
        };
        if self.store_closure.is_none() {
            let closure = self.ctx.store.closure(roots).await.map_err(failed)?;
            self.store_closure = Some(closure.into_iter().collect());
        }
        if self
            .store_closure
            .as_ref()
            .is_some_and(|c| c.contains(path))
        {
            Ok(())
        } else {
            Err(host_error(
                HostErrorKind::Denied,
                format!("{path} is not in the closure of this job's outputs"),
            ))
        }
    }

    /// Check the grant, then each path's scope.
    async fn check_paths(&mut self, op: StoreOp, paths: &[&str]) -> Result<(), HostError> {
        self.check_store(op)?;
        for p in paths {
            self.in_scope(p).await?;
        }
        Ok(())
    }
}

fn failed(e: String) -> HostError {
    host_error(HostErrorKind::Failed, e)
}

impl Host for HostState {
    async fn path_info(&mut self, path: String) -> wasmtime::Result<Result<PathInfo, HostError>> {
        if let Err(e) = self.check_paths(StoreOp::PathInfo, &[&path]).await {
            return Ok(Err(e));
        }
        Ok(self
            .ctx
            .store
            .path_info(&path)
            .await
            .map_err(failed)
            .map(|p| PathInfo {
                path: p.path,
                nar_hash: p.nar_hash,
                nar_size: p.nar_size,
                references: p.references,
                deriver: p.deriver,
                signatures: p.signatures,
                ca: p.ca,
            }))
    }

    async fn closure(
        &mut self,
        paths: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        if let Err(e) = self.check_store(StoreOp::PathInfo) {
            return Ok(Err(e));
        }
        Ok(self.ctx.store.closure(&paths).await.map_err(failed))
    }

    async fn open_nar(
        &mut self,
        path: String,
        compression: Compression,
    ) -> wasmtime::Result<Result<Resource<NarStream>, HostError>> {
        if let Err(e) = self.check_paths(StoreOp::NarStream, &[&path]).await {
            return Ok(Err(e));
        }
        if self.open_nars >= MAX_OPEN_NARS {
            return Ok(Err(host_error(
                HostErrorKind::Invalid,
                format!("at most {MAX_OPEN_NARS} NAR streams may be open at once; drop one first"),
            )));
        }
        let reader = match self.ctx.store.dump_nar(&path).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(failed(e))),
        };
        self.open_nars += 1;
        Ok(Ok(self
            .table
            .push(NarStream::spawn(reader, compression))?))
    }

    async fn add_signatures(
        &mut self,
        path: String,
        signatures: Vec<String>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = self.check_paths(StoreOp::AddSignatures, &[&path]).await {
            return Ok(Err(e));
        }
        if let Some(bad) = signatures.iter().find(|s| !is_signature(s)) {
            return Ok(Err(host_error(
                HostErrorKind::Invalid,
                format!("`{bad}` is not a `name:base64` signature"),
            )));
        }
        Ok(self
            .ctx
            .store
            .add_signatures(&path, &signatures)
            .await
            .map_err(failed))
    }

    async fn add_gc_root(
        &mut self,
        name: String,
        path: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = self.check_paths(StoreOp::AddGcRoot, &[&path]).await {
            return Ok(Err(e));
        }
        if path.ends_with(".drv") {
            return Ok(Err(host_error(
                HostErrorKind::Invalid,
                "a GC root must name an output, not a derivation",
            )));
        }
        Ok(self
            .ctx
            .store
            .add_gc_root(&name, &path)
            .await
            .map_err(failed))
    }
}

impl HostNarStream for HostState {
    async fn read(
        &mut self,
        stream: Resource<NarStream>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
        let s = self.table.get_mut(&stream)?;
        Ok(s.read(max).await.map_err(failed))
    }

    async fn summary(
        &mut self,
        stream: Resource<NarStream>,
    ) -> wasmtime::Result<Result<NarSummary, HostError>> {
        let s = self.table.get(&stream)?;
        let summary = s.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(summary.ok_or_else(|| {
            host_error(
                HostErrorKind::Invalid,
                "the NAR stream has not been read to its end",
            )
        }))
    }

    async fn drop(&mut self, stream: Resource<NarStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        self.open_nars = self.open_nars.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_are_strict() {
        assert!(is_store_path(
            "/nix/store/gb1bqndz6zq1m9mdf2ryb5xnkb08pn67-t-1795316904"
        ));
        assert!(is_store_path(
            "/nix/store/x5lsq3ky15vh2cc6a3i778bx2ds9isak-t.drv"
        ));
        for bad in [
            "/etc/passwd",
            "/nix/store/gb1bqndz6zq1m9mdf2ryb5xnkb08pn67-t/../../etc",
            "/nix/store/gb1bqndz6zq1m9mdf2ryb5xnkb08pn67-t/sub",
            "/nix/store/gb1bqndz6zq1m9mdf2ryb5xnkb08pn6e-t",
            "--store=local?root=/tmp/x",
            "/nix/store/short-t",
            "/nix/store/gb1bqndz6zq1m9mdf2ryb5xnkb08pn67-",
        ] {
            assert!(!is_store_path(bad), "{bad}");
        }
    }

    #[test]
    fn signatures_must_be_well_formed() {
        let good = format!("k-1:{}", base64_of_64());
        assert!(is_signature(&good));
        assert!(!is_signature(&format!(
            "k\nStorePath: /x:{}",
            base64_of_64()
        )));
        assert!(!is_signature("k:short"));
    }

    fn base64_of_64() -> String {
        // 64 zero bytes in standard base64.
        "A".repeat(86) + "=="
    }
}
