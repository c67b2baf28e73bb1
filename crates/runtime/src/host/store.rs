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
}

fn failed(e: String) -> HostError {
    host_error(HostErrorKind::Failed, e)
}

impl Host for HostState {
    async fn path_info(&mut self, path: String) -> wasmtime::Result<Result<PathInfo, HostError>> {
        if let Err(e) = self.check_store(StoreOp::PathInfo) {
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
        if let Err(e) = self.check_store(StoreOp::NarStream) {
            return Ok(Err(e));
        }
        let reader = match self.ctx.store.dump_nar(&path).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(failed(e))),
        };
        Ok(Ok(self
            .table
            .push(NarStream::spawn(reader, compression))?))
    }

    async fn add_signatures(
        &mut self,
        path: String,
        signatures: Vec<String>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = self.check_store(StoreOp::AddSignatures) {
            return Ok(Err(e));
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
        if let Err(e) = self.check_store(StoreOp::AddGcRoot) {
            return Ok(Err(e));
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
        Ok(())
    }
}
