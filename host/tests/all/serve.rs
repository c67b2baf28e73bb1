//! `kiln serve` as a process: the real binary on port 0, the test forge
//! plugin installed from a plugin directory with its webhook secret granted,
//! webhooks sent over a socket, and the database read back with sqlx.
//! SQLite always; PostgreSQL when Debian's server binaries are installed
//! (a throw-away cluster on loopback).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::wasm;
use crate::service::{Postgres, Server};

const SECRET: &str = "It's a Secret to Everybody";

pub(crate) fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) fn push_body(after: char) -> String {
    format!(
        r#"{{"ref": "refs/heads/main", "before": "{}", "after": "{}",
            "head_commit": {{"message": "Fix the frobnicator"}},
            "repository": {{"full_name": "acme/widgets", "name": "widgets", "owner": {{"login": "acme"}},
              "clone_url": "https://forge.test/acme/widgets.git", "default_branch": "main", "private": true}}}}"#,
        "a".repeat(40),
        after.to_string().repeat(40)
    )
}

/// A directory with the test forge plugin, its secret and a `kiln.toml`
/// declaring forge instance `github` (plus `extra` lines).
pub(crate) struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    pub(crate) fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(
            wasm("kiln-test-forge"),
            plugins.join("kiln_test_forge.wasm"),
        )
        .unwrap();
        std::fs::write(dir.path().join("webhook-secret"), SECRET).unwrap();
        let config = format!(
            r#"[plugins]
directory = "{plugins}"
builtin = false

[grants.kiln-test-forge]
secrets = ["webhook-secret"]
kv = true

[secrets.webhook-secret]
file = "{secret}"

[forges.github]
plugin = "kiln-test-forge"
{extra}
"#,
            plugins = plugins.display(),
            secret = dir.path().join("webhook-secret").display(),
        );
        std::fs::write(dir.path().join("kiln.toml"), config).unwrap();
        Setup { dir }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("kiln.toml"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env_remove("KILN_DATABASE_URL")
            .env("KILN_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Start `kiln serve` and wait for the address it prints.
    pub(crate) fn start(&self) -> Server {
        Server::start(self.command(), self.dir.path())
    }
}

/// The value of one metrics line (`name{labels}`), or 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// (delivery, status) of every stored delivery, and (kind, project,
/// git_ref, branch, rev) of every event, read from the database at `url`.
pub(crate) type Rows = (
    Vec<(String, String)>,
    Vec<(String, String, Option<String>, Option<String>, String)>,
);

pub(crate) fn rows(url: &str) -> Rows {
    const DELIVERIES: &str = "SELECT delivery, status FROM deliveries ORDER BY id";
    const EVENTS: &str = "SELECT kind, project, git_ref, branch, rev FROM events ORDER BY id";
    block_on(async {
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let d = sqlx::query_as(DELIVERIES).fetch_all(&pool).await.unwrap();
            let e = sqlx::query_as(EVENTS).fetch_all(&pool).await.unwrap();
            pool.close().await;
            (d, e)
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let d = sqlx::query_as(DELIVERIES).fetch_all(&pool).await.unwrap();
            let e = sqlx::query_as(EVENTS).fetch_all(&pool).await.unwrap();
            pool.close().await;
            (d, e)
        }
    })
}

