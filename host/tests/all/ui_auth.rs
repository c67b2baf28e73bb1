//! Sign-in to the web UI against `tests/servers/oauth.py`, a local provider
//! speaking GitHub's, Gitea's and OIDC's shapes with PKCE: a real `kiln
//! serve` driven over its socket without following redirects, cookies
//! carried by hand. Covers the cookie's attributes, the session, CSRF
//! refusals, API tokens made and revoked in the UI and used on the API, a
//! forged `state`, and sign-out ending the session on the server. SQLite
//! always; PostgreSQL too when Debian's server binaries are installed.

use std::time::Duration;

use serde_json::Value;

use crate::common::python_server;
use crate::serve::Setup;
use crate::service::{Postgres, Server};

const CLIENT_ID: &str = "kiln-test-client";
const CLIENT_SECRET: &str = "kiln test client secret";

/// An answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` for cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The value `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> String {
        let header = self
            .set_cookie(name)
            .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {:?}", self.headers));
        header[name.len() + 1..]
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Answer {
    let mut response = response.unwrap_or_else(|e| panic!("{what}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    Answer {
        status: response.status().as_u16(),
        headers,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

/// GET `url` with `cookie` (`name=value`, or empty) and `bearer`.
fn get(url: &str, cookie: &str, bearer: Option<&str>) -> Answer {
    let mut request = agent().get(url);
    if !cookie.is_empty() {
        request = request.header("Cookie", cookie);
    }
    if let Some(token) = bearer {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    read(request.call(), &format!("GET {url}"))
}

/// POST a form (`fields`) to `url` with `cookie` and `bearer`.
fn post(url: &str, cookie: &str, bearer: Option<&str>, fields: &[(&str, &str)]) -> Answer {
    let mut request = agent().post(url);
    if !cookie.is_empty() {
        request = request.header("Cookie", cookie);
    }
    if let Some(token) = bearer {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    read(
        request.send_form(fields.iter().copied()),
        &format!("POST {url}"),
    )
}

/// The text between `before` and the next `after` in `text`.
fn between<'a>(text: &'a str, before: &str, after: &str) -> Option<&'a str> {
    let start = text.find(before)? + before.len();
    let len = text[start..].find(after)?;
    Some(&text[start..start + len])
}

/// A `kiln serve` with providers `gh` (github), `tea` (gitea) and `sso`
/// (oidc) at one `oauth.py`.
struct Service {
    setup: Setup,
    server: Server,
    provider: std::process::Child,
    provider_port: u16,
    _secret: tempfile::TempDir,
}

impl Service {
    fn start(database: &str) -> Service {
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("client-secret");
        std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        let (provider, port) = python_server(
            "oauth.py",
            &[
                "--client-id".as_ref(),
                CLIENT_ID.as_ref(),
                "--client-secret".as_ref(),
                CLIENT_SECRET.as_ref(),
                "--login".as_ref(),
                "octocat".as_ref(),
                "--org".as_ref(),
                "acme".as_ref(),
                "--org".as_ref(),
                "widgets".as_ref(),
                "--oidc-login".as_ref(),
                "alice".as_ref(),
                "--group".as_ref(),
                "platform".as_ref(),
            ],
            None,
        );
        let base = format!("http://127.0.0.1:{port}");
        let setup = Setup::new(&format!(
            r#"
[secrets.oauth-client]
file = "{secret}"

[auth.providers.gh]
kind = "github"
client_id = "{CLIENT_ID}"
client_secret = "oauth-client"
web = "{base}/github"
api = "{base}/github/api"

[auth.providers.tea]
kind = "gitea"
client_id = "{CLIENT_ID}"
client_secret = "oauth-client"
url = "{base}/gitea"

[auth.providers.sso]
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "oauth-client"
issuer = "{base}/oidc"
scopes = ["openid", "profile", "groups"]

[serve]
admins = ["octocat"]
{database}
"#,
            secret = secret_file.display(),
        ));
        let server = setup.start();
        Service {
            setup,
            server,
            provider,
            provider_port: port,
            _secret: secret,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Start signing in at `provider`: the provider's authorize URL and the
    /// `kiln_login` cookie.
    fn start_sign_in(&self, provider: &str) -> (String, String) {
        let answer = get(&self.url(&format!("/login/{provider}")), "", None);
        assert_eq!(answer.status, 303, "{}", self.server.stderr());
        let login = answer.cookie("kiln_login");
        let location = answer.header("location").unwrap().to_owned();
        (location, format!("kiln_login={login}"))
    }

    /// The callback URL the provider sends the browser back to.
    fn authorize(&self, authorize_url: &str) -> String {
        let answer = get(authorize_url, "", None);
        assert_eq!(answer.status, 302, "{}: {}", authorize_url, answer.body);
        answer.header("location").unwrap().to_owned()
    }

    /// Sign in at `provider`; the session cookie (`kiln_session=…`).
    fn sign_in(&self, provider: &str) -> String {
        let (authorize, login) = self.start_sign_in(provider);
        let callback = self.authorize(&authorize);
        assert!(
            callback.starts_with(&self.url(&format!("/auth/{provider}/callback?"))),
            "{callback}"
        );
        let answer = get(&callback, &login, None);
        assert_eq!(
            answer.status,
            303,
            "{}: {}",
            answer.body,
            self.server.stderr()
        );
        assert_eq!(answer.header("location"), Some("/"));
        let set = answer.set_cookie("kiln_session").unwrap();
        let attributes: Vec<&str> = set.split(';').skip(1).map(str::trim).collect();
        assert!(attributes.contains(&"HttpOnly"), "{set}");
        assert!(attributes.contains(&"SameSite=Lax"), "{set}");
        assert!(attributes.contains(&"Path=/"), "{set}");
        assert!(attributes.contains(&"Max-Age=1209600"), "{set}");
        assert!(!attributes.contains(&"Secure"), "plain http: {set}");
        assert!(
            answer
                .set_cookie("kiln_login")
                .unwrap()
                .contains("Max-Age=0"),
            "the login cookie is cleared"
        );
        format!("kiln_session={}", answer.cookie("kiln_session"))
    }

    /// The tokens page of `cookie`'s session, and its CSRF token.
    fn tokens_page(&self, cookie: &str) -> (String, String) {
        let page = get(&self.url("/settings/tokens"), cookie, None);
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = between(&page.body, r#"name="csrf" value=""#, "\"")
            .expect("a csrf field")
            .to_owned();
        (page.body, csrf)
    }

    fn provider_state(&self) -> Value {
        let answer = get(
            &format!("http://127.0.0.1:{}/_test/state", self.provider_port),
            "",
            None,
        );
        serde_json::from_str(&answer.body).unwrap()
    }

    /// (provider, subject, name, admin, organisations) of every session.
    fn sessions(&self, database: Option<&str>) -> Vec<(String, String, String, i64, String)> {
        const SQL: &str =
            "SELECT provider, subject, name, admin, organisations FROM sessions ORDER BY id";
        let url = database.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.setup.data_dir().join("kiln.sqlite3").display()
            )
        });
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                if url.starts_with("postgres") {
                    let pool = sqlx::PgPool::connect(&url).await.unwrap();
                    sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
                } else {
                    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                    sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
                }
            })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.provider.kill();
        let _ = self.provider.wait();
    }
}

fn assert_denied(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 403, "{what}: {}", answer.body);
    assert!(
        answer.body.contains("class=\"denied\""),
        "{what}: {}",
        answer.body
    );
}

