//! `attic`: a post-build plugin that pushes a build's outputs, and every
//! path of their closure the cache lacks, to an Attic server the way
//! `attic push` does: one `get-missing-paths` query, then one
//! `upload-path` per missing path with the uncompressed NAR streamed as the
//! body (Attic compresses and deduplicates server-side) and the narinfo in
//! a header.
//!
//! Signatures sent are the store's plus those earlier steps recorded for
//! the outputs (`BuildInfo.signatures`). It asks for secret `attic-token`
//! (a Bearer token). It must not upload what the cache already has, add
//! anything to the local store, or log the token.

mod api;

use std::collections::BTreeSet;
use std::io::Read as _;

use kiln_plugin_sdk::http::{self, Request, Response};
use kiln_plugin_sdk::status;
use kiln_plugin_sdk::{
    BuildInfo, Compression, Config, PathInfo, PluginError, PluginInfo, PostBuild, StepOutcome,
    StoreOperation, WorldKind, export_post_build, log, secrets, store,
};

use crate::api::{GetMissingPaths, MissingPaths, UploadPathNarInfo, UploadPathResult};

/// The secret holding the Attic token.
const TOKEN_SECRET: &str = "attic-token";
/// The name errors give the service.
const SERVICE: &str = "Attic";

struct Attic;

impl PostBuild for Attic {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "attic",
            env!("CARGO_PKG_VERSION"),
            "Pushes the outputs and the closure paths an Attic cache lacks",
        )
        .secret(TOKEN_SECRET)
        .store(StoreOperation::PathInfo)
        .store(StoreOperation::NarStream)
        .required_config(
            "endpoint",
            "Attic server URL, e.g. https://attic.example.com/; grant its host in kiln.toml",
        )
        .required_config("cache", "Name of the Attic cache to push to")
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let settings = Settings::read(&config)?;
        let token = secrets::get_string(TOKEN_SECRET).map_err(|e| {
            PluginError::failed(format!(
                "cannot read secret `{TOKEN_SECRET}`: {}",
                e.describe()
            ))
        })?;
        let client = Client {
            endpoint: settings.endpoint,
            cache: settings.cache,
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
        let mut deduplicated = 0;
        for info in store::dependencies_first(infos) {
            let is_output = outputs.contains(&info.path);
            let sigs = signatures(&info, &build);
            let upload = api::upload_info(
                &client.cache,
                &info,
                sigs,
                is_output.then_some(build.system.as_str()),
            )
            .map_err(PluginError::failed)?;
            let result = client.upload(&info, &upload)?;
            let kind = result.as_ref().map_or("Uploaded", |r| r.kind.as_str());
            if kind == "Deduplicated" {
                deduplicated += 1;
            }
            log::info!(
                "pushed {} ({} bytes of NAR, {}) to Attic cache `{}`",
                info.path,
                info.nar_size,
                kind.to_ascii_lowercase(),
                client.cache
            );
        }
        Ok(StepOutcome::message(format!(
            "pushed {} path{} to Attic cache `{}` ({deduplicated} deduplicated); {} of {} closure paths were already there",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            client.cache,
            closure.len() - missing.len(),
            closure.len()
        )))
    }
}

export_post_build!(Attic);

/// The step's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    endpoint: String,
    cache: String,
}

impl Settings {
    fn read(config: &Config) -> Result<Self, PluginError> {
        let endpoint = config.require("endpoint")?.trim();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(PluginError::failed(format!(
                "configuration key `endpoint` must be an http(s):// URL, not `{endpoint}`"
            )));
        }
        let cache = config.require("cache")?.trim();
        // Attic's cache names: a letter or digit, then up to 49 of those or `-_+`.
        let valid = cache.len() <= 50
            && cache
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && cache
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c));
        if !valid {
            return Err(PluginError::failed(format!(
                "configuration key `cache` must be an Attic cache name (letters, digits, `-`, `_`, `+`; \
                 at most 50), not `{cache}`"
            )));
        }
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            cache: cache.to_owned(),
        })
    }
}

/// The store's signatures of `info`'s path, then those recorded by earlier
/// steps for it, each once.
fn signatures(info: &PathInfo, build: &BuildInfo) -> Vec<String> {
    let recorded = build
        .signatures
        .iter()
        .filter(|s| s.path == info.path)
        .flat_map(|s| s.signatures.iter());
    let mut seen = BTreeSet::new();
    info.signatures
        .iter()
        .chain(recorded)
        .filter(|s| seen.insert(s.as_str()))
        .cloned()
        .collect()
}

