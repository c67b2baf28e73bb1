//! GitHub App mode: the App's RS256 JWT, the installation that covers a
//! repository, and installation access tokens. Instances are fresh for every
//! call, so installation ids and tokens live in the host's key-value cache:
//! `installation/{owner}/{repo}` (an hour) and `installation-token/{id}`
//! (until five minutes before GitHub's `expires_at`).
//!
//! The JWT's claims, token records and timestamps are pure and tested
//! natively. This module must never log a token, the JWT or the key, and
//! sends them only to the `api` setting's host.

use std::cell::RefCell;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln_plugin_sdk::{PluginError, Repository, kv, log, secrets};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Api, Credential};

/// The secret holding the App's private key (PEM, as GitHub hands it out).
pub const KEY_SECRET: &str = "github-app-private-key";
/// How far the JWT's `iat` lies in the past, for clock drift (GitHub's advice).
const JWT_BACKDATE_SECS: u64 = 60;
/// How long the JWT is valid after now; GitHub refuses more than ten minutes.
const JWT_LIFETIME_SECS: u64 = 9 * 60;
/// How long a repository's installation id is kept.
pub const INSTALLATION_TTL_SECS: u32 = 3600;
/// A cached installation token is dropped this long before it expires.
pub const TOKEN_MARGIN_SECS: u64 = 5 * 60;

/// A GitHub App: its id and private key, and the JWT once signed in this call.
pub struct App {
    /// `app_id` as configured (the App id, or its client id).
    id: String,
    key: EncodingKey,
    /// The JWT signed in this call and its expiry.
    jwt: RefCell<Option<(String, u64)>>,
}

/// The claims GitHub reads from an App's JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iat: u64,
    pub exp: u64,
    /// The App id as a number, or the client id as text.
    pub iss: Value,
}

/// An installation access token and when it expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationToken {
    pub token: String,
    pub expires_at: u64,
}

impl InstallationToken {
    /// Seconds it stays usable for, keeping [`TOKEN_MARGIN_SECS`] in hand.
    pub fn usable_for(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now + TOKEN_MARGIN_SECS)
    }
}

/// `GET /repos/{owner}/{repo}/installation` and `GET /app/installations` entries.
#[derive(Debug, Deserialize)]
pub struct Installation {
    pub id: u64,
    #[serde(default)]
    pub suspended_at: Option<String>,
    #[serde(default)]
    pub account: Option<Account>,
}

#[derive(Debug, Deserialize)]
pub struct Account {
    pub login: String,
}

impl App {
    /// The App `id` with the PEM key read from secret [`KEY_SECRET`].
    pub fn from_secret(id: &str) -> Result<Self, PluginError> {
        let pem = secrets::get(KEY_SECRET).map_err(|e| {
            PluginError::failed(format!(
                "GitHub App mode (setting `app_id`) needs secret `{KEY_SECRET}`, which cannot be \
                 read: {}",
                e.describe()
            ))
        })?;
        Self::new(id, &pem)
    }

