//! Reading the named secrets the operator granted this plugin.
//!
//! This module must not cache or log a secret's value: callers keep it no
//! longer than the call.

use crate::HostError;

/// The secret `name` as bytes. `denied` when it is not granted, `not found`
/// when granted but not configured.
pub fn get(name: &str) -> Result<Vec<u8>, HostError> {
    crate::wit::post_build::kiln::plugin::secrets::get(name)
}

/// The secret `name` as UTF-8 text with surrounding whitespace (a key
/// file's trailing newline) removed.
pub fn get_string(name: &str) -> Result<String, HostError> {
    let bytes = get(name)?;
    String::from_utf8(bytes)
        .map(|text| text.trim().to_owned())
        .map_err(|_| HostError {
            kind: crate::HostErrorKind::Invalid,
            message: format!("secret `{name}` is not UTF-8 text"),
        })
}
