//! Where the cache lives: an S3-compatible bucket (requests presigned with
//! AWS Signature V4 by `rusty-s3`) or a plain HTTP store that accepts `PUT`,
//! as Nix's `http://` store writes. Both are addressed by object keys
//! relative to the cache root (`nix-cache-info`, `<hash>.narinfo`,
//! `nar/<file hash>.nar.zst`).
//!
//! This module builds requests; it must not send them or decide what to
//! upload.

use std::time::Duration;

use kiln_plugin_sdk::http::Request;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// How long a presigned S3 request stays valid.
const PRESIGN_FOR: Duration = Duration::from_secs(3600);

/// A binary cache's storage.
pub enum Target {
    /// An S3 bucket.
    S3 {
        /// The bucket, with its endpoint and region.
        bucket: Bucket,
        /// Access key and secret.
        credentials: Credentials,
        /// Key prefix, empty or ending in `/`.
        prefix: String,
    },
    /// A plain HTTP store.
    Http {
        /// The cache root, without a trailing `/`.
        base: String,
        /// An `Authorization` header value, when configured.
        authorization: Option<String>,
    },
}

/// The S3 part of the settings.
pub struct S3Settings<'a> {
    /// Bucket name.
    pub bucket: &'a str,
    /// `http(s)://host[:port]`; AWS's regional endpoint when `None`.
    pub endpoint: Option<&'a str>,
    /// Region for the signature.
    pub region: &'a str,
    /// Path-style (`endpoint/bucket/key`) rather than virtual-host URLs.
    pub path_style: Option<bool>,
    /// Key prefix inside the bucket.
    pub prefix: &'a str,
}

impl Target {
    /// An S3 target, or why the settings cannot make one.
    pub fn s3(settings: &S3Settings<'_>, credentials: Credentials) -> Result<Self, String> {
        let endpoint = settings.endpoint.map_or_else(
            || format!("https://s3.{}.amazonaws.com", settings.region),
            |e| e.trim_end_matches('/').to_owned(),
        );
        let url: url::Url = endpoint.parse().map_err(|e| {
            format!("setting `endpoint` = `{endpoint}` is not a URL ({e}); expected http(s)://host[:port]")
        })?;
        // A custom endpoint (MinIO, SeaweedFS, Garage…) is usually reached
        // path-style; AWS itself prefers virtual-host style.
        let style = if settings.path_style.unwrap_or(settings.endpoint.is_some()) {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            url,
            style,
            settings.bucket.to_owned(),
            settings.region.to_owned(),
        )
        .map_err(|e| {
            format!(
                "cannot address bucket `{}` at {endpoint}: {e}",
                settings.bucket
            )
        })?;
        let prefix = settings.prefix.trim_matches('/');
        Ok(Target::S3 {
            bucket,
            credentials,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// A plain HTTP target rooted at `url`.
    pub fn http(url: &str, authorization: Option<String>) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "setting `url` = `{url}` is not an http(s):// URL of the cache root"
            ));
        }
        Ok(Target::Http {
            base: url.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// The cache as users name it in messages, e.g. `s3://bucket/prefix`
    /// or the HTTP root.
    pub fn name(&self) -> String {
        match self {
            Target::S3 { bucket, prefix, .. } => {
                format!(
                    "s3://{}/{} at {}",
                    bucket.name(),
                    prefix,
                    bucket.base_url().origin().ascii_serialization()
                )
            }
            Target::Http { base, .. } => base.clone(),
        }
    }

    /// `HEAD` of `key`.
    pub fn head(&self, key: &str) -> Request {
        match self {
            Target::S3 {
                bucket,
                credentials,
                prefix,
            } => Request::new(
                "HEAD",
                bucket
                    .head_object(Some(credentials), &format!("{prefix}{key}"))
                    .sign(PRESIGN_FOR)
                    .to_string(),
            ),
            Target::Http {
                base,
                authorization,
            } => with_auth(Request::new("HEAD", format!("{base}/{key}")), authorization),
        }
    }

    /// `DELETE` of `key`.
    pub fn delete(&self, key: &str) -> Request {
        match self {
            Target::S3 {
                bucket,
                credentials,
                prefix,
            } => Request::new(
                "DELETE",
                bucket
                    .delete_object(Some(credentials), &format!("{prefix}{key}"))
                    .sign(PRESIGN_FOR)
                    .to_string(),
            ),
            Target::Http {
                base,
                authorization,
            } => with_auth(
                Request::new("DELETE", format!("{base}/{key}")),
                authorization,
            ),
        }
    }

    /// `PUT` of `key` with `content_type`; the caller adds the body.
    pub fn put(&self, key: &str, content_type: &str) -> Request {
        let request = match self {
            Target::S3 {
                bucket,
                credentials,
                prefix,
            } => Request::new(
                "PUT",
                bucket
                    .put_object(Some(credentials), &format!("{prefix}{key}"))
                    .sign(PRESIGN_FOR)
                    .to_string(),
            ),
            Target::Http {
                base,
                authorization,
            } => with_auth(Request::new("PUT", format!("{base}/{key}")), authorization),
        };
        request.header("content-type", content_type)
    }
}

fn with_auth(request: Request, authorization: &Option<String>) -> Request {
    match authorization {
        Some(value) => request.header("authorization", value.clone()),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, path_style: Option<bool>, prefix: &str) -> Target {
        Target::s3(
            &S3Settings {
                bucket: "cache",
                endpoint,
                region: "eu-west-1",
                path_style,
                prefix,
            },
            Credentials::new("AKID", "secret"),
        )
        .unwrap()
    }

    #[test]
    fn custom_endpoints_are_path_style_and_presigned() {
        let target = s3(Some("http://127.0.0.1:8333/"), None, "/ci/");
        let request = target.put("nar/abc.nar.zst", "application/x-nix-nar");
        assert_eq!(request.method, "PUT");
        assert!(
            request
                .url
                .starts_with("http://127.0.0.1:8333/cache/ci/nar/abc.nar.zst?"),
            "{}",
            request.url
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKID%2F",
            "%2Feu-west-1%2Fs3%2Faws4_request",
            "X-Amz-Signature=",
        ] {
            assert!(request.url.contains(part), "{part} in {}", request.url);
        }
        assert!(!request.url.contains("secret"));
        assert_eq!(target.name(), "s3://cache/ci/ at http://127.0.0.1:8333");
    }

    #[test]
    fn aws_defaults_to_virtual_host_style() {
        let target = s3(None, None, "");
        let request = target.head("nix-cache-info");
        assert!(
            request
                .url
                .starts_with("https://cache.s3.eu-west-1.amazonaws.com/nix-cache-info?"),
            "{}",
            request.url
        );
        let forced = s3(Some("https://minio.example"), Some(false), "");
        assert!(
            forced
                .head("x")
                .url
                .starts_with("https://cache.minio.example/x?")
        );
    }

    #[test]
    fn http_store_puts_under_its_root_with_auth() {
        let target =
            Target::http("http://127.0.0.1:9000/cache/", Some("Basic dTpw".into())).unwrap();
        let request = target.put("abc.narinfo", "text/x-nix-narinfo");
        assert_eq!(request.url, "http://127.0.0.1:9000/cache/abc.narinfo");
        assert!(
            request
                .headers
                .contains(&("authorization".into(), "Basic dTpw".into()))
        );
        assert!(
            request
                .headers
                .contains(&("content-type".into(), "text/x-nix-narinfo".into()))
        );
        assert!(Target::http("ftp://x", None).is_err());
    }
}
