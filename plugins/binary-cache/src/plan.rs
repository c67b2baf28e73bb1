//! What to upload: the hash part a cache indexes a path by, and the narinfo
//! of an uploaded path with its signatures (the order is the SDK's
//! `store::dependency_levels`).
//!
//! Pure functions, unit-tested natively; this module must not call the host.

use kiln_narinfo::{NarHash, NarInfo, SecretKey};
use kiln_plugin_sdk::{NarSummary, PathInfo};

/// The 32-character hash part of a store path (`/nix/store/<hash>-name`).
pub fn hash_part(path: &str) -> &str {
    let base = path.rsplit_once('/').map_or(path, |(_, b)| b);
    base.split_once('-').map_or(base, |(h, _)| h)
}

/// The narinfo of `info`, uploaded as `summary` says, signed by the
/// signatures the store already has, those `recorded` by earlier steps and
/// one by `key` when given (duplicates dropped, order kept).
pub fn narinfo(
    info: &PathInfo,
    summary: &NarSummary,
    compression: &str,
    recorded: &[String],
    key: Option<&SecretKey>,
) -> Result<NarInfo, String> {
    let hash = |what: &str, text: &str| {
        NarHash::parse(text).map_err(|e| format!("{what} of {}: {e}", info.path))
    };
    let file_hash = hash("file hash", &summary.file_hash)?;
    let nar_hash = hash("NAR hash", &summary.nar_hash)?;
    if nar_hash != hash("NAR hash in the store", &info.nar_hash)?
        || summary.nar_size != info.nar_size
    {
        return Err(format!(
            "the NAR of {} does not match the store's path info ({} bytes, {} streamed vs {} bytes, {} recorded); the store may be corrupt: run `nix store verify {}`",
            info.path, summary.nar_size, summary.nar_hash, info.nar_size, info.nar_hash, info.path
        ));
    }
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url: NarInfo::nar_url(&file_hash, compression),
        compression: compression.to_owned(),
        file_hash,
        file_size: summary.file_size,
        nar_hash,
        nar_size: summary.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        signatures: Vec::new(),
        ca: info.ca.clone(),
    };
    let own = key.map(|k| k.sign(&narinfo.fingerprint().to_string()).to_string());
    for signature in info.signatures.iter().chain(recorded).chain(own.iter()) {
        if !narinfo.signatures.contains(signature) {
            narinfo.signatures.push(signature.clone());
        }
    }
    Ok(narinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: format!("/nix/store/{name}"),
            nar_hash: "sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m".into(),
            nar_size: 224,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn hash_parts() {
        assert_eq!(
            hash_part("/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs"),
            "f9zdbw4iks7jjf9iplawjn3h1a5c1am7"
        );
    }

    // Written by Nix 2.8: `nix copy --to 'file://…?compression=xz&secret-key=…'`.
    const SECRET: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==";
    const SIG: &str = "test-key-1:hMZYNDBbkMiIaa/V+lR4AXKOyavPvygh1vERbJbdtaX3jh8zEjynopZl8RH1BXtr5tfKuDnno4gujupVyoCTDA==";

    fn refs() -> (PathInfo, NarSummary) {
        let mut refs = info(
            "f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs",
            &[
                "vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha",
                "3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta",
            ],
        );
        refs.ca = Some("text:sha256:052kr5isng2r0xfxa14f4c74h4ri7w55hzx08qs5a2n379racwzl".into());
        let summary = NarSummary {
            file_hash: "sha256:0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm".into(),
            file_size: 216,
            nar_hash: refs.nar_hash.clone(),
            nar_size: 224,
        };
        (refs, summary)
    }

    #[test]
    fn narinfo_matches_nix_and_merges_signatures() {
        let (mut info, summary) = refs();
        let key = SecretKey::parse(SECRET).unwrap();
        info.signatures = vec!["other:abc".into()];
        let recorded = vec!["other:abc".into(), SIG.to_owned(), "third:def".into()];
        let made = narinfo(&info, &summary, "xz", &recorded, Some(&key)).unwrap();
        assert_eq!(made.signatures, vec!["other:abc", SIG, "third:def"]);
        assert_eq!(
            made.url,
            "nar/0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm.nar.xz"
        );
        let text = made.to_string();
        assert!(
            text.contains(
                "References: 3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha\n"
            ),
            "{text}"
        );
        let unsigned = narinfo(&info, &summary, "xz", &[], None).unwrap();
        assert_eq!(unsigned.signatures, vec!["other:abc"]);
    }

    #[test]
    fn a_nar_that_differs_from_the_store_is_refused() {
        let (info, mut summary) = refs();
        summary.nar_size = 225;
        let error = narinfo(&info, &summary, "xz", &[], None).unwrap_err();
        assert!(error.contains("does not match"), "{error}");
        assert!(error.contains("nix store verify"), "{error}");
    }
}
