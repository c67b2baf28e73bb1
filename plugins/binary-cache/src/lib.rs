//! `binary-cache`: a post-build plugin that uploads a job's outputs, and the
//! paths of their closure the cache lacks, as a Nix binary cache
//! (`nix-cache-info`, `<hash>.narinfo`, `nar/<file hash>.nar[.zst|.xz]`) to
//! an S3-compatible bucket (AWS Signature V4) or a plain HTTP store that
//! accepts `PUT`, signing each narinfo it writes when it has a key.
//!
//! It asks what the cache has before uploading, so a retried or resumed
//! upload writes no object twice; it streams NARs through the host, which
//! compresses and hashes natively, and holds at most a few compressed NARs
//! (each up to `buffer_mib`) in memory. It must not log secrets, and it
//! writes a narinfo only after its NAR and its references' narinfos.

mod plan;
mod target;

use kiln_narinfo::SecretKey;
use kiln_plugin_sdk::http::{self, Pending, Request, Response};
use kiln_plugin_sdk::{
    BuildInfo, Compression, Config, HostErrorKind, NarSummary, PathInfo, PathSignatures,
    PluginError, PluginInfo, PostBuild, StepOutcome, StoreOperation, WorldKind, export_post_build,
    log, secrets, store,
};
use std::collections::BTreeMap;

use crate::target::{S3Settings, Target};

const NAME: &str = "binary-cache";
const SECRET_ACCESS_KEY_ID: &str = "s3-access-key-id";
const SECRET_ACCESS_KEY: &str = "s3-secret-access-key";
const SECRET_SIGNING_KEY: &str = "signing-key";
const SECRET_HTTP_AUTH: &str = "binary-cache-http-auth";
/// HEAD requests in flight at once while asking what the cache has.
const QUERY_BATCH: usize = 32;
/// The most NAR streams the host keeps open for one call.
const MAX_PARALLEL: usize = 4;
/// How much of a NAR stream one read takes.
const READ_CHUNK: u32 = 1 << 20;

struct BinaryCache;

