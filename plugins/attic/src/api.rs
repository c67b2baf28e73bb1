//! The wire shapes of Attic's API v1 that `attic push` uses: the
//! missing-path query and the upload of one path, whose narinfo travels in
//! the `X-Attic-Nar-Info` header (or, when large, as a preamble of the body
//! sized by `X-Attic-Nar-Info-Preamble-Size`).
//!
//! Field names and encodings follow attic's `api/v1/get_missing_paths.rs`,
//! `api/v1/upload_path.rs` and `hash/mod.rs`; the preamble threshold follows
//! its client (`client/src/api/mod.rs`). This module builds and parses; it
//! must not do I/O.

use kiln_narinfo::NarHash;
use kiln_plugin_sdk::PathInfo;
use serde::{Deserialize, Serialize};

/// Header carrying the narinfo JSON.
pub const NAR_INFO_HEADER: &str = "x-attic-nar-info";
/// Header giving the size of a narinfo preamble at the start of the body.
pub const PREAMBLE_SIZE_HEADER: &str = "x-attic-nar-info-preamble-size";
/// From this JSON size on, the narinfo goes in the body, as Attic's client
/// does (headers have size limits).
pub const PREAMBLE_THRESHOLD: usize = 4 * 1024;

/// The body of `POST /_api/v1/get-missing-paths`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetMissingPaths<'a> {
    /// The cache's name.
    pub cache: &'a str,
    /// Store path hash parts.
    pub store_path_hashes: Vec<&'a str>,
}

/// Its answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MissingPaths {
    /// The hashes the cache lacks.
    pub missing_paths: Vec<String>,
}

/// The narinfo of `PUT /_api/v1/upload-path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPathNarInfo {
    /// The cache's name.
    pub cache: String,
    /// The hash part of the store path.
    pub store_path_hash: String,
    /// The full store path.
    pub store_path: String,
    /// References as basenames.
    pub references: Vec<String>,
    /// The system the path was built for, when known.
    pub system: Option<String>,
    /// The deriver's basename, when known.
    pub deriver: Option<String>,
    /// `name:base64` signatures.
    pub sigs: Vec<String>,
    /// The content address, when the path has one.
    pub ca: Option<String>,
    /// `sha256:<64 hex digits>` of the NAR.
    pub nar_hash: String,
    /// Size of the NAR.
    pub nar_size: u64,
}

/// What the upload answers (ignored when it does not parse, as the client
/// does).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UploadPathResult {
    /// `Uploaded` or `Deduplicated`.
    pub kind: String,
    /// The compressed size, when the server says.
    pub file_size: Option<u64>,
}

fn basename(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// The hash part of a store path.
pub fn store_hash(path: &str) -> &str {
    let base = basename(path);
    base.split_once('-').map_or(base, |(hash, _)| hash)
}

/// `sha256:<hex>`, the form Attic's `Hash` serialises.
pub fn typed_base16(hash: &NarHash) -> String {
    let hex: String = hash.digest().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The narinfo for `info` in `cache`, with `sigs` (the store's and those
/// Kiln recorded) and `system` when it is a build output.
pub fn upload_info(
    cache: &str,
    info: &PathInfo,
    sigs: Vec<String>,
    system: Option<&str>,
) -> Result<UploadPathNarInfo, String> {
    let nar_hash = NarHash::parse(&info.nar_hash)
        .map_err(|e| format!("path info of {} has {e}", info.path))?;
    let mut references: Vec<String> = info
        .references
        .iter()
        .map(|r| basename(r).to_owned())
        .collect();
    references.sort();
    Ok(UploadPathNarInfo {
        cache: cache.to_owned(),
        store_path_hash: store_hash(&info.path).to_owned(),
        store_path: info.path.clone(),
        references,
        system: system.map(str::to_owned),
        deriver: info.deriver.as_deref().map(|d| basename(d).to_owned()),
        sigs,
        ca: info.ca.clone(),
        nar_hash: typed_base16(&nar_hash),
        nar_size: info.nar_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs_info() -> PathInfo {
        PathInfo {
            path: "/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs".into(),
            nar_hash: "sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m".into(),
            nar_size: 224,
            references: vec![
                "/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha".into(),
                "/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta".into(),
            ],
            deriver: Some("/nix/store/0000000000000000000000000000000a-refs.drv".into()),
            signatures: vec![],
            ca: Some("text:sha256:052kr5isng2r0xfxa14f4c74h4ri7w55hzx08qs5a2n379racwzl".into()),
        }
    }

    #[test]
    fn upload_info_has_attic_field_names_and_encodings() {
        let info = upload_info(
            "demo",
            &refs_info(),
            vec!["k:c2ln".into()],
            Some("x86_64-linux"),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({
                "cache": "demo",
                "store_path_hash": "f9zdbw4iks7jjf9iplawjn3h1a5c1am7",
                "store_path": "/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs",
                "references": [
                    "3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta",
                    "vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha"
                ],
                "system": "x86_64-linux",
                "deriver": "0000000000000000000000000000000a-refs.drv",
                "sigs": ["k:c2ln"],
                "ca": "text:sha256:052kr5isng2r0xfxa14f4c74h4ri7w55hzx08qs5a2n379racwzl",
                // `nix hash to-base16 sha256-NYBE5UO9KRLDsA/7xUaw0HtpbpyWmDhMwM20x9NgHPw=`
                "nar_hash": "sha256:358044e543bd2912c3b00ffbc546b0d07b696e9c9698384cc0cdb4c7d3601cfc",
                "nar_size": 224,
            })
        );
    }

    #[test]
    fn missing_paths_shapes() {
        let request = GetMissingPaths {
            cache: "demo",
            store_path_hashes: vec!["f9zdbw4iks7jjf9iplawjn3h1a5c1am7"],
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"cache": "demo", "store_path_hashes": ["f9zdbw4iks7jjf9iplawjn3h1a5c1am7"]})
        );
        let answer: MissingPaths = serde_json::from_str(r#"{"missing_paths": ["abc"]}"#).unwrap();
        assert_eq!(answer.missing_paths, ["abc"]);
        let result: UploadPathResult =
            serde_json::from_str(r#"{"kind":"Uploaded","file_size":10,"frac_deduplicated":0.0}"#)
                .unwrap();
        assert_eq!(result.kind, "Uploaded");
        assert_eq!(result.file_size, Some(10));
    }
}
