//! Nix's ed25519 keys and signatures in their text forms: a secret key is
//! `name:base64(64-byte seed ‖ public key)` (`nix key generate-secret`), a
//! public key `name:base64(32 bytes)`, a signature `name:base64(64 bytes)`.
//!
//! This module parses, signs and verifies. It must not read key files or
//! secrets (callers pass the text) and must never put key material in an
//! error message or a `Debug` output.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::{Error, Result};

fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        what,
        reason: reason.into(),
    }
}

/// Splits `name:base64` and decodes the payload into exactly `N` bytes.
fn split<const N: usize>(what: &'static str, text: &str) -> Result<(String, [u8; N])> {
    let text = text.trim();
    let (name, payload) = text
        .split_once(':')
        .ok_or_else(|| invalid(what, "expected `name:base64`, found no `:`"))?;
    if name.is_empty() {
        return Err(invalid(what, "the key name before `:` is empty"));
    }
    let bytes = STANDARD
        .decode(payload)
        .map_err(|_| invalid(what, format!("the part after `{name}:` is not base64")))?;
    let len = bytes.len();
    let bytes = bytes.try_into().map_err(|_| {
        invalid(
            what,
            format!("expected {N} bytes after base64, found {len}"),
        )
    })?;
    Ok((name.to_owned(), bytes))
}

