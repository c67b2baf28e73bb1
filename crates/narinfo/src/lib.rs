//! Nix's binary-cache formats that signing and cache-upload code need: the
//! base-32 hash encoding and its SRI twin, the narinfo fingerprint, Nix's
//! `name:base64` ed25519 keys and signatures, and narinfo text.
//!
//! This crate is pure Rust and builds for the host and for `wasm32-wasip2`
//! plugins alike. It computes and formats; it must not do I/O, talk to Nix or
//! know about plugins.
//!
//! ```
//! use kiln_narinfo::{Fingerprint, NarHash, SecretKey};
//!
//! let key = SecretKey::parse(
//!     "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==",
//! )?;
//! let fingerprint = Fingerprint::<&str> {
//!     store_path: "/nix/store/rgvbk80vr60j9i6227nbw3dqq7bjr27g-h.txt",
//!     nar_hash: &NarHash::parse("sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=")?,
//!     nar_size: 120,
//!     references: &[],
//! };
//! let signature = key.sign(&fingerprint.to_string());
//! assert!(key.public_key().verify(&fingerprint.to_string(), &signature));
//! # Ok::<(), kiln_narinfo::Error>(())
//! ```

#![deny(missing_docs)]

mod fingerprint;
mod hash;
mod keys;
mod narinfo;

pub use fingerprint::Fingerprint;
pub use hash::{NarHash, from_nix_base32, to_nix_base32};
pub use keys::{PublicKey, SecretKey, Signature};
pub use narinfo::NarInfo;

/// Why a hash, key or signature could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A hash was neither `sha256:<nix base-32 or hex>` nor `sha256-<base64>`.
    #[error("invalid hash `{0}`: expected `sha256:<nix base-32>` or `sha256-<base64>`")]
    InvalidHash(String),
    /// A key or signature was not `name:base64`, or had the wrong length.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        /// What was being read (`secret key`, `public key`, `signature`).
        what: &'static str,
        /// What was wrong with it; never contains key material.
        reason: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
