//! The compile cache: a component is compiled once per content and engine.
//!
//! Entries live in a directory only Kiln's user can read (0700) and are named
//! by the component's SHA-256 and a hash of
//! `Engine::precompile_compatibility_hash`, so a changed component or an
//! upgraded Kiln misses. Each entry carries a checksum of its payload; a
//! corrupt, truncated or stale entry is recompiled and rewritten, never
//! trusted. This module must not instantiate anything.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"KILNCWC2";

/// Where a component came from on a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a valid precompiled entry.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry existed but was corrupt or stale: compiled and replaced.
    Replaced,
    /// No cache directory in use: compiled.
    Disabled,
}

/// The on-disk compile cache.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// A cache in `dir`, created 0700. A directory that is not owned by the
    /// current user or is readable by others is refused (the cache would then
    /// be a way to inject native code).
    pub fn open(dir: &Path) -> wasmtime::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        wasmtime::ensure!(
            meta.uid() == uid,
            "compile cache {} is owned by uid {}, not by Kiln's uid {uid}",
            dir.display(),
            meta.uid()
        );
        if meta.mode() & 0o077 != 0 {
            // Someone else may have been able to plant entries: trust none.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            for entry in fs::read_dir(dir)?.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(CompileCache {
            dir: Some(dir.to_owned()),
        })
    }

    /// No caching: every load compiles.
    pub fn disabled() -> Self {
        CompileCache { dir: None }
    }

    /// The directory, when caching.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cache file for `bytes` on `engine`.
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let content = hex::encode(Sha256::digest(bytes));
        Some(dir.join(format!("{content}-{:016x}.cwasm", compat_hash(engine))))
    }

    /// Load `bytes` as a component, from the cache when a valid entry exists.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(engine, bytes) else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Disabled));
        };
        let existed = match fs::read(&path) {
            Ok(data) => {
                let key = key_of(engine, bytes);
                if let Some(payload) = verify(&data, &key) {
                    // SAFETY: the entry is in a 0700 directory owned by us,
                    // was written by `store` below from `Component::serialize`
                    // on an engine with the same compatibility hash, and its
                    // checksum matches; Wasmtime additionally validates the
                    // header and engine settings and errors on mismatch.
                    if let Ok(c) = unsafe { Component::deserialize(engine, payload) } {
                        return Ok((c, CacheOutcome::Hit));
                    }
                }
                tracing::warn!(path = %path.display(), "discarding a corrupt or stale compile-cache entry");
                true
            }
            Err(_) => false,
        };
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store(&path, &key_of(engine, bytes), &component.serialize()?) {
            tracing::warn!(path = %path.display(), error = %e, "could not write compile-cache entry");
        }
        Ok((
            component,
            if existed {
                CacheOutcome::Replaced
            } else {
                CacheOutcome::Miss
            },
        ))
    }
}

fn compat_hash(engine: &Engine) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// What an entry must be for: the component's SHA-256 and the engine's
/// compatibility hash (40 bytes), checked before the payload is used.
fn key_of(engine: &Engine, bytes: &[u8]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&Sha256::digest(bytes));
    key[32..].copy_from_slice(&compat_hash(engine).to_le_bytes());
    key
}

/// Entry layout: magic, key (40), SHA-256 of payload (32), payload.
fn verify<'a>(data: &'a [u8], key: &[u8; 40]) -> Option<&'a [u8]> {
    let rest = data.strip_prefix(MAGIC.as_slice())?;
    let rest = rest.strip_prefix(key.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

fn store(path: &Path, key: &[u8; 40], payload: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(MAGIC)?;
    f.write_all(key)?;
    f.write_all(&Sha256::digest(payload))?;
    f.write_all(payload)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_rejects_bad_checksums_and_other_keys() {
        let key = [7u8; 40];
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&key);
        data.extend_from_slice(&Sha256::digest(b"payload"));
        data.extend_from_slice(b"payload");
        assert_eq!(verify(&data, &key), Some(&b"payload"[..]));
        assert_eq!(
            verify(&data, &[8u8; 40]),
            None,
            "an entry for another component was accepted"
        );
        let last = data.len() - 1;
        data[last] ^= 1;
        assert_eq!(verify(&data, &key), None);
        assert_eq!(verify(b"KILNCWC1short", &key), None);
        assert_eq!(verify(b"garbage", &key), None);
    }
}