    /// The App `id` (numeric App id or `Iv…` client id) with its PEM RSA key.
    pub fn new(id: &str, pem: &[u8]) -> Result<Self, PluginError> {
        let id = id.trim();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(PluginError::failed(format!(
                "setting `app_id` must be the GitHub App's id (a number such as 123456) or its \
                 client id, not `{id}`"
            )));
        }
        // jsonwebtoken's errors describe the format, never the key's bytes.
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| {
            PluginError::failed(format!(
                "secret `{KEY_SECRET}` is not a PEM RSA private key ({e}): use the .pem file \
                 GitHub generated for the App"
            ))
        })?;
        Ok(Self {
            id: id.to_owned(),
            key,
            jwt: RefCell::new(None),
        })
    }

    /// The configured App id, for messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The claims of a JWT issued at `now`.
    pub fn claims(&self, now: u64) -> Claims {
        Claims {
            iat: now.saturating_sub(JWT_BACKDATE_SECS),
            exp: now + JWT_LIFETIME_SECS,
            iss: self
                .id
                .parse::<u64>()
                .map_or_else(|_| Value::from(self.id.as_str()), Value::from),
        }
    }

    /// The App's JWT, signed once per call and reused while it has a
    /// minute left.
    pub fn jwt(&self, now: u64) -> Result<String, PluginError> {
        if let Some((jwt, exp)) = self.jwt.borrow().as_ref()
            && *exp > now + 60
        {
            return Ok(jwt.clone());
        }
        let claims = self.claims(now);
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| {
                PluginError::failed(format!(
                    "cannot sign the GitHub App's JWT with secret `{KEY_SECRET}`: {e}"
                ))
            })?;
        *self.jwt.borrow_mut() = Some((jwt.clone(), claims.exp));
        Ok(jwt)
    }

    /// The id of the App's installation that covers `repo`: from the cache,
    /// else `GET /repos/{owner}/{repo}/installation`.
    pub fn installation(&self, api: &Api, repo: &Repository, now: u64) -> Result<u64, PluginError> {
        let key = installation_key(&repo.owner, &repo.name);
        if let Some(id) = cache_get(&key)?.and_then(|v| String::from_utf8(v).ok()?.parse().ok()) {
            return Ok(id);
        }
        let url = format!("{}/installation", api.repo_url(repo)?);
        let what = format!(
            "find the installation of GitHub App {} on {}",
            self.id, repo.full_name
        );
        let request = api.request("GET", url, &self.jwt(now)?);
        let response = crate::send(request, &what, Credential::AppJwt)?;
        let installation: Installation = serde_json::from_slice(&response.body).map_err(|e| {
            PluginError::failed(format!("GitHub's answer to {what} does not parse: {e}"))
        })?;
        remember_installation(&repo.owner, &repo.name, installation.id);
        Ok(installation.id)
    }

    /// A usable token of `installation` and whether it came from the cache.
    pub fn token(
        &self,
        api: &Api,
        installation: u64,
        now: u64,
    ) -> Result<(InstallationToken, bool), PluginError> {
        let cached = cache_get(&token_key(installation))?
            .and_then(|v| serde_json::from_slice::<InstallationToken>(&v).ok())
            .filter(|t| t.usable_for(now) > 0);
        match cached {
            Some(token) => Ok((token, true)),
            None => Ok((self.mint(api, installation, now)?, false)),
        }
    }

    /// A new token of `installation` (`POST /app/installations/{id}/access_tokens`),
    /// cached until [`TOKEN_MARGIN_SECS`] before it expires.
    pub fn mint(
        &self,
        api: &Api,
        installation: u64,
        now: u64,
    ) -> Result<InstallationToken, PluginError> {
        let url = format!(
            "{}/app/installations/{installation}/access_tokens",
            api.base
        );
        let what = format!(
            "create an access token for installation {installation} of GitHub App {}",
            self.id
        );
        let request = api.request("POST", url, &self.jwt(now)?);
        let response = crate::send(request, &what, Credential::AppJwt)?;
        let token = parse_token(&response.body)
            .map_err(|e| PluginError::failed(format!("GitHub's answer to {what} {e}")))?;
        let ttl = token.usable_for(now);
        if ttl > 0 {
            let record = serde_json::to_vec(&token).expect("a token record serialises");
            cache_set(
                &token_key(installation),
                &record,
                u32::try_from(ttl).unwrap_or(u32::MAX),
            );
        } else {
            log::warn!(
                "installation {installation}'s new token expires within {TOKEN_MARGIN_SECS} s; \
                 not caching it"
            );
        }
        Ok(token)
    }

    /// Drops the cached token of `installation` (GitHub refused it).
    pub fn forget_token(&self, installation: u64) {
        if let Err(e) = kv::delete(&token_key(installation)) {
            log::warn!(
                "cannot drop installation {installation}'s token from the cache: {}",
                e.describe()
            );
        }
    }
}

/// Caches that `owner/name` belongs to `installation`.
pub fn remember_installation(owner: &str, name: &str, installation: u64) {
    cache_set(
        &installation_key(owner, name),
        installation.to_string().as_bytes(),
        INSTALLATION_TTL_SECS,
    );
}

fn installation_key(owner: &str, name: &str) -> String {
    // GitHub's names are case-insensitive.
    format!(
        "installation/{}/{}",
        owner.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    )
}

fn token_key(installation: u64) -> String {
    format!("installation-token/{installation}")
}

/// `{"token": …, "expires_at": "2016-07-11T22:14:10Z", …}` as a token record;
/// the error completes "GitHub's answer to … ".
pub fn parse_token(body: &[u8]) -> Result<InstallationToken, String> {
    #[derive(Deserialize)]
    struct Answer {
        token: String,
        expires_at: String,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("does not parse: {e}"))?;
    let expires_at = unix_time(&answer.expires_at).ok_or_else(|| {
        format!(
            "has `expires_at` `{}`, not a UTC time such as 2016-07-11T22:14:10Z",
            answer.expires_at
        )
    })?;
    Ok(InstallationToken {
        token: answer.token,
        expires_at,
    })
}