/// The whole flow on one database (`database` is a `[serve]` line).
fn flow(database: Option<&str>) {
    let line = database.map_or(String::new(), |url| format!("database_url = \"{url}\""));
    let service = Service::start(&line);

    // The sign-in page links every provider.
    let login = get(&service.url("/login"), "", None);
    assert_eq!(login.status, 200);
    for p in ["gh", "tea", "sso"] {
        assert!(
            login.body.contains(&format!("href=\"/login/{p}\"")),
            "{}",
            login.body
        );
    }
    // Signed out, the tokens page sends you to sign in.
    let out = get(&service.url("/settings/tokens"), "", None);
    assert_eq!((out.status, out.header("location")), (303, Some("/login")));

    // A forged or replayed state is refused and makes no session.
    let (authorize, login_cookie) = service.start_sign_in("gh");
    let callback = service.authorize(&authorize);
    let state = between(&callback, "state=", "&")
        .or_else(|| callback.split("state=").nth(1))
        .unwrap()
        .to_owned();
    let forged = callback.replace(&format!("state={state}"), "state=forged");
    let answer = get(&forged, &login_cookie, None);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.set_cookie("kiln_session").is_none());
    let answer = get(&forged, "kiln_login=forged", None);
    assert_eq!(answer.status, 400, "{}", answer.body);
    let answer = get(&callback, "", None);
    assert_eq!(answer.status, 400, "the state needs the browser's cookie");
    assert_eq!(get(&callback, &login_cookie, None).status, 303);
    let answer = get(&callback, &login_cookie, None);
    assert_eq!(answer.status, 400, "a state is used once: {}", answer.body);
    assert_eq!(service.sessions(database).len(), 1);

    // GitHub kind: the session knows the user, their organisations and
    // that they are an admin.
    let cookie = service.sign_in("gh");
    let (page, csrf) = service.tokens_page(&cookie);
    assert!(page.contains(r#"<span id="user">octocat</span>"#), "{page}");
    let sessions = service.sessions(database);
    assert_eq!(
        sessions[1],
        (
            "gh".to_owned(),
            "4242".to_owned(),
            "octocat".to_owned(),
            1,
            r#"["acme","widgets"]"#.to_owned()
        )
    );

    // CSRF: forms without the session's token are refused.
    for (path, fields) in [
        ("/logout", &[][..]),
        ("/logout", &[("csrf", "wrong")][..]),
        ("/settings/tokens", &[][..]),
        ("/settings/tokens", &[("csrf", "wrong")][..]),
        ("/settings/tokens/1/revoke", &[("csrf", "wrong")][..]),
    ] {
        assert_denied(&post(&service.url(path), &cookie, None, fields), path);
    }
    // … and a right token without the session cookie is no better.
    assert_denied(
        &post(
            &service.url("/settings/tokens"),
            "",
            None,
            &[("csrf", &csrf)],
        ),
        "no cookie",
    );
    assert!(!service.tokens_page(&cookie).0.contains("id=\"token-"));

    // A token made in the UI is shown once and works on the API.
    let made = post(
        &service.url("/settings/tokens"),
        &cookie,
        None,
        &[("csrf", &csrf)],
    );
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.header("cache-control"), Some("no-store"));
    let token = between(&made.body, r#"<code id="new-token">"#, "<")
        .expect("the new token")
        .to_owned();
    assert!(token.starts_with("kiln_"), "{token}");
    let (page, _) = service.tokens_page(&cookie);
    assert!(!page.contains(&token), "the token is shown only once");
    let id = between(&page, r#"<tr id="token-"#, "\"")
        .unwrap()
        .to_owned();
    let projects = service.url("/api/v1/projects");
    let rebuild = service.url("/api/v1/runs/999999/rebuild");
    assert_eq!(get(&projects, "", Some(&token)).status, 200);
    assert_eq!(
        post(&rebuild, "", Some(&token), &[]).status,
        404,
        "signed in, no such run"
    );

    // Revoked in the UI, it is refused.
    let revoked = post(
        &service.url(&format!("/settings/tokens/{id}/revoke")),
        &cookie,
        None,
        &[("csrf", &csrf)],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert!(service.tokens_page(&cookie).0.contains("revoked "));
    assert_eq!(get(&projects, "", Some(&token)).status, 401);
    assert_eq!(post(&rebuild, "", Some(&token), &[]).status, 401);

    // Gitea and OIDC kinds.
    let gitea = service.sign_in("tea");
    assert!(
        service
            .tokens_page(&gitea)
            .0
            .contains(r#"<span id="user">octocat</span>"#)
    );
    let oidc = service.sign_in("sso");
    let (page, oidc_csrf) = service.tokens_page(&oidc);
    assert!(page.contains(r#"<span id="user">alice</span>"#), "{page}");
    let sessions = service.sessions(database);
    assert_eq!(sessions[2].0, "tea");
    assert_eq!(sessions[2].4, r#"["acme","widgets"]"#);
    assert_eq!(
        sessions[3],
        (
            "sso".to_owned(),
            "oidc-subject-1".to_owned(),
            "alice".to_owned(),
            0,
            r#"["platform"]"#.to_owned()
        )
    );
    // One user's CSRF token is not another's.
    assert_denied(
        &post(&service.url("/logout"), &oidc, None, &[("csrf", &csrf)]),
        "another session's token",
    );

    // Sign-out ends the session on the server: the old cookie is refused.
    let bye = post(
        &service.url("/logout"),
        &oidc,
        None,
        &[("csrf", &oidc_csrf)],
    );
    assert_eq!((bye.status, bye.header("location")), (303, Some("/")));
    assert!(
        bye.set_cookie("kiln_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = get(&service.url("/settings/tokens"), &oidc, None);
    assert_eq!(
        (after.status, after.header("location")),
        (303, Some("/login"))
    );
    assert!(!service.sessions(database).iter().any(|s| s.0 == "sso"));
    // The other sessions go on.
    service.tokens_page(&cookie);

    // Every code was exchanged with its PKCE verifier, nothing refused.
    let state = service.provider_state();
    assert_eq!(state["refused"], serde_json::json!([]), "{state}");
    let kinds: Vec<&str> = state["exchanged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["github", "github", "gitea", "oidc"]);
}

#[test]
fn ui_auth_sign_in_sessions_csrf_and_tokens_on_sqlite() {
    flow(None);
}

#[test]
fn ui_auth_sign_in_sessions_csrf_and_tokens_on_postgres() {
    let Some(pg) = Postgres::start() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql");
        return;
    };
    flow(Some(&pg.url()));
}

#[test]
fn ui_auth_cookies_are_secure_behind_https() {
    let service = Service::start("url = \"https://kiln.test/\"");
    let (authorize, login) = service.start_sign_in("gh");
    let start = get(&service.url("/login/gh"), "", None);
    assert!(
        start
            .set_cookie("kiln_login")
            .unwrap()
            .ends_with("; Secure"),
        "{:?}",
        start.headers
    );
    // The provider sends the browser to the public URL; here that is this
    // socket.
    let callback = service.authorize(&authorize);
    let local = callback
        .strip_prefix("https://kiln.test/auth/gh/callback?")
        .unwrap_or_else(|| panic!("{callback}"));
    let answer = get(
        &service.url(&format!("/auth/gh/callback?{local}")),
        &login,
        None,
    );
    assert_eq!(answer.status, 303, "{}", answer.body);
    let set = answer.set_cookie("kiln_session").unwrap();
    assert!(
        set.split(';').map(str::trim).any(|a| a == "Secure"),
        "{set}"
    );
}