impl PostBuild for BinaryCache {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            NAME,
            env!("CARGO_PKG_VERSION"),
            "Uploads outputs and their missing closure to a Nix binary cache on S3 or HTTP, signed",
        )
        .store(StoreOperation::PathInfo)
        .store(StoreOperation::NarStream)
        .optional_config(
            "bucket",
            "S3 bucket; selects the S3 store (secrets `s3-access-key-id`, `s3-secret-access-key`)",
            None,
        )
        .optional_config(
            "endpoint",
            "S3 endpoint URL, e.g. http://127.0.0.1:8333 (AWS's regional endpoint when unset)",
            None,
        )
        .optional_config("region", "S3 region used in the signature", Some("us-east-1"))
        .optional_config(
            "path_style",
            "S3 path-style URLs (endpoint/bucket/key); default true with a custom endpoint",
            None,
        )
        .optional_config("prefix", "key prefix inside the bucket", Some(""))
        .optional_config(
            "url",
            "root URL of a plain HTTP store that accepts PUT (instead of `bucket`); \
             secret `binary-cache-http-auth` (`user:password`) adds basic auth",
            None,
        )
        .optional_config("compression", "zstd, xz or none", Some("zstd"))
        .optional_config(
            "sign",
            "auto (sign when secret `signing-key` is granted), true (require it) or false",
            Some("auto"),
        )
        .optional_config(
            "upload_closure",
            "also upload the outputs' runtime closure paths the cache lacks",
            Some("true"),
        )
        .optional_config("parallel", "NARs compressed and uploaded at once (1-4)", Some("4"))
        .optional_config(
            "buffer_mib",
            "a compressed NAR up to this size is uploaded from memory; larger ones are streamed in a second pass",
            Some("8"),
        )
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        let settings = Settings::read(&config, &build.project)?;
        let outputs: Vec<String> = build.outputs.iter().map(|o| o.path.clone()).collect();
        let paths = if settings.upload_closure {
            store::closure(&outputs).map_err(|e| {
                PluginError::failed(format!(
                    "cannot read the closure of the outputs: {}",
                    e.describe()
                ))
            })?
        } else {
            outputs.clone()
        };
        let cache = settings.target.name();
        ensure_cache_info(&settings.target)?;
        let missing = query_missing(&settings.target, &paths)?;
        let infos: Vec<PathInfo> = missing
            .iter()
            .map(|p| {
                store::path_info(p).map_err(|e| {
                    PluginError::failed(format!("cannot read path info of {p}: {}", e.describe()))
                })
            })
            .collect::<Result<_, _>>()?;
        let (uploaded, nars_present) = upload_nars(&settings, &infos)?;
        let recorded: BTreeMap<&str, &[String]> = build
            .signatures
            .iter()
            .map(|s| (s.path.as_str(), s.signatures.as_slice()))
            .collect();
        let mut own_signatures = Vec::new();
        let mut nar_bytes = 0u64;
        let mut file_bytes = 0u64;
        for batch in store::dependency_levels(&infos)
            .iter()
            .flat_map(|level| level.chunks(QUERY_BATCH))
        {
            let mut pending = Vec::new();
            for &i in batch {
                let info = &infos[i];
                let summary = &uploaded[i];
                nar_bytes += summary.nar_size;
                file_bytes += summary.file_size;
                let narinfo = plan::narinfo(
                    info,
                    summary,
                    settings.compression_name(),
                    recorded.get(info.path.as_str()).copied().unwrap_or(&[]),
                    settings.key.as_ref(),
                )
                .map_err(PluginError::failed)?;
                if let Some(key) = &settings.key
                    && outputs.contains(&info.path)
                {
                    let own = key.sign(&narinfo.fingerprint().to_string()).to_string();
                    own_signatures.push(PathSignatures {
                        path: info.path.clone(),
                        signatures: vec![own],
                    });
                }
                let request = settings
                    .target
                    .put(&narinfo.file_name(), "text/x-nix-narinfo")
                    .body(narinfo.to_string());
                pending.push((narinfo.file_name(), start(&settings.target, request)?));
            }
            // Every request is waited for, even after one failed.
            let mut first_error = None;
            for (key, pending) in pending {
                let result = wait(&settings.target, pending)
                    .and_then(|r| expect_success(&settings.target, &key, r));
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let present = paths.len() - missing.len();
        if infos.len() <= 20 {
            for info in &infos {
                log::info!("uploaded {}", info.path);
            }
        }
        let resumed = if nars_present > 0 {
            format!(" ({nars_present} NARs from an earlier attempt kept)")
        } else {
            String::new()
        };
        let signed = match &settings.key {
            Some(key) => format!(", signed with `{}`", key.name()),
            None => ", unsigned".to_owned(),
        };
        let message = format!(
            "uploaded {} of {} paths to {cache} ({} NAR, {} {}){signed}; {present} already there{resumed}",
            infos.len(),
            paths.len(),
            mib(nar_bytes),
            mib(file_bytes),
            settings.compression_name(),
        );
        log::info!("{message}");
        Ok(StepOutcome {
            message,
            signatures: own_signatures,
        })
    }
}

export_post_build!(BinaryCache);

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The settings and secrets of one call.
struct Settings {
    target: Target,
    compression: Compression,
    key: Option<SecretKey>,
    upload_closure: bool,
    parallel: usize,
    buffer_limit: usize,
    /// NAR bytes held at most before waiting for uploads to finish.
    memory_cap: usize,
}

