//! The `.narinfo` text a binary cache serves for a store path.
//!
//! This module renders the fields Nix writes, in Nix's order. It must not compress, upload or sign: callers
//! fill `signatures` from `keys`.

use std::fmt;

use crate::{Fingerprint, NarHash};

/// One store path's entry in a binary cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path.
    pub store_path: String,
    /// Where the (compressed) NAR lives, relative to the cache root, e.g.
    /// `nar/<file hash>.nar.xz`.
    pub url: String,
    /// `none`, `xz`, `zstd`, …
    pub compression: String,
    /// Hash of the file at `url`.
    pub file_hash: NarHash,
    /// Size of the file at `url`.
    pub file_size: u64,
    /// Hash of the uncompressed NAR.
    pub nar_hash: NarHash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// References as full store paths or basenames; written as basenames,
    /// sorted.
    pub references: Vec<String>,
    /// The deriver's full path or basename; written as a basename.
    pub deriver: Option<String>,
    /// `name:base64` signatures, one `Sig:` line each.
    pub signatures: Vec<String>,
    /// Content address, when the path has one.
    pub ca: Option<String>,
}

impl NarInfo {
    /// The conventional `url` for a NAR: `nar/<file hash>.nar[.<ext>]`.
    pub fn nar_url(file_hash: &NarHash, compression: &str) -> String {
        let ext = match compression {
            "none" | "" => "",
            "xz" => ".xz",
            "zstd" => ".zst",
            "bzip2" => ".bz2",
            other => return format!("nar/{}.nar.{other}", file_hash.to_nix_base32()),
        };
        format!("nar/{}.nar{ext}", file_hash.to_nix_base32())
    }

    /// The fingerprint its signatures cover.
    pub fn fingerprint(&self) -> Fingerprint<'_> {
        Fingerprint {
            store_path: &self.store_path,
            nar_hash: &self.nar_hash,
            nar_size: self.nar_size,
            references: &self.references,
        }
    }

    /// The file name a cache serves this entry under: `<hash part>.narinfo`.
    pub fn file_name(&self) -> String {
        let hash_part = basename(&self.store_path)
            .split_once('-')
            .map_or(basename(&self.store_path), |(hash, _)| hash);
        format!("{hash_part}.narinfo")
    }
}

fn basename(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

impl fmt::Display for NarInfo {
    /// The narinfo text, every line ending in `\n`, as Nix writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        writeln!(f, "FileHash: {}", self.file_hash)?;
        writeln!(f, "FileSize: {}", self.file_size)?;
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let mut references: Vec<&str> = self.references.iter().map(|r| basename(r)).collect();
        references.sort_unstable();
        writeln!(f, "References: {}", references.join(" "))?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {}", basename(deriver))?;
        }
        for signature in &self.signatures {
            writeln!(f, "Sig: {signature}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretKey, Signature};

    /// Written by Nix 2.8: `nix copy --to 'file://…?compression=xz&secret-key=…'`.
    const NIX_NARINFO: &str = "StorePath: /nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs
URL: nar/0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm.nar.xz
Compression: xz
FileHash: sha256:0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm
FileSize: 216
NarHash: sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m
NarSize: 224
References: 3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha
Sig: test-key-1:hMZYNDBbkMiIaa/V+lR4AXKOyavPvygh1vERbJbdtaX3jh8zEjynopZl8RH1BXtr5tfKuDnno4gujupVyoCTDA==
CA: text:sha256:052kr5isng2r0xfxa14f4c74h4ri7w55hzx08qs5a2n379racwzl
";
    const SECRET_1: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==";

    fn refs_info() -> NarInfo {
        let file_hash =
            NarHash::parse("sha256:0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm").unwrap();
        NarInfo {
            store_path: "/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs".into(),
            url: NarInfo::nar_url(&file_hash, "xz"),
            compression: "xz".into(),
            file_hash,
            file_size: 216,
            nar_hash: NarHash::parse("sha256-NYBE5UO9KRLDsA/7xUaw0HtpbpyWmDhMwM20x9NgHPw=")
                .unwrap(),
            nar_size: 224,
            references: vec![
                "/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha".into(),
                "/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta".into(),
            ],
            deriver: None,
            signatures: vec![],
            ca: Some("text:sha256:052kr5isng2r0xfxa14f4c74h4ri7w55hzx08qs5a2n379racwzl".into()),
        }
    }

    #[test]
    fn renders_what_nix_writes() {
        let mut info = refs_info();
        let key = SecretKey::parse(SECRET_1).unwrap();
        info.signatures
            .push(key.sign(&info.fingerprint().to_string()).to_string());
        assert_eq!(info.to_string(), NIX_NARINFO);
        assert_eq!(info.file_name(), "f9zdbw4iks7jjf9iplawjn3h1a5c1am7.narinfo");
    }

    #[test]
    fn deriver_is_a_basename_and_empty_references_stay() {
        let mut info = refs_info();
        info.references.clear();
        info.deriver = Some("/nix/store/aaaabbbbccccddddffffgggghhhhiiii-refs.drv".into());
        let text = info.to_string();
        assert!(text.contains("\nReferences: \n"), "{text}");
        assert!(
            text.contains("\nDeriver: aaaabbbbccccddddffffgggghhhhiiii-refs.drv\n"),
            "{text}"
        );
        let ca = text.find("CA:").unwrap();
        assert!(text.find("Deriver:").unwrap() < ca);
    }

    #[test]
    fn signature_in_narinfo_verifies() {
        let info = refs_info();
        let key = SecretKey::parse(SECRET_1).unwrap();
        let signature =
            Signature::parse(&key.sign(&info.fingerprint().to_string()).to_string()).unwrap();
        assert!(
            key.public_key()
                .verify(&info.fingerprint().to_string(), &signature)
        );
    }

    #[test]
    fn nar_urls_follow_nix() {
        let hash = NarHash::of(b"");
        let b32 = hash.to_nix_base32();
        assert_eq!(NarInfo::nar_url(&hash, "none"), format!("nar/{b32}.nar"));
        assert_eq!(
            NarInfo::nar_url(&hash, "zstd"),
            format!("nar/{b32}.nar.zst")
        );
        assert_eq!(NarInfo::nar_url(&hash, "xz"), format!("nar/{b32}.nar.xz"));
    }
}
