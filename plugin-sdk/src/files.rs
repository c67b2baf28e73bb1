//! Writing one small file inside a directory the operator granted (for
//! example an outputs index).
//!
//! This module forwards to the host, which enforces the size limit and
//! refuses `..` and absolute paths; it must not try to reach the file
//! system through WASI (nothing is preopened).

use crate::HostError;

/// Writes `contents` (at most 1 MiB) to `path`, relative to the granted
/// directory named `directory`.
pub fn write_file(directory: &str, path: &str, contents: &[u8]) -> Result<(), HostError> {
    crate::wit::post_build::kiln::plugin::files::write_file(directory, path, contents)
}