impl Settings {
    fn read(config: &Config, project: &str) -> Result<Self, PluginError> {
        let target = match (config.get("bucket"), config.get("url")) {
            (Some(_), Some(_)) => {
                return Err(PluginError::failed(
                    "set either `bucket` (S3) or `url` (HTTP store), not both",
                ));
            }
            (Some(bucket), None) => {
                let key_id = secret_text(SECRET_ACCESS_KEY_ID, project)?;
                let secret = secret_text(SECRET_ACCESS_KEY, project)?;
                Target::s3(
                    &S3Settings {
                        bucket,
                        endpoint: config.get("endpoint"),
                        region: config.get("region").unwrap_or("us-east-1"),
                        path_style: config.get_parsed("path_style")?,
                        prefix: config.get("prefix").unwrap_or(""),
                    },
                    rusty_s3::Credentials::new(key_id.trim(), secret.trim()),
                )
                .map_err(PluginError::failed)?
            }
            (None, Some(url)) => {
                let authorization = optional_secret(SECRET_HTTP_AUTH, project)?
                    .map(|text| format!("Basic {}", base64(text.trim().as_bytes())));
                Target::http(url, authorization).map_err(PluginError::failed)?
            }
            (None, None) => {
                return Err(PluginError::failed(
                    "no cache configured: set `bucket` (and `endpoint`, `region`) for S3, \
                     or `url` for a plain HTTP store",
                ));
            }
        };
        let compression = match config.get("compression").unwrap_or("zstd") {
            "zstd" => Compression::Zstd,
            "xz" => Compression::Xz,
            "none" => Compression::None,
            other => {
                return Err(PluginError::failed(format!(
                    "setting `compression` = `{other}`: expected zstd, xz or none"
                )));
            }
        };
        let key = match config.get("sign").unwrap_or("auto") {
            "false" => None,
            "true" => Some(parse_key(&secret_text(SECRET_SIGNING_KEY, project)?)?),
            "auto" => optional_secret(SECRET_SIGNING_KEY, project)?
                .map(|t| parse_key(&t))
                .transpose()?,
            other => {
                return Err(PluginError::failed(format!(
                    "setting `sign` = `{other}`: expected auto, true or false"
                )));
            }
        };
        let parallel: usize = config.get_parsed("parallel")?.unwrap_or(MAX_PARALLEL);
        if !(1..=MAX_PARALLEL).contains(&parallel) {
            return Err(PluginError::failed(format!(
                "setting `parallel` = {parallel}: expected 1 to {MAX_PARALLEL}"
            )));
        }
        let buffer_mib: usize = config.get_parsed("buffer_mib")?.unwrap_or(8);
        Ok(Settings {
            target,
            compression,
            key,
            upload_closure: config.get_bool("upload_closure", true)?,
            parallel,
            buffer_limit: buffer_mib.clamp(1, 256) << 20,
            // Within the default 64 MiB of plugin memory with the default
            // `buffer_mib`; a larger buffer needs a larger `memory_mib`.
            memory_cap: (buffer_mib.clamp(1, 256) << 20) * 3,
        })
    }

    fn compression_name(&self) -> &'static str {
        match self.compression {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }
}

/// A secret that must be there, as text, with an error naming it, the
/// plugin and the project when it is not granted or not configured.
fn secret_text(name: &str, project: &str) -> Result<String, PluginError> {
    match optional_secret(name, project)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(PluginError::failed(format!(
            "secret `{name}` is needed but plugin `{NAME}` has no value for it in project \
             `{project}`: grant it under [grants.{NAME}] secrets and configure it under \
             [secrets.{name}] in kiln.toml"
        ))),
    }
}

/// A secret's text when it is granted and configured; `None` when it is
/// not granted or not set; an error when it is not text.
fn optional_secret(name: &str, project: &str) -> Result<Option<String>, PluginError> {
    match secrets::get(name) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
            PluginError::failed(format!(
                "secret `{name}` for project `{project}` is not text"
            ))
        }),
        Err(e) if matches!(e.kind, HostErrorKind::Denied | HostErrorKind::NotFound) => Ok(None),
        Err(e) => Err(PluginError::failed(format!(
            "cannot read secret `{name}` for project `{project}`: {}",
            e.describe()
        ))),
    }
}

