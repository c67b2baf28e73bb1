//! Webhook signature checks for forge plugins: HMAC-SHA256 over the raw
//! body, as GitHub (`X-Hub-Signature-256: sha256=<hex>`) and Gitea or
//! Forgejo (`X-Gitea-Signature: <hex>`) send it, compared in constant time.
//!
//! This module only computes and compares; reading the secret and choosing
//! the header is the plugin's job.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether `signature` (hex, with or without a `sha256=` prefix) is the
/// HMAC-SHA256 of `body` under `secret`. A signature that is not hex, or has
/// the wrong length, does not match.
pub fn verify_hmac_sha256(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let hex = signature.strip_prefix("sha256=").unwrap_or(signature);
    let Some(expected) = decode_hex(hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The HMAC-SHA256 of `body` under `secret`, as lowercase hex (for tests and
/// for forges that sign requests Kiln sends).
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_example_signature() {
        // The example from GitHub's "Validating webhook deliveries".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(verify_hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &sig["sha256=".len()..].to_uppercase()
        ));
        assert!(!verify_hmac_sha256(b"wrong", b"Hello, World!", sig));
        assert!(!verify_hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello",
            sig
        ));
        assert!(!verify_hmac_sha256(b"k", b"", "sha256=zz"));
        assert!(!verify_hmac_sha256(b"k", b"", ""));
        assert_eq!(
            hmac_sha256_hex(b"It's a Secret to Everybody", b"Hello, World!"),
            &sig["sha256=".len()..]
        );
    }
}
