//! Talking to a sign-in provider: where its endpoints are (fixed paths for
//! GitHub and Gitea, OIDC discovery), the authorize URL with PKCE, the code
//! exchange and who the access token belongs to, with their organisations.
//!
//! Every call here blocks (ureq, HTTPS through rustls); callers run them on
//! the blocking pool. Nothing here stores anything or sets cookies.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kiln_runtime::bindings::authz_types::Subject;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{AuthProvider, ProviderKind};

/// Why a provider could not sign someone in. The message names the URL and
/// what came back, for the operator's log.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// The transport error.
        message: String,
    },
    /// An answer that is not a success, or not the JSON expected.
    #[error("{url} answered {status}: {message}")]
    Answer {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong, with the start of the body.
        message: String,
    },
}

/// A provider's endpoints.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser is sent to sign in.
    pub authorize: String,
    /// Where the code is exchanged for an access token.
    token: String,
    /// Who the access token belongs to.
    user: String,
    /// Their organisations (not for OIDC: the `groups` claim instead).
    orgs: Option<String>,
    /// Send the client secret with HTTP Basic rather than in the form.
    basic_auth: bool,
}

/// A PKCE verifier (43 characters) and its S256 challenge.
pub fn pkce() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    Ok((verifier.clone(), challenge(&verifier)))
}

/// The S256 code challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .user_agent("kiln")
        .build()
        .into()
}

