//! The per-plugin key-value cache with expiry, which outlives the instance
//! (instances are fresh for every call): tokens, ETags, rate-limit state.
//!
//! This module forwards to the host; it must not keep values in memory.

use crate::HostError;

/// The value of `key`, or `None` when absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    crate::wit::post_build::kiln::plugin::kv::get(key)
}

/// Stores `value` under `key`; it expires after `ttl_seconds` when given.
pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), HostError> {
    crate::wit::post_build::kiln::plugin::kv::set(key, value, ttl_seconds)
}

/// Removes `key` (not an error when absent).
pub fn delete(key: &str) -> Result<(), HostError> {
    crate::wit::post_build::kiln::plugin::kv::delete(key)
}