/// Unix seconds of an RFC 3339 UTC time, `YYYY-MM-DDTHH:MM:SS[.fff]Z`
/// (as GitHub writes them).
pub fn unix_time(text: &str) -> Option<u64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let time = time.split('.').next()?;
    let number = |s: &str, len: usize| -> Option<u64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (year, month, day) = (
        number(d.next()?, 4)?,
        number(d.next()?, 2)?,
        number(d.next()?, 2)?,
    );
    let mut t = time.split(':');
    let (hour, minute, second) = (
        number(t.next()?, 2)?,
        number(t.next()?, 2)?,
        number(t.next()?, 2)?,
    );
    if d.next().is_some()
        || t.next().is_some()
        || year < 1970
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 in the proleptic Gregorian calendar, counting
    // years from March so that the leap day ends a year.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y % 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// The cached value of `key`. App mode cannot work without the cache (it
/// would mint a token per call and duplicate check runs), so a denial is an
/// error saying which grant is missing.
pub fn cache_get(key: &str) -> Result<Option<Vec<u8>>, PluginError> {
    kv::get(key).map_err(|e| {
        PluginError::failed(format!(
            "cannot read `{key}` from the key-value cache: {}; GitHub App mode keeps installation \
             tokens and check-run ids there: grant this plugin `kv = true` in kiln.toml",
            e.describe()
        ))
    })
}

/// Caches `value` under `key` for `ttl` seconds; a failure only costs a
/// request later, so it is logged.
pub fn cache_set(key: &str, value: &[u8], ttl: u32) {
    if let Err(e) = kv::set(key, value, Some(ttl)) {
        log::warn!("cannot cache `{key}`: {}", e.describe());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new 2048-bit RSA key in PKCS#1 PEM, as GitHub hands out App keys
    /// (none is committed).
    fn test_key() -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn the_jwt_is_rs256_with_githubs_claims() {
        let key = test_key();
        let app = App::new("123456", &key).unwrap();
        let now = 1_700_000_000;
        let jwt = app.jwt(now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        // Only the claims are read here; the host test verifies the signature.
        let decode = |part: &str| -> Value { serde_json::from_slice(&base64url(part)).unwrap() };
        assert_eq!(decode(parts[0])["alg"], "RS256");
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], 123_456);
        assert_eq!(claims["iat"], now - 60);
        assert_eq!(claims["exp"], now + 540);
        // Reused within the call while it has more than a minute left.
        assert_eq!(app.jwt(now + 400).unwrap(), jwt);
        assert_ne!(app.jwt(now + 500).unwrap(), jwt);

        let client = App::new("Iv1.0123abcd", &key).unwrap();
        assert_eq!(client.claims(now).iss, "Iv1.0123abcd");
    }

    fn base64url(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        let bits: Vec<u8> = text.bytes().map(value).collect();
        bits.chunks(4)
            .flat_map(|c| {
                let n = c
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, v)| n | u32::from(*v) << (18 - 6 * i));
                let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                bytes.into_iter().take(c.len() - 1)
            })
            .collect()
    }

    #[test]
    fn bad_settings_and_keys_say_what_is_wrong() {
        let err = App::new("12 34", &test_key()).err().unwrap();
        assert!(format!("{err:?}").contains("setting `app_id`"), "{err:?}");
        let err = App::new(
            "1",
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .err()
        .unwrap();
        assert!(
            format!("{err:?}")
                .contains("secret `github-app-private-key` is not a PEM RSA private key"),
            "{err:?}"
        );
    }

    #[test]
    fn githubs_timestamps_become_unix_seconds() {
        assert_eq!(unix_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_time("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(unix_time("2000-02-29T12:00:00.123Z"), Some(951_825_600));
        assert_eq!(unix_time("2026-11-22T08:00:00+00:00"), Some(1_795_334_400));
        for bad in [
            "2016-07-11T22:14:10",
            "2016-13-01T00:00:00Z",
            "16-07-11T22:14:10Z",
            "x",
        ] {
            assert_eq!(unix_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn token_answers_parse_and_keep_a_margin() {
        let token = parse_token(
            br#"{"token": "ghs_x", "expires_at": "2016-07-11T22:14:10Z", "permissions": {}}"#,
        )
        .unwrap();
        assert_eq!(token.token, "ghs_x");
        assert_eq!(token.expires_at, 1_468_275_250);
        assert_eq!(token.usable_for(1_468_275_250 - 3600), 3300);
        assert_eq!(token.usable_for(1_468_275_250 - 200), 0);
        let err = parse_token(br#"{"token": "ghs_x", "expires_at": "soon"}"#).unwrap_err();
        assert!(err.contains("`soon`") && !err.contains("ghs_x"), "{err}");
        assert!(parse_token(b"[]").is_err());
    }
}
