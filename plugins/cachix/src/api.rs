//! The wire shapes of Cachix's HTTP API v1 that `cachix push` uses, as its
//! client sends and reads them: the bulk missing-hash query, the multipart
//! NAR upload (create, per-part presigned URL, complete, abort) and the
//! narinfo sent on completion (`narInfoCreate`).
//!
//! Field names, encodings and paths follow cachix-api
//! (`Cachix/API.hs`, `Types/MultipartUpload.hs`, `Types/NarInfoCreate.hs`,
//! `Types/BinaryCache.hs`). This module builds and parses; it must not do
//! I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kiln_narinfo::{Fingerprint, NarHash, SecretKey};
use kiln_plugin_sdk::{NarSummary, PathInfo};
use serde::{Deserialize, Serialize};

/// What `POST …/multipart-nar` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMultipartUpload {
    /// The NAR's UUID, a path segment of the later calls.
    pub nar_id: String,
    /// The storage upload's id, a query parameter of the later calls.
    pub upload_id: String,
}

/// The body of `POST …/multipart-nar/{narId}?uploadId=…&partNumber=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningData {
    /// Base64 of the part's MD5, also sent as `Content-MD5` on the PUT.
    #[serde(rename = "contentMD5")]
    pub content_md5: String,
}

/// What the part call answers: where to PUT the part.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadPart {
    /// A presigned URL on the storage host.
    pub upload_url: String,
}

/// One uploaded part, as the completion call lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedPart {
    /// 1-based.
    pub part_number: u32,
    /// The storage host's `ETag` for the part, verbatim.
    pub e_tag: String,
}

/// The body of `POST …/multipart-nar/{narId}/complete?uploadId=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedMultipartUpload {
    /// The parts in order.
    pub parts: Vec<CompletedPart>,
    /// The narinfo to create once the parts are verified.
    pub nar_info_create: NarInfoCreate,
}

/// The narinfo fields Cachix stores for a path (its `c`-prefixed names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarInfoCreate {
    /// The 32-character hash part of the store path.
    #[serde(rename = "cStoreHash")]
    pub store_hash: String,
    /// The name after `<hash>-`.
    #[serde(rename = "cStoreSuffix")]
    pub store_suffix: String,
    /// `sha256:<nix base-32>` of the uncompressed NAR.
    #[serde(rename = "cNarHash")]
    pub nar_hash: String,
    /// Size of the uncompressed NAR.
    #[serde(rename = "cNarSize")]
    pub nar_size: u64,
    /// Lower-case hex SHA-256 of the compressed file, no prefix.
    #[serde(rename = "cFileHash")]
    pub file_hash: String,
    /// Size of the compressed file.
    #[serde(rename = "cFileSize")]
    pub file_size: u64,
    /// References as basenames, sorted.
    #[serde(rename = "cReferences")]
    pub references: Vec<String>,
    /// The deriver's basename, or `unknown-deriver`.
    #[serde(rename = "cDeriver")]
    pub deriver: String,
    /// Base64 of the ed25519 signature over the narinfo fingerprint, without
    /// the key name; `null` when the cache signs.
    #[serde(rename = "cSig")]
    pub sig: Option<String>,
}

/// `compression` query value of the create call: Cachix spells zstd `zst`.
pub fn compression_param(compression: kiln_plugin_sdk::Compression) -> &'static str {
    match compression {
        kiln_plugin_sdk::Compression::Xz => "xz",
        kiln_plugin_sdk::Compression::Zstd | kiln_plugin_sdk::Compression::None => "zst",
    }
}

