//! SHA-256 NAR hashes in the two spellings Nix uses: `sha256:<nix base-32>`
//! (narinfo, fingerprints) and SRI `sha256-<base64>` (`nix path-info --json`).
//!
//! The base-32 alphabet comes from the `nix-base32` crate (small, Apache-2.0,
//! no dependencies, matching Nix's vectors); this module only adds the length
//! checks that crate leaves out. It must not hash files or talk to Nix.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Length of a SHA-256 digest in Nix base-32.
const SHA256_BASE32_LEN: usize = 52;

/// Encodes bytes in Nix's base-32 (as `nix hash to-base32` prints). Empty
/// input gives an empty string.
pub fn to_nix_base32(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    nix_base32::to_nix_base32(bytes)
}

/// Decodes Nix base-32, or `None` when a character is outside the alphabet or
/// the text does not encode a whole number of bytes.
pub fn from_nix_base32(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    nix_base32::from_nix_base32(text)
}

/// A SHA-256 NAR (or file) hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarHash([u8; 32]);

impl NarHash {
    /// Wraps a raw digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// Hashes `bytes` (a whole NAR or compressed file).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Reads `sha256:<nix base-32>`, `sha256:<hex>` or SRI `sha256-<base64>`.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidHash(text.to_owned());
        let bytes = if let Some(rest) = text.strip_prefix("sha256:") {
            match rest.len() {
                SHA256_BASE32_LEN => from_nix_base32(rest).ok_or_else(invalid)?,
                64 => decode_hex(rest).ok_or_else(invalid)?,
                _ => return Err(invalid()),
            }
        } else if let Some(rest) = text.strip_prefix("sha256-") {
            STANDARD.decode(rest).map_err(|_| invalid())?
        } else {
            return Err(invalid());
        };
        let digest: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self(digest))
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// `sha256:<nix base-32>`, as narinfo files and fingerprints write it.
    pub fn to_nix(&self) -> String {
        format!("sha256:{}", to_nix_base32(&self.0))
    }

    /// The bare Nix base-32 digest, as NAR file names in a cache use it.
    pub fn to_nix_base32(&self) -> String {
        to_nix_base32(&self.0)
    }

    /// SRI `sha256-<base64>`, as `nix path-info --json` prints it.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", STANDARD.encode(self.0))
    }
}

impl std::fmt::Display for NarHash {
    /// Formats as `sha256:<nix base-32>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_nix())
    }
}

impl std::str::FromStr for NarHash {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(*pair.get(1)?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs printed by Nix 2.8 (`nix path-info --json`, `nix hash to-base32`).
    const VECTORS: &[(&str, &str)] = &[
        (
            "sha256-NYBE5UO9KRLDsA/7xUaw0HtpbpyWmDhMwM20x9NgHPw=",
            "sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m",
        ),
        (
            "sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=",
            "sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa",
        ),
        (
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
    ];

    #[test]
    fn sri_and_nix_base32_convert_both_ways() {
        for (sri, nix) in VECTORS {
            assert_eq!(NarHash::parse(sri).unwrap().to_nix(), *nix);
            assert_eq!(NarHash::parse(nix).unwrap().to_sri(), *sri);
            assert_eq!(NarHash::parse(nix).unwrap().to_string(), *nix);
        }
    }

    #[test]
    fn hashing_the_empty_string_matches_nix() {
        // `nix hash to-base32 sha256-47DEQ…` above is the empty string's SHA-256.
        assert_eq!(NarHash::of(b"").to_sri(), VECTORS[2].0);
    }

    #[test]
    fn hex_form_is_accepted() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let hash = NarHash::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(hash.to_nix(), VECTORS[2].1);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "sha256",
            "md5:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e",
            "sha256:zzdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=",
            "sha256-AAAA",
        ] {
            assert!(NarHash::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn base32_edge_cases() {
        assert_eq!(to_nix_base32(&[]), "");
        assert_eq!(from_nix_base32(""), Some(Vec::new()));
        // One byte takes two digits; the top bits of the first digit must be zero.
        assert_eq!(to_nix_base32(&[0xff]), "7z");
        assert_eq!(from_nix_base32("7z"), Some(vec![0xff]));
        assert_eq!(from_nix_base32("zz"), None);
    }
}