/// Calls to one Attic server for one cache.
struct Client {
    endpoint: String,
    cache: String,
    token: String,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}/_api/v1/{path}", self.endpoint)
    }

    fn authorized(&self, request: Request) -> Request {
        // Attic's client writes the scheme in lower case.
        request.header("authorization", format!("bearer {}", self.token))
    }

    /// The paths of `closure` whose store hash the cache lacks, in order.
    fn missing(&self, closure: &[String]) -> Result<Vec<String>, PluginError> {
        let url = self.url("get-missing-paths");
        let body = GetMissingPaths {
            cache: &self.cache,
            store_path_hashes: closure.iter().map(|p| api::store_hash(p)).collect(),
        };
        let body = serde_json::to_vec(&body).map_err(PluginError::failed)?;
        let request = self.authorized(
            Request::new("POST", url.clone())
                .header("content-type", "application/json")
                .body(body),
        );
        let response = send(request, "query missing paths")?;
        let answer: MissingPaths = serde_json::from_slice(&response.body).map_err(|e| {
            PluginError::failed(format!(
                "{SERVICE} at {} answered the missing-path query ({url}) with unexpected JSON: {e}",
                status::host_of(&url)
            ))
        })?;
        let missing: BTreeSet<String> = answer.missing_paths.into_iter().collect();
        Ok(closure
            .iter()
            .filter(|p| missing.contains(api::store_hash(p)))
            .cloned()
            .collect())
    }

    /// Streams one path's NAR with its narinfo.
    fn upload(
        &self,
        info: &PathInfo,
        upload: &UploadPathNarInfo,
    ) -> Result<Option<UploadPathResult>, PluginError> {
        let url = self.url("upload-path");
        let json = serde_json::to_string(upload).map_err(PluginError::failed)?;
        let mut nar = store::open_nar(&info.path, Compression::None).map_err(|e| {
            PluginError::failed(format!(
                "cannot read the NAR of {}: {}",
                info.path,
                e.describe()
            ))
        })?;
        let what = format!("upload {}", info.path);
        let request = self.authorized(
            Request::new("PUT", url.clone()).header("content-type", "application/octet-stream"),
        );
        let response = if json.len() < api::PREAMBLE_THRESHOLD {
            let request = request.header(api::NAR_INFO_HEADER, json);
            send_streamed(request, &mut nar, info.nar_size, &what)?
        } else {
            let request = request.header(api::PREAMBLE_SIZE_HEADER, json.len().to_string());
            let length = json.len() as u64 + info.nar_size;
            let mut body = json.as_bytes().chain(&mut nar);
            send_streamed(request, &mut body, length, &what)?
        };
        check_streamed(info, &mut nar)?;
        Ok(serde_json::from_slice(&response.body).ok())
    }
}

/// Confirms the NAR ended where the path info said, with the store's hash.
fn check_streamed(info: &PathInfo, nar: &mut store::NarReader) -> Result<(), PluginError> {
    let fail = |what: String| {
        PluginError::failed(format!(
            "{}: {what}; repair the store with `nix-store --verify --check-contents --repair`",
            info.path
        ))
    };
    let rest = nar
        .read_chunk(1)
        .map_err(|e| fail(format!("cannot finish reading the NAR: {}", e.describe())))?;
    if !rest.is_empty() {
        return Err(fail(format!(
            "the NAR is longer than the {} bytes the store records",
            info.nar_size
        )));
    }
    let summary = nar
        .summary()
        .map_err(|e| fail(format!("cannot summarise the NAR: {}", e.describe())))?;
    let streamed = kiln_narinfo::NarHash::parse(&summary.nar_hash).ok();
    let recorded = kiln_narinfo::NarHash::parse(&info.nar_hash).ok();
    if streamed.is_none() || streamed != recorded || summary.nar_size != info.nar_size {
        return Err(fail(format!(
            "the streamed NAR ({}, {} bytes) does not match the store's ({}, {} bytes)",
            summary.nar_hash, summary.nar_size, info.nar_hash, info.nar_size
        )));
    }
    Ok(())
}