/// The checks both backends must pass: verification, storage,
/// deduplication, metrics, and a `kill -9` followed by a restart.
fn exercise(setup: &Setup, db_url: &str) {
    let server = setup.start();
    let health: serde_json::Value = serde_json::from_str(&server.get("/api/v1/health")).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let backend = if db_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(health["database"], backend);

    let body = push_body('b');
    let (status, json) = server.webhook("github", "push", "delivery-1", &body, &sign(&body));
    assert_eq!(status, 202, "{json}: {}", server.stderr());
    assert_eq!(json["delivery"], "delivery-1");
    assert_eq!(json["events"], 1);
    let (deliveries, events) = rows(db_url);
    assert_eq!(deliveries, [("delivery-1".into(), "received".into())]);
    assert_eq!(
        events,
        [(
            "push".into(),
            "acme/widgets".into(),
            Some("refs/heads/main".into()),
            Some("main".into()),
            "b".repeat(40)
        )]
    );

    // The same delivery again: answered, not stored twice.
    let (status, json) = server.webhook("github", "push", "delivery-1", &body, &sign(&body));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["duplicate"], true);

    // A wrong signature, a missing one: 401 and nothing stored.
    let other = push_body('c');
    let (status, _) = server.webhook("github", "push", "delivery-2", &other, &sign(&body));
    assert_eq!(status, 401);
    let (status, _) = server.webhook("github", "push", "delivery-2", &other, "");
    assert_eq!(status, 401);
    // Authentic but malformed: 400 and nothing stored.
    let bad = r#"{"ref": "refs/heads/main"}"#;
    let (status, _) = server.webhook("github", "push", "delivery-3", bad, &sign(bad));
    assert_eq!(status, 400);
    // An unknown instance: 404.
    let (status, _) = server.webhook("gitlab", "push", "delivery-4", &body, &sign(&body));
    assert_eq!(status, 404);
    // A ping is stored as ignored.
    let (status, json) = server.webhook("github", "ping", "delivery-5", "{}", &sign("{}"));
    assert_eq!(status, 202, "{json}");
    assert_eq!(json["events"], 0);
    let (deliveries, events) = rows(db_url);
    assert_eq!(
        deliveries,
        [
            ("delivery-1".into(), "received".into()),
            ("delivery-5".into(), "ignored".into())
        ]
    );
    assert_eq!(events.len(), 1);

    let metrics = server.get("/metrics");
    let count = |outcome: &str| {
        metric(
            &metrics,
            &format!("kiln_webhooks_total{{forge=\"github\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("accepted"), 1, "{metrics}");
    assert_eq!(count("duplicate"), 1, "{metrics}");
    assert_eq!(count("unauthenticated"), 2, "{metrics}");
    assert_eq!(count("malformed"), 1, "{metrics}");
    assert_eq!(count("ignored"), 1, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "kiln_webhooks_total{forge=\"\",outcome=\"unknown_forge\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "kiln_deliveries_stored"), 2, "{metrics}");
    assert_eq!(metric(&metrics, "kiln_up"), 1, "{metrics}");

    // kill -9, then start again on the same database: what was stored is
    // there, and a redelivery is still a duplicate.
    server.kill();
    let server = setup.start();
    let (status, json) = server.webhook("github", "push", "delivery-1", &body, &sign(&body));
    assert_eq!(status, 200, "{json}: {}", server.stderr());
    assert_eq!(json["duplicate"], true);
    let metrics = server.get("/metrics");
    assert_eq!(metric(&metrics, "kiln_deliveries_stored"), 2, "{metrics}");
    let (deliveries, events) = rows(db_url);
    assert_eq!(deliveries.len(), 2);
    assert_eq!(events.len(), 1);
}

#[test]
fn webhooks_are_verified_stored_before_the_answer_and_survive_kill_9() {
    let setup = Setup::new("");
    let db = setup.data_dir().join("kiln.sqlite3");
    let server = setup.start();
    assert!(
        server
            .stdout
            .contains(&format!("database {}", db.display())),
        "{}",
        server.stdout
    );
    drop(server);
    exercise(&setup, &format!("sqlite://{}", db.display()));
    // WAL mode: the write-ahead log sits beside the database.
    let journal: String = block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    assert_eq!(journal, "wal");
}

#[test]
fn a_body_over_25_mib_is_refused_with_413() {
    let setup = Setup::new("");
    let server = setup.start();
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /webhooks/github HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-github-event: push\r\n\r\n{{",
        (25 << 20) + 1
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(stream);
    let metrics = server.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "kiln_webhooks_total{forge=\"github\",outcome=\"too_large\"}"
        ),
        1,
        "{metrics}"
    );
}

/// A delivery kept for a retry is handed to its plugin again, as it was
/// received, once its time has come; the events it yields then are stored
/// and the retry mark cleared.
#[test]
fn a_kept_webhook_is_handed_to_its_plugin_again_and_its_events_stored() {
    let setup =
        Setup::new("\n[forges.flaky]\nplugin = \"kiln-test-forge\"\nmode = \"retry-once\"\n");
    let server = setup.start();
    let body = push_body('e');
    let (status, json) = server.webhook("flaky", "push", "e-1", &body, &sign(&body));
    assert_eq!(status, 202, "{json}: {}", server.stderr());
    assert_eq!(json["retry_after"], 1, "{json}");
    assert_eq!(json["events"], 0, "{json}");
    let db = format!(
        "sqlite://{}",
        setup.data_dir().join("kiln.sqlite3").display()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (deliveries, events) = loop {
        let (deliveries, events) = rows(&db);
        if !events.is_empty() {
            break (deliveries, events);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kept delivery was not retried: {deliveries:?}\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].1, "received");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "push");
    assert_eq!(events[0].4, "e".repeat(40));
    let mark: (Option<i64>, Option<String>) = block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        sqlx::query_as("SELECT retry_at, error FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    assert_eq!(mark, (None, None), "the retry mark is cleared");
    assert!(
        server
            .stderr()
            .contains("retried a kept delivery: 1 events"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_webhook_the_plugin_cannot_handle_now_is_kept_and_a_trap_stores_nothing() {
    let setup = Setup::new(
        "[forges.later]\nplugin = \"kiln-test-forge\"\nmode = \"retry\"\n\n[forges.broken]\nplugin = \"kiln-test-forge\"\nmode = \"trap\"\n",
    );
    let server = setup.start();
    let body = push_body('d');
    // retry-after: the request is kept (keyed by its body's hash, as the
    // plugin returned no delivery id) for a later call, and answered 202.
    let (status, json) = server.webhook("later", "push", "d-1", &body, &sign(&body));
    assert_eq!(status, 202, "{json}: {}", server.stderr());
    assert_eq!(json["retry_after"], 30);
    assert_eq!(json["events"], 0);
    let key = json["delivery"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sha256:"), "{key}");
    let (status, json) = server.webhook("later", "push", "d-1", &body, &sign(&body));
    assert_eq!(
        (status, &json["duplicate"]),
        (200, &serde_json::json!(true))
    );
    // A trapping plugin: 500, nothing stored, the service keeps running.
    let (status, _) = server.webhook("broken", "push", "d-2", &body, &sign(&body));
    assert_eq!(status, 500);
    let db = format!(
        "sqlite://{}",
        setup.data_dir().join("kiln.sqlite3").display()
    );
    let (deliveries, events) = rows(&db);
    assert_eq!(deliveries, [(key, "received".into())]);
    assert!(events.is_empty());
    let metrics = server.get("/metrics");
    for (series, n) in [
        (
            "kiln_webhooks_total{forge=\"later\",outcome=\"retry_later\"}",
            1,
        ),
        (
            "kiln_webhooks_total{forge=\"later\",outcome=\"duplicate\"}",
            1,
        ),
        (
            "kiln_webhooks_total{forge=\"broken\",outcome=\"plugin_failed\"}",
            1,
        ),
    ] {
        assert_eq!(metric(&metrics, series), n, "{series}: {metrics}");
    }
    assert!(
        server.stderr().contains("deliberate panic"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_forge_whose_plugin_is_missing_stops_the_start_naming_it() {
    let setup = Setup::new("[forges.gitea]\nplugin = \"gitea\"\n");
    let out = setup.command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[forges.gitea] plugin `gitea` is not installed")
            && stderr.contains("kiln-test-forge"),
        "{stderr}"
    );
}

#[test]
fn postgres_holds_the_same_tables_and_survives_kill_9() {
    let Some(pg) = Postgres::start() else {
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"
        );
        return;
    };
    let url = pg.url();
    let setup = Setup::new(&format!("\n[serve]\ndatabase_url = \"{url}\"\n"));
    let server = setup.start();
    assert!(
        server.stdout.contains(&format!(
            "database postgres://127.0.0.1:{}/postgres",
            pg.port
        )),
        "{}",
        server.stdout
    );
    drop(server);
    exercise(&setup, &url);
    assert!(
        !Path::new(&setup.data_dir()).join("kiln.sqlite3").exists(),
        "no SQLite database is created when PostgreSQL is configured"
    );
}
