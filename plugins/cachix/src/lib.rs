//! `cachix`: a post-build plugin that pushes a build's outputs, and every
//! path of their closure the cache lacks, to a Cachix binary cache the way
//! `cachix push` does: one bulk query for the missing store hashes, then per
//! path a multipart NAR upload (compressed by the host) whose parts go to
//! presigned storage URLs, completed with the narinfo signed by the cache's
//! signing key.
//!
//! Secrets: `cachix-auth-token` (sent as a Bearer token to the API only,
//! never to the storage host) and `cachix-signing-key` (Nix's `name:base64`
//! or Cachix's bare base64). It must not upload what the cache already has,
//! add anything to the local store, or log either secret.

mod api;

use std::collections::BTreeSet;
use std::io::Read as _;

use kiln_narinfo::SecretKey;
use kiln_plugin_sdk::http::{self, Request, Response};
use kiln_plugin_sdk::status;
use kiln_plugin_sdk::{
    BuildInfo, Compression, Config, PathInfo, PluginError, PluginInfo, PostBuild, StepOutcome,
    StoreOperation, WorldKind, export_post_build, log, secrets, store,
};

use crate::api::{
    CompletedMultipartUpload, CompletedPart, CreateMultipartUpload, SigningData, Urls,
};

/// The secret holding the Cachix auth token.
const TOKEN_SECRET: &str = "cachix-auth-token";
/// The secret holding the cache's signing key.
const KEY_SECRET: &str = "cachix-signing-key";
/// Where `cachix` sends API calls unless configured otherwise.
const DEFAULT_ENDPOINT: &str = "https://cachix.org";
/// The size of each uploaded part but the last. `cachix push` uses 32 MiB
/// (at least 5 MiB, the storage minimum); half that, in one reused buffer,
/// keeps a push well within Kiln's default 64 MiB of plugin memory.
const PART_SIZE: usize = 16 << 20;
/// The most one read asks the host for: the host's chunk is a second copy
/// in plugin memory, so it stays small next to the part.
const READ_CHUNK: usize = 1 << 20;
/// The most store hashes one missing-hash query carries (as `cachix push`).
const QUERY_BATCH: usize = 32768;
/// The name errors give the service.
const SERVICE: &str = "Cachix";

struct Cachix;