/// Read a JSON answer of `url`, refusing anything but a 2xx.
fn json(
    url: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, ProviderError> {
    let mut response = answer.map_err(|e| ProviderError::Unreachable {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let bad = |message: &str| ProviderError::Answer {
        url: url.to_owned(),
        status,
        message: format!("{message}: {}", text.chars().take(300).collect::<String>()),
    };
    if !(200..300).contains(&status) {
        return Err(bad("not a success"));
    }
    serde_json::from_str(&text).map_err(|_| bad("not JSON"))
}

fn get(url: &str, access_token: Option<&str>) -> Result<Value, ProviderError> {
    let mut request = agent().get(url).header("Accept", "application/json");
    if let Some(token) = access_token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    json(url, request.call())
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Where `config`'s endpoints are; for OIDC, asks its discovery document.
pub fn endpoints(config: &AuthProvider) -> Result<Endpoints, ProviderError> {
    let setting =
        |v: &Option<String>, default: &str| base(v.as_deref().unwrap_or(default)).to_owned();
    Ok(match config.kind {
        ProviderKind::Github => {
            let web = setting(&config.web, "https://github.com");
            let api = setting(&config.api, "https://api.github.com");
            Endpoints {
                authorize: format!("{web}/login/oauth/authorize"),
                token: format!("{web}/login/oauth/access_token"),
                user: format!("{api}/user"),
                orgs: Some(format!("{api}/user/orgs?per_page=100")),
                basic_auth: false,
            }
        }
        ProviderKind::Gitea => {
            let url = setting(&config.url, "");
            Endpoints {
                authorize: format!("{url}/login/oauth/authorize"),
                token: format!("{url}/login/oauth/access_token"),
                user: format!("{url}/api/v1/user"),
                orgs: Some(format!("{url}/api/v1/user/orgs?limit=50")),
                basic_auth: false,
            }
        }
        ProviderKind::Oidc => {
            let issuer = setting(&config.issuer, "");
            let url = format!("{issuer}/.well-known/openid-configuration");
            let doc = get(&url, None)?;
            let field = |name: &str| {
                doc[name]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ProviderError::Answer {
                        url: url.clone(),
                        status: 200,
                        message: format!("the discovery document has no `{name}`"),
                    })
            };
            if base(&field("issuer")?) != issuer {
                return Err(ProviderError::Answer {
                    url: url.clone(),
                    status: 200,
                    message: format!(
                        "the discovery document names issuer {}, not {issuer}",
                        doc["issuer"]
                    ),
                });
            }
            // Client authentication defaults to HTTP Basic (OIDC Discovery).
            let methods = doc["token_endpoint_auth_methods_supported"].as_array();
            let basic_auth = methods.is_none_or(|m| {
                m.iter().any(|v| v == "client_secret_basic")
                    || !m.iter().any(|v| v == "client_secret_post")
            });
            Endpoints {
                authorize: field("authorization_endpoint")?,
                token: field("token_endpoint")?,
                user: field("userinfo_endpoint")?,
                orgs: None,
                basic_auth,
            }
        }
    })
}

/// The scopes asked for: the configured ones, else the kind's defaults.
fn scopes(config: &AuthProvider) -> String {
    match &config.scopes {
        Some(s) => s.join(" "),
        None => match config.kind {
            ProviderKind::Github => "read:org".to_owned(),
            ProviderKind::Gitea => String::new(),
            ProviderKind::Oidc => "openid profile email".to_owned(),
        },
    }
}

/// The URL the browser is sent to, to sign in and come back to
/// `redirect_uri` with a code and `state`.
pub fn authorize_url(
    config: &AuthProvider,
    endpoints: &Endpoints,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<String, url::ParseError> {
    let mut url = url::Url::parse(&endpoints.authorize)?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &config.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        let scopes = scopes(config);
        if !scopes.is_empty() {
            query.append_pair("scope", &scopes);
        }
    }
    Ok(url.into())
}

/// What is needed to exchange a code.
pub struct Exchange<'a> {
    /// The provider's settings.
    pub config: &'a AuthProvider,
    /// The client secret's value.
    pub client_secret: &'a str,
    /// The code the browser brought back.
    pub code: &'a str,
    /// The PKCE verifier of this sign-in.
    pub verifier: &'a str,
    /// The callback URL, as sent to the authorize endpoint.
    pub redirect_uri: &'a str,
}

/// Exchange the code for an access token.
pub fn exchange(endpoints: &Endpoints, x: &Exchange<'_>) -> Result<String, ProviderError> {
    let url = &endpoints.token;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", x.code),
        ("redirect_uri", x.redirect_uri),
        ("code_verifier", x.verifier),
    ];
    let mut request = agent().post(url).header("Accept", "application/json");
    if endpoints.basic_auth {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!(
            "{}:{}",
            encode(&x.config.client_id),
            encode(x.client_secret)
        );
        request = request.header("Authorization", &format!("Basic {}", STANDARD.encode(pair)));
    } else {
        form.push(("client_id", &x.config.client_id));
        form.push(("client_secret", x.client_secret));
    }
    let answer = json(url, request.send_form(form))?;
    // GitHub answers a refused code with 200 and an `error`.
    match answer["access_token"].as_str() {
        Some(token) if !token.is_empty() => Ok(token.to_owned()),
        _ => Err(ProviderError::Answer {
            url: url.clone(),
            status: 200,
            message: format!(
                "no access token: {} {}",
                answer["error"].as_str().unwrap_or("(no error given)"),
                answer["error_description"].as_str().unwrap_or("")
            ),
        }),
    }
}

/// Who `access_token` belongs to, as a subject of provider `name` (admin is
/// decided by the caller).
pub fn subject(
    name: &str,
    config: &AuthProvider,
    endpoints: &Endpoints,
    access_token: &str,
) -> Result<Subject, ProviderError> {
    let user = get(&endpoints.user, Some(access_token))?;
    let missing = |field: &str| ProviderError::Answer {
        url: endpoints.user.clone(),
        status: 200,
        message: format!("the user has no `{field}`"),
    };
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let (id, login, organisations) = match config.kind {
        ProviderKind::Github | ProviderKind::Gitea => {
            let id = text(&user["id"]).ok_or_else(|| missing("id"))?;
            let login = text(&user["login"]).ok_or_else(|| missing("login"))?;
            let orgs = match &endpoints.orgs {
                Some(url) => get(url, Some(access_token))?,
                None => Value::Null,
            };
            let key = if config.kind == ProviderKind::Github {
                "login"
            } else {
                "username"
            };
            let organisations = orgs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| text(&o[key]))
                .collect();
            (id, login, organisations)
        }
        ProviderKind::Oidc => {
            let id = text(&user["sub"]).ok_or_else(|| missing("sub"))?;
            let login = text(&user["preferred_username"]).unwrap_or_else(|| id.clone());
            let organisations = user["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(text)
                .collect();
            (id, login, organisations)
        }
    };
    Ok(Subject {
        id,
        name: login,
        provider: name.to_owned(),
        admin: false,
        organisations,
        teams: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (verifier, c) = pkce().unwrap();
        assert_eq!(verifier.len(), 43);
        assert_eq!(challenge(&verifier), c);
    }

    #[test]
    fn github_authorize_url_carries_state_and_challenge() {
        let config = AuthProvider {
            kind: ProviderKind::Github,
            client_id: "id 1".into(),
            client_secret: "s".into(),
            api: None,
            web: Some("https://ghe.example/".into()),
            url: None,
            issuer: None,
            scopes: None,
        };
        let e = endpoints(&config).unwrap();
        let url = authorize_url(&config, &e, "http://k/auth/gh/callback", "st", "ch").unwrap();
        assert_eq!(
            url,
            "https://ghe.example/login/oauth/authorize?response_type=code&client_id=id+1\
             &redirect_uri=http%3A%2F%2Fk%2Fauth%2Fgh%2Fcallback&state=st&code_challenge=ch\
             &code_challenge_method=S256&scope=read%3Aorg"
        );
        assert_eq!(e.user, "https://api.github.com/user");
    }
}