/// A signing key in Nix's secret-key format.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Reads `name:base64(64 bytes)`, as `nix key generate-secret` writes it.
    /// Surrounding whitespace (a trailing newline in a key file) is ignored.
    /// The public half must match the seed, as it does in keys Nix made.
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "secret key";
        let (name, bytes) = split::<64>(WHAT, text)?;
        let key = SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| invalid(WHAT, "its public half does not match its seed"))?;
        Ok(Self { name, key })
    }

    /// The key's name, the part before `:`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key (`nix key convert-secret-to-public`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message` (normally a [`crate::Fingerprint`]'s text).
    pub fn sign(&self, message: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(message.as_bytes()).to_bytes(),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A verifying key in Nix's public-key format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Reads `name:base64(32 bytes)`.
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "public key";
        let (name, bytes) = split::<32>(WHAT, text)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| invalid(WHAT, "the 32 bytes are not an ed25519 point"))?;
        Ok(Self { name, key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` was made over `message` by this key. A signature
    /// by another key name is simply not valid, as in Nix.
    pub fn verify(&self, message: &str, signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify(
                    message.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

/// A detached signature, `name:base64(64 bytes)`, as a narinfo `Sig:` line
/// and `nix path-info --sigs` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    /// Reads `name:base64(64 bytes)`.
    pub fn parse(text: &str) -> Result<Self> {
        let (key_name, bytes) = split::<64>("signature", text)?;
        Ok(Self { key_name, bytes })
    }

    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, STANDARD.encode(self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fingerprint, NarHash};

    // Made with Nix 2.8: `nix key generate-secret --key-name …`,
    // `nix key convert-secret-to-public`, then `nix store sign --key-file`
    // in a separate store and `nix path-info --json --sigs`.
    const SECRET_1: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==";
    const PUBLIC_1: &str = "test-key-1:AgvnStKTcTRtgGiRnfIq8FWPUmfVKIv7S4WtJeYkIRY=";
    const SECRET_2: &str = "other-key:jB7aHXGGjKsvcfjsX4s/k1eb/V3TUNVkDGuGWltkKEnsjfr+RJeFBrrYmZnvbS7aq1YnYOIj7rA6W4NcUIjHvg==";
    const PUBLIC_2: &str = "other-key:7I36/kSXhQa62JmZ720u2qtWJ2DiI+6wOluDXFCIx74=";

    /// `/nix/store/f9zd…-refs` (two references) and its signatures by each key.
    const REFS_FINGERPRINT: &str = "1;/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs;sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m;224;/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta,/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha";
    const REFS_SIG_1: &str = "test-key-1:hMZYNDBbkMiIaa/V+lR4AXKOyavPvygh1vERbJbdtaX3jh8zEjynopZl8RH1BXtr5tfKuDnno4gujupVyoCTDA==";
    const REFS_SIG_2: &str = "other-key:yONucVXq4L/M+Db6I82XaIsE9RjMqdsjqdGhyULSRXIYjmk6XmMF+y4NHtlpEVD/aEMbJfwyGyt6HX41JmknCQ==";
    /// `/nix/store/rgvb…-h.txt` (no references), signed by key 1.
    const H_SIG_1: &str = "test-key-1:9qX/B3CaKtygAxwqEaPilj6zw2msfXIanKxJweh66RMGgHUUboqYCPKudNIxlSBz79tnOCv5HShjn+zTru8wAw==";

    #[test]
    fn signatures_equal_those_nix_made() {
        let key1 = SecretKey::parse(SECRET_1).unwrap();
        let key2 = SecretKey::parse(SECRET_2).unwrap();
        assert_eq!(key1.sign(REFS_FINGERPRINT).to_string(), REFS_SIG_1);
        assert_eq!(key2.sign(REFS_FINGERPRINT).to_string(), REFS_SIG_2);

        let hash = NarHash::parse("sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=").unwrap();
        let fingerprint = Fingerprint::<&str> {
            store_path: "/nix/store/rgvbk80vr60j9i6227nbw3dqq7bjr27g-h.txt",
            nar_hash: &hash,
            nar_size: 120,
            references: &[],
        };
        assert_eq!(key1.sign(&fingerprint.to_string()).to_string(), H_SIG_1);
    }

    #[test]
    fn public_keys_match_nix() {
        assert_eq!(
            SecretKey::parse(SECRET_1).unwrap().public_key().to_string(),
            PUBLIC_1
        );
        assert_eq!(
            SecretKey::parse(SECRET_2).unwrap().public_key().to_string(),
            PUBLIC_2
        );
        assert_eq!(PublicKey::parse(PUBLIC_1).unwrap().to_string(), PUBLIC_1);
    }

    #[test]
    fn verification_checks_key_name_and_message() {
        let public1 = PublicKey::parse(PUBLIC_1).unwrap();
        let public2 = PublicKey::parse(PUBLIC_2).unwrap();
        let sig1 = Signature::parse(REFS_SIG_1).unwrap();
        assert_eq!(sig1.key_name(), "test-key-1");
        assert!(public1.verify(REFS_FINGERPRINT, &sig1));
        assert!(!public2.verify(REFS_FINGERPRINT, &sig1));
        assert!(!public1.verify(&REFS_FINGERPRINT.replace("224", "225"), &sig1));
        assert!(public2.verify(REFS_FINGERPRINT, &Signature::parse(REFS_SIG_2).unwrap()));
    }

    #[test]
    fn trailing_newline_of_a_key_file_is_ignored() {
        let key = SecretKey::parse(&format!("{SECRET_1}\n")).unwrap();
        assert_eq!(key.name(), "test-key-1");
    }

    #[test]
    fn malformed_keys_say_what_is_wrong_without_the_key() {
        let cases = [
            ("", "no `:`"),
            ("no-colon", "no `:`"),
            (":AAAA", "name before `:` is empty"),
            ("k:not base64!", "not base64"),
            (
                "k:AgvnStKTcTRtgGiRnfIq8FWPUmfVKIv7S4WtJeYkIRY=",
                "expected 64 bytes",
            ),
            (PUBLIC_1, "found 32"),
        ];
        for (text, expected) in cases {
            let error = SecretKey::parse(text).unwrap_err().to_string();
            assert!(error.starts_with("invalid secret key"), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains("AgvnSt"), "key material in {error}");
        }
        // Seed of key 1 with the public half of key 2.
        let mut bytes = STANDARD.decode(&SECRET_1["test-key-1:".len()..]).unwrap();
        bytes[32..].copy_from_slice(&STANDARD.decode(&PUBLIC_2["other-key:".len()..]).unwrap());
        let mismatched = format!("k:{}", STANDARD.encode(bytes));
        let error = SecretKey::parse(&mismatched).unwrap_err().to_string();
        assert!(error.contains("does not match"), "{error}");
        assert!(PublicKey::parse(SECRET_1).is_err());
        assert!(Signature::parse(PUBLIC_1).is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let debug = format!("{:?}", SecretKey::parse(SECRET_1).unwrap());
        assert_eq!(debug, "SecretKey { name: \"test-key-1\", .. }");
    }
}