impl PostBuild for Cachix {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "cachix",
            env!("CARGO_PKG_VERSION"),
            "Pushes the outputs and the closure paths a Cachix cache lacks, signed with its key",
        )
        .secret(TOKEN_SECRET)
        .secret(KEY_SECRET)
        .store(StoreOperation::PathInfo)
        .store(StoreOperation::NarStream)
        .required_config("cache", "Name of the Cachix cache to push to")
        .optional_config(
            "endpoint",
            "Cachix API base URL; grant its host and the storage host of the presigned upload URLs",
            Some(DEFAULT_ENDPOINT),
        )
        .optional_config("compression", "NAR compression: zstd or xz", Some("zstd"))
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let settings = Settings::read(&config)?;
        let token = secrets::get_string(TOKEN_SECRET).map_err(|e| {
            PluginError::failed(format!(
                "cannot read secret `{TOKEN_SECRET}`: {}",
                e.describe()
            ))
        })?;
        let key_text = secrets::get_string(KEY_SECRET).map_err(|e| {
            PluginError::failed(format!(
                "cannot read secret `{KEY_SECRET}`: {}",
                e.describe()
            ))
        })?;
        let key = parse_key(&key_text, &settings.cache)?;
        let client = Client {
            urls: Urls::new(&settings.endpoint, &settings.cache),
            token,
        };

        let outputs: Vec<String> = build.outputs.iter().map(|o| o.path.clone()).collect();
        let closure = store::closure(&outputs).map_err(|e| {
            PluginError::failed(format!(
                "cannot read the closure of the outputs: {}",
                e.describe()
            ))
        })?;
        let missing = client.missing(&closure)?;
        let infos = missing
            .iter()
            .map(|path| {
                store::path_info(path).map_err(|e| {
                    PluginError::failed(format!(
                        "cannot read path info of {path}: {}",
                        e.describe()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut bytes = 0;
        for info in store::dependencies_first(infos) {
            let size = client.push(&info, settings.compression, &key)?;
            log::info!(
                "pushed {} ({size} bytes) to Cachix cache `{}`",
                info.path,
                settings.cache
            );
            bytes += size;
        }
        Ok(StepOutcome::message(format!(
            "pushed {} path{} ({bytes} bytes) to Cachix cache `{}`; {} of {} closure paths were already there",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            settings.cache,
            closure.len() - missing.len(),
            closure.len()
        )))
    }
}

export_post_build!(Cachix);

/// The step's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    cache: String,
    endpoint: String,
    compression: Compression,
}

impl Settings {
    fn read(config: &Config) -> Result<Self, PluginError> {
        let cache = config.require("cache")?.trim().to_owned();
        if cache.is_empty() || cache.contains(['/', '?', '#', ' ']) {
            return Err(PluginError::failed(format!(
                "configuration key `cache` must be a Cachix cache name, not `{cache}`"
            )));
        }
        let endpoint = config.get("endpoint").unwrap_or(DEFAULT_ENDPOINT).trim();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(PluginError::failed(format!(
                "configuration key `endpoint` must be an http(s):// URL, not `{endpoint}`"
            )));
        }
        let compression = match config.get("compression").unwrap_or("zstd").trim() {
            "zstd" | "zst" => Compression::Zstd,
            "xz" => Compression::Xz,
            other => {
                return Err(PluginError::failed(format!(
                    "configuration key `compression` must be zstd or xz, not `{other}`"
                )));
            }
        };
        Ok(Self {
            cache,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            compression,
        })
    }
}

/// Reads the signing key: Nix's `name:base64`, or Cachix's bare base64 (as
/// `cachix generate-keypair` prints), named `<cache>.cachix.org-1` like the
/// public key Cachix shows. Errors name the secret, never its value.
fn parse_key(text: &str, cache: &str) -> Result<SecretKey, PluginError> {
    let text = text.trim();
    let named = if text.contains(':') {
        text.to_owned()
    } else {
        format!("{cache}.cachix.org-1:{text}")
    };
    SecretKey::parse(&named).map_err(|e| {
        PluginError::failed(format!(
            "secret `{KEY_SECRET}` is not an ed25519 signing key ({e}); expected `name:base64` \
             as `nix key generate-secret` writes, or the base64 key of `cachix generate-keypair`"
        ))
    })
}

/// Calls to one cache's API with the auth token.
struct Client {
    urls: Urls,
    token: String,
}

impl Client {
    /// Sends an authenticated API request and checks its status.
    fn api(&self, request: Request, what: &str) -> Result<Response, PluginError> {
        let request = request.header("authorization", format!("Bearer {}", self.token));
        send(SERVICE, request, what)
    }

    /// POSTs `body` as JSON (none when `None`, as for starting an upload)
    /// to the API and reads the JSON answer.
    fn api_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<T, PluginError> {
        let mut request = Request::new("POST", url.clone()).header("accept", "application/json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = self.api(request, what)?;
        serde_json::from_slice(&response.body).map_err(|e| {
            PluginError::failed(format!(
                "{SERVICE} at {} answered {what} ({url}) with unexpected JSON: {e}",
                status::host_of(&url)
            ))
        })
    }

    /// The paths of `closure` whose store hash the cache lacks, in order.
    fn missing(&self, closure: &[String]) -> Result<Vec<String>, PluginError> {
        let mut missing = BTreeSet::new();
        for batch in closure.chunks(QUERY_BATCH) {
            let hashes: Vec<&str> = batch.iter().map(|p| api::store_hash(p)).collect();
            let answer: Vec<String> = self.api_json(
                self.urls.narinfo_bulk(),
                Some(json(&hashes)?),
                "query missing paths",
            )?;
            missing.extend(answer);
        }
        Ok(closure
            .iter()
            .filter(|p| missing.contains(api::store_hash(p)))
            .cloned()
            .collect())
    }

    /// Uploads one path's NAR and creates its narinfo; returns the
    /// compressed size.
    fn push(
        &self,
        info: &PathInfo,
        compression: Compression,
        key: &SecretKey,
    ) -> Result<u64, PluginError> {
        let mut nar = store::open_nar(&info.path, compression).map_err(|e| {
            PluginError::failed(format!(
                "cannot read the NAR of {}: {}",
                info.path,
                e.describe()
            ))
        })?;
        let created: CreateMultipartUpload = self.api_json(
            self.urls.create(api::compression_param(compression)),
            None,
            &format!("start the upload of {}", info.path),
        )?;
        let finished = self
            .upload_parts(&created, &mut nar, &info.path)
            .and_then(|parts| {
                let summary = nar.summary().map_err(|e| {
                    PluginError::failed(format!(
                        "cannot summarise the NAR of {}: {}",
                        info.path,
                        e.describe()
                    ))
                })?;
                let nar_info_create =
                    api::nar_info_create(info, &summary, Some(key)).map_err(PluginError::failed)?;
                Ok((parts, nar_info_create, summary.file_size))
            });
        let (parts, nar_info_create, file_size) = match finished {
            Ok(done) => done,
            Err(error) => {
                self.abort(&created);
                return Err(error);
            }
        };
        let body = CompletedMultipartUpload {
            parts,
            nar_info_create,
        };
        self.api(
            Request::new("POST", self.urls.complete(&created))
                .header("content-type", "application/json")
                .body(json(&body)?),
            &format!("complete the upload of {}", info.path),
        )?;
        Ok(file_size)
    }

    /// Streams the compressed NAR in parts to presigned URLs; returns the
    /// parts with their ETags. One part buffer is reused throughout, so a
    /// push needs about [`PART_SIZE`] of plugin memory whatever the NAR's size.
    fn upload_parts(
        &self,
        created: &CreateMultipartUpload,
        nar: &mut store::NarReader,
        path: &str,
    ) -> Result<Vec<CompletedPart>, PluginError> {
        let mut parts = Vec::new();
        let mut buffer = vec![0u8; PART_SIZE];
        loop {
            let filled = fill(nar, &mut buffer)
                .map_err(|e| PluginError::failed(format!("cannot read the NAR of {path}: {e}")))?;
            if filled == 0 && !parts.is_empty() {
                return Ok(parts);
            }
            let part = &buffer[..filled];
            let part_number = u32::try_from(parts.len() + 1).unwrap_or(u32::MAX);
            let md5 = api::content_md5(part);
            let presigned: api::UploadPart = self.api_json(
                self.urls.part(created, part_number),
                Some(json(&SigningData {
                    content_md5: md5.clone(),
                })?),
                &format!("sign part {part_number} of {path}"),
            )?;
            // The presigned URL carries its own authorisation: the token
            // goes to the API only.
            let put = Request::new("PUT", presigned.upload_url.clone())
                .header("content-type", "application/octet-stream")
                .header("content-md5", md5);
            let what = format!("store part {part_number} of {path}");
            let response = http::send_body(put, &mut &*part, filled as u64)
                .map_err(|e| status::unreachable("the storage host", &presigned.upload_url, &e))
                .and_then(|r| status::check("the storage host", &what, &presigned.upload_url, r))?;
            let e_tag = response.header("etag").map(str::to_owned).ok_or_else(|| {
                PluginError::failed(format!(
                    "the storage host {} returned no ETag for part {part_number} of {path}",
                    status::host_of(&presigned.upload_url)
                ))
            })?;
            parts.push(CompletedPart { part_number, e_tag });
            if filled < PART_SIZE {
                return Ok(parts);
            }
        }
    }

    /// Abandons an upload after a failure; best effort, as the failure
    /// itself is what the step reports.
    fn abort(&self, created: &CreateMultipartUpload) {
        let url = self.urls.abort(created);
        if let Err(e) = self.api(Request::new("POST", url), "abort an upload") {
            log::warn!("could not abort a failed upload: {e:?}");
        }
    }
}

/// `value` as a JSON body.
fn json(value: &impl serde::Serialize) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(value).map_err(PluginError::failed)
}

/// Reads from `nar` until `buffer` is full or the NAR ends, asking the host
/// for at most [`READ_CHUNK`] at a time; returns how much was read.
fn fill(nar: &mut store::NarReader, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let end = (filled + READ_CHUNK).min(buffer.len());
        let n = nar.read(&mut buffer[filled..end])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Sends `request` to `service`, naming the URL when it is unreachable and
/// the status when it refuses.
fn send(service: &str, request: Request, what: &str) -> Result<Response, PluginError> {
    let url = request.url.clone();
    let response = http::send(request).map_err(|e| status::unreachable(service, &url, &e))?;
    status::check(service, what, &url, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_1: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==";

    fn info(path: &str, references: &[&str]) -> PathInfo {
        PathInfo {
            path: path.into(),
            nar_hash: String::new(),
            nar_size: 0,
            references: references.iter().map(|r| (*r).to_owned()).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn settings_have_cachix_defaults_and_clear_errors() {
        let config: Config = [("cache", "demo")].into_iter().collect();
        assert_eq!(
            Settings::read(&config).unwrap(),
            Settings {
                cache: "demo".into(),
                endpoint: DEFAULT_ENDPOINT.into(),
                compression: Compression::Zstd,
            }
        );
        let config: Config = [
            ("cache", "demo"),
            ("endpoint", "http://127.0.0.1:9/"),
            ("compression", "xz"),
        ]
        .into_iter()
        .collect();
        let s = Settings::read(&config).unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(s.compression, Compression::Xz);

        let missing = Settings::read(&Config::default()).unwrap_err();
        assert!(matches!(missing, PluginError::Failed(m) if m.contains("`cache` is required")));
        let config: Config = [("cache", "demo"), ("compression", "gzip")]
            .into_iter()
            .collect();
        let bad = Settings::read(&config).unwrap_err();
        assert!(matches!(bad, PluginError::Failed(m) if m.contains("zstd or xz, not `gzip`")));
    }

    #[test]
    fn keys_in_nix_and_cachix_formats() {
        let nix = parse_key(SECRET_1, "demo").unwrap();
        assert_eq!(nix.name(), "test-key-1");
        let bare = SECRET_1.split_once(':').unwrap().1;
        let cachix = parse_key(&format!("{bare}\n"), "demo").unwrap();
        assert_eq!(cachix.name(), "demo.cachix.org-1");
        assert_eq!(
            nix.sign("x").to_string().split_once(':').unwrap().1,
            cachix.sign("x").to_string().split_once(':').unwrap().1
        );
        let PluginError::Failed(message) = parse_key("not a key", "demo").unwrap_err() else {
            panic!("not permanent")
        };
        assert!(message.contains("secret `cachix-signing-key`"), "{message}");
        assert!(!message.contains("not a key"), "{message}");
    }

    #[test]
    fn references_come_before_their_referrers() {
        let a = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-top";
        let b = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-mid";
        let c = "/nix/store/cccccccccccccccccccccccccccccccc-leaf";
        let ordered = store::dependencies_first(vec![
            info(a, &[b, a]),
            info(
                b,
                &[c, "/nix/store/dddddddddddddddddddddddddddddddd-cached"],
            ),
            info(c, &[c]),
        ]);
        let paths: Vec<&str> = ordered.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, [c, b, a]);
    }

    #[test]
    fn describe_lists_secrets_store_operations_and_settings() {
        let info = Cachix::describe();
        assert_eq!(info.name, "cachix");
        assert_eq!(info.capabilities.secrets, [TOKEN_SECRET, KEY_SECRET]);
        assert_eq!(
            info.capabilities.store,
            [StoreOperation::PathInfo, StoreOperation::NarStream]
        );
        assert!(info.capabilities.hosts.is_empty());
        let keys: Vec<(&str, bool)> = info
            .config
            .iter()
            .map(|k| (k.name.as_str(), k.required))
            .collect();
        assert_eq!(
            keys,
            [("cache", true), ("endpoint", false), ("compression", false)]
        );
        assert!(info.config.iter().all(|k| !k.doc.is_empty()));
    }
}
