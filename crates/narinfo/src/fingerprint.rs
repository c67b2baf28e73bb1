//! The narinfo fingerprint that Nix signs:
//! `1;<store path>;<sha256:nix base-32 nar hash>;<nar size>;<references>`,
//! references as full store paths, sorted, joined with commas.
//!
//! This module only builds the text; it must not sign (see `keys`) or read
//! path metadata (the host's store interface does that).

use std::fmt;

use crate::NarHash;

/// The facts about a store path that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint<'a, R: AsRef<str> = String> {
    /// Full store path, e.g. `/nix/store/…-hello`.
    pub store_path: &'a str,
    /// Hash of the path's uncompressed NAR.
    pub nar_hash: &'a NarHash,
    /// Size of the uncompressed NAR in bytes.
    pub nar_size: u64,
    /// References, as full store paths or as basenames (which are taken to
    /// live in `store_path`'s store directory). Order does not matter.
    pub references: &'a [R],
}

impl<R: AsRef<str>> fmt::Display for Fingerprint<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store_dir = self
            .store_path
            .rsplit_once('/')
            .map_or("/nix/store", |(dir, _)| dir);
        let mut references: Vec<String> = self
            .references
            .iter()
            .map(|r| {
                let r = r.as_ref();
                if r.starts_with('/') {
                    r.to_owned()
                } else {
                    format!("{store_dir}/{r}")
                }
            })
            .collect();
        references.sort();
        write!(
            f,
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash.to_nix(),
            self.nar_size,
            references.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFS_PATH: &str = "/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs";
    const REFS_NAR_HASH: &str = "sha256-NYBE5UO9KRLDsA/7xUaw0HtpbpyWmDhMwM20x9NgHPw=";
    const REFS_FINGERPRINT: &str = "1;/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs;\
        sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m;224;\
        /nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta,\
        /nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha";

    #[test]
    fn references_are_sorted_full_paths() {
        let hash = NarHash::parse(REFS_NAR_HASH).unwrap();
        let unsorted = [
            "/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha",
            "/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta",
        ];
        let fingerprint = Fingerprint {
            store_path: REFS_PATH,
            nar_hash: &hash,
            nar_size: 224,
            references: &unsorted,
        };
        assert_eq!(fingerprint.to_string(), REFS_FINGERPRINT);
    }

    #[test]
    fn basename_references_are_completed() {
        let hash = NarHash::parse(REFS_NAR_HASH).unwrap();
        let basenames = [
            "vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha".to_owned(),
            "3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta".to_owned(),
        ];
        let fingerprint = Fingerprint {
            store_path: REFS_PATH,
            nar_hash: &hash,
            nar_size: 224,
            references: &basenames,
        };
        assert_eq!(fingerprint.to_string(), REFS_FINGERPRINT);
    }

    #[test]
    fn no_references_leaves_the_last_field_empty() {
        let hash = NarHash::parse("sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=").unwrap();
        let fingerprint = Fingerprint::<&str> {
            store_path: "/nix/store/rgvbk80vr60j9i6227nbw3dqq7bjr27g-h.txt",
            nar_hash: &hash,
            nar_size: 120,
            references: &[],
        };
        assert_eq!(
            fingerprint.to_string(),
            "1;/nix/store/rgvbk80vr60j9i6227nbw3dqq7bjr27g-h.txt;\
             sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa;120;"
        );
    }
}