fn parse_key(text: &str) -> Result<SecretKey, PluginError> {
    SecretKey::parse(text.trim()).map_err(|e| {
        PluginError::failed(format!(
            "secret `{SECRET_SIGNING_KEY}` is not a Nix secret key ({e}); expected `name:base64` \
             as `nix key generate-secret` writes"
        ))
    })
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Sends without waiting, with a message naming the cache on failure.
fn start(target: &Target, request: Request) -> Result<Pending, PluginError> {
    http::start(request).map_err(|e| unreachable(target, &e))
}

fn wait(target: &Target, pending: Pending) -> Result<Response, PluginError> {
    pending.wait().map_err(|e| unreachable(target, &e))
}

/// Seconds before a step whose cache could not be reached is run again.
const UNREACHABLE_RETRY_SECS: u32 = 2;

/// A request that got no answer. A transport failure (refused, reset, a
/// broken answer) asks the host to run the step again, which is safe since
/// every upload asks the cache first; a refusal by the grant or a bad URL
/// is final.
fn unreachable(target: &Target, error: &http::HttpError) -> PluginError {
    let message = format!("cannot reach the cache {}: {error}", target.name());
    match error {
        http::HttpError::Failed(_) => PluginError::retry_after(UNREACHABLE_RETRY_SECS, message),
        _ => PluginError::failed(message),
    }
}

/// A 2xx, or an error: 429 and 5xx ask to be retried (honouring
/// `Retry-After`), 401/403 name the credentials, anything else the status.
fn expect_success(target: &Target, key: &str, response: Response) -> Result<Response, PluginError> {
    match response.status {
        200..=299 => Ok(response),
        status => Err(status_error(target, key, &response, status)),
    }
}

fn status_error(target: &Target, key: &str, response: &Response, status: u16) -> PluginError {
    let detail = String::from_utf8_lossy(&response.body);
    let detail = detail.trim();
    let detail: String = detail.chars().take(300).collect();
    let cache = target.name();
    match status {
        429 | 500..=599 => {
            let seconds = response
                .header("retry-after")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(10);
            let reason = format!("the cache {cache} answered {status} for `{key}`: {detail}");
            log::warn!("{reason}; asking to retry in {seconds} s");
            PluginError::retry_after(seconds, reason)
        }
        401 | 403 => PluginError::failed(format!(
            "the cache {cache} refused `{key}` with {status}: check the credentials granted for it ({detail})"
        )),
        _ => PluginError::failed(format!(
            "the cache {cache} answered {status} for `{key}`: {detail}"
        )),
    }
}

/// Writes `nix-cache-info` when the cache has none, so Nix can substitute
/// from it.
fn ensure_cache_info(target: &Target) -> Result<(), PluginError> {
    let response = wait(target, start(target, target.head("nix-cache-info"))?)?;
    match response.status {
        200..=299 => Ok(()),
        403 | 404 => {
            let request = target
                .put("nix-cache-info", "text/x-nix-cache-info")
                .body("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n");
            let response = wait(target, start(target, request)?)?;
            expect_success(target, "nix-cache-info", response).map(drop)
        }
        status => Err(status_error(target, "nix-cache-info", &response, status)),
    }
}

/// The paths whose narinfo the cache lacks, in the order given.
fn query_missing(target: &Target, paths: &[String]) -> Result<Vec<String>, PluginError> {
    let mut missing = Vec::new();
    for batch in paths.chunks(QUERY_BATCH) {
        let pending: Vec<(&String, String, Pending)> = batch
            .iter()
            .map(|path| {
                let key = format!("{}.narinfo", plan::hash_part(path));
                let request = target.head(&key);
                Ok((path, key, start(target, request)?))
            })
            .collect::<Result<_, PluginError>>()?;
        for (path, key, pending) in pending {
            let response = wait(target, pending)?;
            match response.status {
                200..=299 => {}
                403 | 404 | 410 => missing.push(path.clone()),
                status => return Err(status_error(target, &key, &response, status)),
            }
        }
    }
    Ok(missing)
}

/// A compressed NAR held in memory as the chunks the host handed over.
#[derive(Default)]
struct Chunks {
    chunks: Vec<Vec<u8>>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Vec<u8>) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// The bytes in order, as a reader.
    fn reader(&self) -> ChunksReader<'_> {
        ChunksReader {
            chunks: &self.chunks,
            index: 0,
            offset: 0,
        }
    }
}