fn basename(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// The hash part of a store path (`/nix/store/<hash>-name` → `<hash>`).
pub fn store_hash(path: &str) -> &str {
    let base = basename(path);
    base.split_once('-').map_or(base, |(hash, _)| hash)
}

/// The narinfo Cachix should create for `info`, whose NAR was streamed with
/// `summary`, signed with `key` when given.
pub fn nar_info_create(
    info: &PathInfo,
    summary: &NarSummary,
    key: Option<&SecretKey>,
) -> Result<NarInfoCreate, String> {
    let nar_hash = NarHash::parse(&summary.nar_hash)
        .map_err(|e| format!("the streamed NAR of {} has {e}", info.path))?;
    let file_hash = NarHash::parse(&summary.file_hash)
        .map_err(|e| format!("the streamed file of {} has {e}", info.path))?;
    let recorded = NarHash::parse(&info.nar_hash)
        .map_err(|e| format!("path info of {} has {e}", info.path))?;
    if recorded != nar_hash || info.nar_size != summary.nar_size {
        return Err(format!(
            "{}: the streamed NAR ({nar_hash}, {} bytes) does not match the store's \
             ({recorded}, {} bytes); repair the store with `nix-store --verify --check-contents --repair`",
            info.path, summary.nar_size, info.nar_size
        ));
    }
    let base = basename(&info.path);
    let (store_hash, store_suffix) = base
        .split_once('-')
        .ok_or_else(|| format!("{} is not a store path", info.path))?;
    let mut references: Vec<String> = info
        .references
        .iter()
        .map(|r| basename(r).to_owned())
        .collect();
    references.sort();
    let sig = key.map(|key| {
        let fingerprint = Fingerprint {
            store_path: &info.path,
            nar_hash: &nar_hash,
            nar_size: summary.nar_size,
            references: &info.references,
        };
        signature_bytes_base64(&key.sign(&fingerprint.to_string()).to_string())
    });
    Ok(NarInfoCreate {
        store_hash: store_hash.to_owned(),
        store_suffix: store_suffix.to_owned(),
        nar_hash: nar_hash.to_nix(),
        nar_size: summary.nar_size,
        file_hash: hex(file_hash.digest()),
        file_size: summary.file_size,
        references,
        deriver: info
            .deriver
            .as_deref()
            .map_or("unknown-deriver", basename)
            .to_owned(),
        sig,
    })
}

/// `name:base64` → `base64`: Cachix takes the signature without its key name.
fn signature_bytes_base64(signature: &str) -> String {
    signature
        .split_once(':')
        .map_or(signature, |(_, b64)| b64)
        .to_owned()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64 of the MD5 of `part`, as `contentMD5` and `Content-MD5` want it.
pub fn content_md5(part: &[u8]) -> String {
    use md5::Digest as _;
    STANDARD.encode(md5::Md5::digest(part))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved set).
pub fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// URLs of the API calls for one cache, under the client's base URL
/// (`https://cachix.org` by default; API calls are not made to the
/// per-cache `{name}.cachix.org` host, which serves substituters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    cache_root: String,
}

impl Urls {
    /// Calls for `cache` under `endpoint`.
    pub fn new(endpoint: &str, cache: &str) -> Self {
        Self {
            cache_root: format!(
                "{}/api/v1/cache/{}",
                endpoint.trim_end_matches('/'),
                query_value(cache)
            ),
        }
    }

    /// `POST`: which of these store hashes the cache lacks.
    pub fn narinfo_bulk(&self) -> String {
        format!("{}/narinfo", self.cache_root)
    }

    /// `POST`: start a multipart NAR upload.
    pub fn create(&self, compression: &str) -> String {
        format!(
            "{}/multipart-nar?compression={compression}",
            self.cache_root
        )
    }

    /// `POST`: a presigned URL for part `part_number` (from 1).
    pub fn part(&self, upload: &CreateMultipartUpload, part_number: u32) -> String {
        format!(
            "{}/multipart-nar/{}?uploadId={}&partNumber={part_number}",
            self.cache_root,
            query_value(&upload.nar_id),
            query_value(&upload.upload_id)
        )
    }

    /// `POST`: finish the upload and create the narinfo.
    pub fn complete(&self, upload: &CreateMultipartUpload) -> String {
        self.finish(upload, "complete")
    }

    /// `POST`: give up on the upload.
    pub fn abort(&self, upload: &CreateMultipartUpload) -> String {
        self.finish(upload, "abort")
    }

    fn finish(&self, upload: &CreateMultipartUpload, what: &str) -> String {
        format!(
            "{}/multipart-nar/{}/{what}?uploadId={}",
            self.cache_root,
            query_value(&upload.nar_id),
            query_value(&upload.upload_id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_narinfo::{PublicKey, Signature};

    // A path Nix 2.8 signed (see kiln-narinfo's tests).
    const SECRET_1: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==";
    const PUBLIC_1: &str = "test-key-1:AgvnStKTcTRtgGiRnfIq8FWPUmfVKIv7S4WtJeYkIRY=";
    const REFS_SIG_1: &str =
        "hMZYNDBbkMiIaa/V+lR4AXKOyavPvygh1vERbJbdtaX3jh8zEjynopZl8RH1BXtr5tfKuDnno4gujupVyoCTDA==";

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
            ca: None,
        }
    }

    fn summary() -> NarSummary {
        NarSummary {
            file_hash: "sha256:0ixin8myw2p1l63fy2sp42yz0d14mirnf3whlfflivnvzfmj6rnm".into(),
            file_size: 216,
            nar_hash: "sha256-NYBE5UO9KRLDsA/7xUaw0HtpbpyWmDhMwM20x9NgHPw=".into(),
            nar_size: 224,
        }
    }

    #[test]
    fn narinfo_create_has_cachix_field_names_and_encodings() {
        let key = SecretKey::parse(SECRET_1).unwrap();
        let nic = nar_info_create(&refs_info(), &summary(), Some(&key)).unwrap();
        let file_hex = hex(NarHash::parse(&summary().file_hash).unwrap().digest());
        assert_eq!(
            serde_json::to_value(&nic).unwrap(),
            serde_json::json!({
                "cStoreHash": "f9zdbw4iks7jjf9iplawjn3h1a5c1am7",
                "cStoreSuffix": "refs",
                "cNarHash": "sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m",
                "cNarSize": 224,
                "cFileHash": file_hex,
                "cFileSize": 216,
                "cReferences": [
                    "3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta",
                    "vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha"
                ],
                "cDeriver": "0000000000000000000000000000000a-refs.drv",
                "cSig": REFS_SIG_1,
            })
        );
        assert_eq!(file_hex.len(), 64);
        // The signature is Nix's, over the fingerprint with full paths.
        let public = PublicKey::parse(PUBLIC_1).unwrap();
        let fingerprint = "1;/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs;sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m;224;/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta,/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha";
        let sig = Signature::parse(&format!("test-key-1:{REFS_SIG_1}")).unwrap();
        assert!(public.verify(fingerprint, &sig));
    }

    #[test]
    fn without_a_key_the_signature_is_null_and_deriver_unknown() {
        let mut info = refs_info();
        info.deriver = None;
        let nic = nar_info_create(&info, &summary(), None).unwrap();
        let json = serde_json::to_value(&nic).unwrap();
        assert_eq!(json["cSig"], serde_json::Value::Null);
        assert_eq!(json["cDeriver"], "unknown-deriver");
    }

    #[test]
    fn a_nar_that_differs_from_the_store_is_refused() {
        let mut s = summary();
        s.nar_size = 225;
        let error = nar_info_create(&refs_info(), &s, None).unwrap_err();
        assert!(error.contains("does not match the store's"), "{error}");
        assert!(
            error.contains("f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs"),
            "{error}"
        );
    }

    #[test]
    fn multipart_bodies_use_cachix_names() {
        assert_eq!(
            serde_json::to_value(SigningData {
                content_md5: content_md5(b"")
            })
            .unwrap(),
            serde_json::json!({"contentMD5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
        );
        let created: CreateMultipartUpload = serde_json::from_str(
            r#"{"narId":"6f1c1a2e-0000-4000-8000-000000000001","uploadId":"a/b+c="}"#,
        )
        .unwrap();
        assert_eq!(created.upload_id, "a/b+c=");
        let part: UploadPart =
            serde_json::from_str(r#"{"uploadUrl":"http://127.0.0.1:1/x"}"#).unwrap();
        assert_eq!(part.upload_url, "http://127.0.0.1:1/x");
        let body = CompletedMultipartUpload {
            parts: vec![CompletedPart {
                part_number: 1,
                e_tag: "\"abc\"".into(),
            }],
            nar_info_create: nar_info_create(&refs_info(), &summary(), None).unwrap(),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json["parts"],
            serde_json::json!([{"partNumber": 1, "eTag": "\"abc\""}])
        );
        assert_eq!(json["narInfoCreate"]["cStoreSuffix"], "refs");
    }

    #[test]
    fn urls_follow_the_api_paths() {
        let urls = Urls::new("https://cachix.org/", "my-cache");
        assert_eq!(
            urls.narinfo_bulk(),
            "https://cachix.org/api/v1/cache/my-cache/narinfo"
        );
        assert_eq!(
            urls.create(compression_param(kiln_plugin_sdk::Compression::Zstd)),
            "https://cachix.org/api/v1/cache/my-cache/multipart-nar?compression=zst"
        );
        let upload = CreateMultipartUpload {
            nar_id: "6f1c1a2e-0000-4000-8000-000000000001".into(),
            upload_id: "a/b+c=".into(),
        };
        assert_eq!(
            urls.part(&upload, 2),
            "https://cachix.org/api/v1/cache/my-cache/multipart-nar/6f1c1a2e-0000-4000-8000-000000000001?uploadId=a%2Fb%2Bc%3D&partNumber=2"
        );
        assert_eq!(
            urls.complete(&upload),
            "https://cachix.org/api/v1/cache/my-cache/multipart-nar/6f1c1a2e-0000-4000-8000-000000000001/complete?uploadId=a%2Fb%2Bc%3D"
        );
        assert!(urls.abort(&upload).contains("/abort?uploadId="));
        assert_eq!(
            store_hash("/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs"),
            "f9zdbw4iks7jjf9iplawjn3h1a5c1am7"
        );
    }
}
