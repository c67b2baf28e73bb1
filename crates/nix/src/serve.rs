//! A long-lived `nix-store --serve` connection for cheap store queries.
//!
//! Spawning `nix-store --check-validity` costs ~60 ms a call here; the
//! serve protocol answers the same question on an open pipe in about a
//! millisecond, so evaluators can check every job's outputs as it streams
//! out. Owns the protocol's framing (little-endian u64s, strings padded to
//! 8 bytes) and only the read-only `cmdQueryValidPaths` command. It must not
//! write to the store.

use std::collections::HashSet;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{Nix, NixError};

const SERVE_MAGIC_1: u64 = 0x390c_9deb;
const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// Protocol 2.6 (Nix 2.8); newer servers accept older clients.
const CLIENT_VERSION: u64 = 0x206;
const CMD_QUERY_VALID_PATHS: u64 = 1;

/// An open `nix-store --serve` process.
pub struct StoreQuery {
    _child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
}

fn io_err(e: std::io::Error) -> NixError {
    NixError::Failed {
        command: "nix-store --serve".into(),
        status: "protocol error".into(),
        stderr: e.to_string(),
    }
}

impl StoreQuery {
    /// Start `nix-store --serve` and exchange the greeting.
    pub async fn open(nix: &Nix) -> Result<StoreQuery, NixError> {
        let mut cmd = nix.command("nix-store");
        cmd.arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| NixError::Spawn {
            program: "nix-store".into(),
            source,
        })?;
        let mut q = StoreQuery {
            to: BufWriter::new(child.stdin.take().expect("piped")),
            from: BufReader::new(child.stdout.take().expect("piped")),
            _child: child,
        };
        q.to.write_u64_le(SERVE_MAGIC_1).await.map_err(io_err)?;
        q.to.flush().await.map_err(io_err)?;
        let magic = q.from.read_u64_le().await.map_err(io_err)?;
        if magic != SERVE_MAGIC_2 {
            return Err(NixError::parse(
                "nix-store --serve",
                format!("unexpected greeting {magic:#x}"),
            ));
        }
        let _server_version = q.from.read_u64_le().await.map_err(io_err)?;
        q.to.write_u64_le(CLIENT_VERSION).await.map_err(io_err)?;
        q.to.flush().await.map_err(io_err)?;
        Ok(q)
    }

    /// The subset of `paths` that are valid in the store.
    pub async fn valid_paths(&mut self, paths: &[String]) -> Result<HashSet<String>, NixError> {
        let w = &mut self.to;
        w.write_u64_le(CMD_QUERY_VALID_PATHS)
            .await
            .map_err(io_err)?;
        w.write_u64_le(0).await.map_err(io_err)?; // lock
        w.write_u64_le(0).await.map_err(io_err)?; // substitute
        w.write_u64_le(paths.len() as u64).await.map_err(io_err)?;
        for p in paths {
            write_string(w, p).await.map_err(io_err)?;
        }
        w.flush().await.map_err(io_err)?;
        let n = self.from.read_u64_le().await.map_err(io_err)?;
        let mut valid = HashSet::with_capacity(n as usize);
        for _ in 0..n {
            valid.insert(read_string(&mut self.from).await.map_err(io_err)?);
        }
        Ok(valid)
    }
}

async fn write_string(w: &mut BufWriter<ChildStdin>, s: &str) -> std::io::Result<()> {
    w.write_u64_le(s.len() as u64).await?;
    w.write_all(s.as_bytes()).await?;
    let pad = (8 - s.len() % 8) % 8;
    w.write_all(&[0u8; 8][..pad]).await
}

async fn read_string(r: &mut BufReader<ChildStdout>) -> std::io::Result<String> {
    let len = r.read_u64_le().await? as usize;
    if len > 1 << 20 {
        return Err(std::io::Error::other(format!("string of {len} bytes")));
    }
    let mut buf = vec![0u8; len + (8 - len % 8) % 8];
    r.read_exact(&mut buf).await?;
    buf.truncate(len);
    String::from_utf8(buf).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{STORE_DIR, run_output};

    #[tokio::test]
    async fn answers_validity_over_one_connection() {
        let nix = Nix::detect().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln-serve-test");
        std::fs::write(&file, format!("{:?}", std::time::SystemTime::now())).unwrap();
        let mut add = nix.command("nix-store");
        add.arg("--add").arg(&file);
        let path = run_output(&mut add, "nix-store --add").await.unwrap();
        let path = path.trim().to_string();
        // Odd lengths exercise the padding.
        let missing = format!("{STORE_DIR}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-k");
        let mut q = StoreQuery::open(&nix).await.unwrap();
        for _ in 0..3 {
            let valid = q
                .valid_paths(&[missing.clone(), path.clone()])
                .await
                .unwrap();
            assert_eq!(valid, HashSet::from([path.clone()]));
        }
        assert!(q.valid_paths(&[]).await.unwrap().is_empty());
    }
}
