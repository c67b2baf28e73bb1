//! Parts of a `kiln serve` end-to-end test that do not depend on the forge:
//! a project (a work tree, its bare remote at a path the fake forge serves,
//! salted checks so each test really builds), the `kiln serve` command line,
//! a stand-in forge (`tests/servers/*.py`) serving the project's git root
//! and its `kiln.toml` tables, webhooks posted with any headers and path,
//! SQLite queries and waiting for a condition.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{python_server, salt, sh};
use crate::service::Server;

/// `git -C dir ARGS` with a fixed identity; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    sh(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args))
    .trim()
    .to_owned()
}

/// A project: a work tree and its bare remote `<git root>/<name>.git`, with
/// a flake of salted checks committed on `main` and pushed.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub salt: String,
    remote: PathBuf,
}

impl Project {
    /// Project `name` (`acme/widget`) with `checks`.
    pub fn new(name: &str, checks: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("git").join(format!("{name}.git"));
        let p = Project {
            dir,
            salt: salt(),
            remote,
        };
        std::fs::create_dir(p.work()).unwrap();
        git(&p.work(), &["init", "-q", "-b", "main"]);
        p.write_flake(checks);
        git(&p.work(), &["add", "-A"]);
        git(&p.work(), &["commit", "-q", "-m", "Add checks"]);
        std::fs::create_dir_all(p.remote.parent().unwrap()).unwrap();
        sh(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(p.work())
            .arg(&p.remote));
        git(
            &p.work(),
            &["remote", "add", "origin", p.remote.to_str().unwrap()],
        );
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory holding the bare remotes, which a fake forge serves.
    pub fn git_root(&self) -> PathBuf {
        self.dir.path().join("git")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The work tree's `HEAD`.
    pub fn head(&self) -> String {
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// A flake whose checks run `script`s (salted, so each test builds).
    pub fn write_flake(&self, checks: &[(&str, &str)]) {
        let mut body = String::new();
        for (name, script) in checks {
            body.push_str(&format!(
                "      {name} = derivation {{ name = \"{name}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"{} && echo {name}-{} > $out\" ]; }};\n",
                script.replace('"', "\\\""),
                self.salt
            ));
        }
        std::fs::write(
            self.work().join("flake.nix"),
            format!(
                "{{\n  outputs = {{ self }}: {{\n    checks.x86_64-linux = {{\n{body}    }};\n  }};\n}}\n"
            ),
        )
        .unwrap();
    }

    /// Commit everything with `message` and push it to `git_ref` of the
    /// remote (a branch's or a change's full ref); returns the commit.
    pub fn commit_and_push(&self, git_ref: &str, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(
            &self.work(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(
            &self.work(),
            &["push", "-q", "-f", "origin", &format!("HEAD:{git_ref}")],
        );
        self.head()
    }

    /// Write `kiln.toml`: `[serve]` with links to `http://kiln.test`, then
    /// `tables`.
    pub fn config(&self, tables: &str) -> PathBuf {
        let config = format!(
            "[serve]\nurl = \"http://kiln.test\"\nsystems = [\"x86_64-linux\"]\nmax_jobs = 2\npoll_interval_secs = 0\n\n{tables}"
        );
        let path = self.dir.path().join("kiln.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    /// A secret file holding `value`; its path.
    pub fn secret(&self, name: &str, value: &str) -> PathBuf {
        let path = self.dir.path().join(format!("secret-{name}"));
        std::fs::write(&path, value).unwrap();
        path
    }

    /// `kiln serve` on port 0 with SQLite under the project's directory.
    pub fn serve(&self, config: &Path) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env_remove("KILN_DATABASE_URL")
            .env("KILN_LOG", "info")
            .stdin(Stdio::null());
        Server::start(cmd, self.dir.path())
    }

    /// Rows of `sql` from the service's SQLite database.
    pub fn query<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("data/kiln.sqlite3").display()
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            })
    }

    /// The number `sql` (one BIGINT) counts.
    pub fn count(&self, sql: &str) -> i64 {
        let rows: Vec<(i64,)> = self.query(sql);
        rows[0].0
    }
}

/// POST `body` to `path` of `server` with `headers`; status and JSON body.
pub fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = agent
        .post(server.url(path))
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request
        .send(body.as_bytes())
        .unwrap_or_else(|e| panic!("POST {path}: {e}; {}", server.stderr()));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A stand-in forge process, killed on drop.
pub struct Fake {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Fake {
    /// `script` with `args`, serving the project's git root.
    pub fn start(script: &str, project: &Project, args: &[&str]) -> Self {
        let root = project.git_root();
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.extend([OsStr::new("--git-root"), root.as_os_str()]);
        let log = project.path().join(format!("{script}.log"));
        let (child, port) = python_server(script, &args, Some(&log));
        Fake { child, port }
    }

    pub fn state(&self) -> Value {
        let mut r = ureq::get(format!("http://127.0.0.1:{}/_test/state", self.port))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kiln.toml` with forge instance `name` of plugin `name` on `fake`:
/// `settings` (its own keys), the plugin's `secrets` (name, value) in files
/// and granted, the fake's host granted, and `grant`'s further lines.
pub fn forge_config(
    project: &Project,
    fake: &Fake,
    name: &str,
    settings: &str,
    secrets: &[(&str, &str)],
    grant: &str,
) -> PathBuf {
    let names: Vec<&str> = secrets.iter().map(|s| s.0).collect();
    let mut tables = format!(
        "[forges.{name}]\nplugin = \"{name}\"\n{settings}\ndiscover = false\n\n\
         [grants.{name}]\nsecrets = {names:?}\nhosts = [\"127.0.0.1:{}\"]\n{grant}",
        fake.port
    );
    for (secret, value) in secrets {
        let file = project.secret(secret, value);
        tables.push_str(&format!(
            "\n[secrets.{secret}]\nfile = \"{}\"\n",
            file.display()
        ));
    }
    project.config(&tables)
}

/// Deliveries and events stored.
pub fn stored(project: &Project) -> (i64, i64) {
    (
        project.count("SELECT COUNT(*) FROM deliveries"),
        project.count("SELECT COUNT(*) FROM events"),
    )
}

/// Poll `done` every 100 ms until it gives a value; after `secs` seconds
/// panic with `what` and the service's log.
pub fn wait_for<T>(
    server: &Server,
    secs: u64,
    what: &str,
    mut done: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}\nkiln stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