struct ChunksReader<'a> {
    chunks: &'a [Vec<u8>],
    index: usize,
    offset: usize,
}

impl std::io::Read for ChunksReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(chunk) = self.chunks.get(self.index) {
            if self.offset < chunk.len() {
                let n = buf.len().min(chunk.len() - self.offset);
                buf[..n].copy_from_slice(&chunk[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            self.index += 1;
            self.offset = 0;
        }
        Ok(0)
    }
}

/// A NAR being read from the host into memory.
struct Reading {
    index: usize,
    reader: store::NarReader,
    /// The chunks read so far, as the host handed them (no regrowing).
    buffer: Chunks,
    /// Larger than the buffer limit: drained now, streamed in a second pass.
    overflow: bool,
}

/// A request in flight for one NAR.
enum InFlight {
    /// Asking whether the NAR is already there (an earlier, interrupted
    /// upload may have written it); the body waits for the answer.
    Checking {
        key: String,
        pending: Pending,
        body: Chunks,
    },
    /// Writing it.
    Putting { key: String, pending: Pending },
}

impl InFlight {
    fn is_ready(&self) -> bool {
        match self {
            InFlight::Checking { pending, .. } | InFlight::Putting { pending, .. } => {
                pending.is_ready()
            }
        }
    }
}

/// Uploads the NAR of every path in `infos` the cache lacks, up to
/// `parallel` at once: the host compresses several streams on its threads
/// while this reads them round-robin; each finished NAR is looked up by its
/// key and `PUT` when absent, without waiting, and the responses are
/// collected as they arrive. Returns each NAR's summary and how many NARs
/// were already there.
fn upload_nars(
    settings: &Settings,
    infos: &[PathInfo],
) -> Result<(Vec<NarSummary>, usize), PluginError> {
    let mut in_flight: Vec<InFlight> = Vec::new();
    let result = upload_nars_with(settings, infos, &mut in_flight);
    if result.is_err() {
        // Leave no request running unobserved behind a failure.
        for request in in_flight.drain(..) {
            let (InFlight::Checking { pending, .. } | InFlight::Putting { pending, .. }) = request;
            let _ = pending.wait();
        }
    }
    result
}

/// Bytes held in memory for NARs read or waiting to be sent.
fn held(reading: &[Reading], in_flight: &[InFlight]) -> usize {
    let read: usize = reading.iter().map(|r| r.buffer.len).sum();
    let waiting: usize = in_flight
        .iter()
        .map(|f| match f {
            InFlight::Checking { body, .. } => body.len,
            InFlight::Putting { .. } => 0,
        })
        .sum();
    read + waiting
}

fn upload_nars_with(
    settings: &Settings,
    infos: &[PathInfo],
    in_flight: &mut Vec<InFlight>,
) -> Result<(Vec<NarSummary>, usize), PluginError> {
    let target = &settings.target;
    let mut summaries: Vec<Option<NarSummary>> = vec![None; infos.len()];
    let mut next = 0;
    let mut reading: Vec<Reading> = Vec::new();
    let mut present = 0;
    loop {
        // Bound memory: with too much held, let the waiting NARs go first.
        if held(&reading, in_flight) > settings.memory_cap {
            present += collect(target, in_flight, 0)?;
        }
        while reading.len() < settings.parallel && next < infos.len() {
            reading.push(Reading {
                index: next,
                reader: open(&infos[next].path, settings.compression)?,
                buffer: Chunks::default(),
                overflow: false,
            });
            next += 1;
        }
        if reading.is_empty() {
            break;
        }
        let mut i = 0;
        while i < reading.len() {
            let r = &mut reading[i];
            let chunk = r
                .reader
                .read_chunk(READ_CHUNK)
                .map_err(|e| nar_error(&infos[r.index], &e.describe()))?;
            if !chunk.is_empty() {
                if !r.overflow && r.buffer.len + chunk.len() > settings.buffer_limit {
                    r.overflow = true;
                    r.buffer = Chunks::default();
                }
                if !r.overflow {
                    r.buffer.push(chunk);
                }
                i += 1;
                continue;
            }
            let done = reading.swap_remove(i);
            let info = &infos[done.index];
            let summary = done
                .reader
                .summary()
                .map_err(|e| nar_error(info, &e.describe()))?;
            drop(done.reader);
            let key = kiln_narinfo::NarInfo::nar_url(
                &kiln_narinfo::NarHash::parse(&summary.file_hash)
                    .map_err(|e| nar_error(info, &e.to_string()))?,
                settings.compression_name(),
            );
            let check = start(target, target.head(&key))?;
            if done.overflow {
                // Too large to keep: ask now, then stream a second pass
                // straight into the PUT, the key being known.
                if exists(target, &key, wait(target, check)?)? {
                    present += 1;
                } else {
                    let mut again = open(&info.path, settings.compression)?;
                    let put = target.put(&key, "application/x-nix-nar");
                    let pending = http::start_body(put, &mut again, summary.file_size)
                        .map_err(|e| unreachable(target, &e))?;
                    let second = again
                        .summary()
                        .map_err(|e| nar_error(info, &e.describe()))?;
                    if second.file_hash != summary.file_hash {
                        // The object's bytes do not match its name: remove it
                        // so that a retry does not take it as uploaded.
                        let _ = pending.wait();
                        let _ = http::send(target.delete(&key));
                        return Err(nar_error(
                            info,
                            "compressing it twice gave different bytes, so it cannot be streamed; \
                             raise `buffer_mib` above its compressed size",
                        ));
                    }
                    in_flight.push(InFlight::Putting { key, pending });
                }
            } else {
                in_flight.push(InFlight::Checking {
                    key,
                    pending: check,
                    body: done.buffer,
                });
            }
            summaries[done.index] = Some(summary);
        }
        present += collect(target, in_flight, settings.parallel * 2)?;
    }
    present += collect(target, in_flight, 0)?;
    debug_assert!(in_flight.is_empty());
    let summaries = summaries
        .into_iter()
        .map(|s| s.expect("every NAR was read to its end"))
        .collect();
    Ok((summaries, present))
}

/// Whether a `HEAD` found the object, or an error.
fn exists(target: &Target, key: &str, response: Response) -> Result<bool, PluginError> {
    match response.status {
        200..=299 => Ok(true),
        // S3 answers 403 for a missing key to a client without ListBucket;
        // wrong credentials are reported by the PUT that follows.
        403 | 404 | 410 => Ok(false),
        status => Err(status_error(target, key, &response, status)),
    }
}

/// Handles the responses that have arrived, waiting for the oldest until at
/// most `keep` requests remain; a NAR found absent is `PUT` now. Returns how
/// many NARs were already there.
fn collect(
    target: &Target,
    in_flight: &mut Vec<InFlight>,
    keep: usize,
) -> Result<usize, PluginError> {
    let mut present = 0;
    let mut i = 0;
    while i < in_flight.len() {
        if !in_flight[i].is_ready() && in_flight.len() <= keep {
            i += 1;
            continue;
        }
        match in_flight.remove(i) {
            InFlight::Checking { key, pending, body } => {
                if exists(target, &key, wait(target, pending)?)? {
                    present += 1;
                } else {
                    let put = target.put(&key, "application/x-nix-nar");
                    let length = body.len as u64;
                    let pending = http::start_body(put, &mut body.reader(), length)
                        .map_err(|e| unreachable(target, &e))?;
                    // Revisited next: waited for when over `keep`.
                    in_flight.insert(i, InFlight::Putting { key, pending });
                }
            }
            InFlight::Putting { key, pending } => {
                expect_success(target, &key, wait(target, pending)?)?;
            }
        }
    }
    Ok(present)
}

fn open(path: &str, compression: Compression) -> Result<store::NarReader, PluginError> {
    store::open_nar(path, compression).map_err(|e| {
        PluginError::failed(format!("cannot open the NAR of {path}: {}", e.describe()))
    })
}

fn nar_error(info: &PathInfo, error: &str) -> PluginError {
    PluginError::failed(format!("reading the NAR of {} failed: {error}", info.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