/// Sends `request`, naming the URL when it is unreachable and the status
/// when it refuses.
fn send(request: Request, what: &str) -> Result<Response, PluginError> {
    let url = request.url.clone();
    let response = http::send(request).map_err(|e| status::unreachable(SERVICE, &url, &e))?;
    status::check(SERVICE, what, &url, response)
}

/// [`send`] with a body of `length` bytes streamed from `body`.
fn send_streamed(
    request: Request,
    body: &mut dyn std::io::Read,
    length: u64,
    what: &str,
) -> Result<Response, PluginError> {
    let url = request.url.clone();
    let response = http::send_body(request, body, length)
        .map_err(|e| status::unreachable(SERVICE, &url, &e))?;
    status::check(SERVICE, what, &url, response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::{Output, PathSignatures};

    fn info(path: &str, references: &[&str], sigs: &[&str]) -> PathInfo {
        PathInfo {
            path: path.into(),
            nar_hash: String::new(),
            nar_size: 0,
            references: references.iter().map(|r| (*r).to_owned()).collect(),
            deriver: None,
            signatures: sigs.iter().map(|s| (*s).to_owned()).collect(),
            ca: None,
        }
    }

    fn build(signatures: Vec<PathSignatures>) -> BuildInfo {
        BuildInfo {
            project: "p".into(),
            attr: "a".into(),
            system: "x86_64-linux".into(),
            drv_path: String::new(),
            outputs: vec![Output {
                name: "out".into(),
                path: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-top".into(),
            }],
            branch: None,
            pull_request: None,
            is_default_branch: true,
            rev: None,
            cached: false,
            signatures,
        }
    }

    #[test]
    fn settings_are_required_and_checked() {
        let config: Config = [("endpoint", "http://127.0.0.1:9/"), ("cache", "demo")]
            .into_iter()
            .collect();
        assert_eq!(
            Settings::read(&config).unwrap(),
            Settings {
                endpoint: "http://127.0.0.1:9".into(),
                cache: "demo".into()
            }
        );
        let no_cache: Config = [("endpoint", "http://h/")].into_iter().collect();
        assert!(matches!(
            Settings::read(&no_cache).unwrap_err(),
            PluginError::Failed(m) if m.contains("`cache` is required")
        ));
        let bad: Config = [("endpoint", "http://h/"), ("cache", "a/b")]
            .into_iter()
            .collect();
        assert!(matches!(
            Settings::read(&bad).unwrap_err(),
            PluginError::Failed(m) if m.contains("not `a/b`")
        ));
        let not_url: Config = [("endpoint", "attic.example.com"), ("cache", "c")]
            .into_iter()
            .collect();
        assert!(matches!(
            Settings::read(&not_url).unwrap_err(),
            PluginError::Failed(m) if m.contains("http(s)://")
        ));
    }

    #[test]
    fn recorded_signatures_join_the_stores_once() {
        let top = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-top";
        let b = build(vec![
            PathSignatures {
                path: top.into(),
                signatures: vec!["k1:AAAA".into(), "k2:BBBB".into()],
            },
            PathSignatures {
                path: "/nix/store/other".into(),
                signatures: vec!["k3:CCCC".into()],
            },
        ]);
        assert_eq!(
            signatures(&info(top, &[], &["k1:AAAA"]), &b),
            ["k1:AAAA", "k2:BBBB"]
        );
    }

    #[test]
    fn references_come_before_their_referrers() {
        let a = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-top";
        let b = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-leaf";
        let ordered = store::dependencies_first(vec![info(a, &[b, a], &[]), info(b, &[], &[])]);
        let paths: Vec<&str> = ordered.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, [b, a]);
    }

    #[test]
    fn describe_lists_the_token_store_operations_and_settings() {
        let info = Attic::describe();
        assert_eq!(info.name, "attic");
        assert_eq!(info.capabilities.secrets, [TOKEN_SECRET]);
        assert_eq!(
            info.capabilities.store,
            [StoreOperation::PathInfo, StoreOperation::NarStream]
        );
        let keys: Vec<(&str, bool)> = info
            .config
            .iter()
            .map(|k| (k.name.as_str(), k.required))
            .collect();
        assert_eq!(keys, [("endpoint", true), ("cache", true)]);
    }
}
