//! A `kiln serve` process for tests: started from a command line, its
//! address read from its first line of stdout, webhooks and GETs sent to it
//! over a socket, `kill -9` on demand and on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stdout: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Run `cmd` (a `kiln serve` command line) with stdout and stderr in
    /// files under `dir`, and wait for the address it prints.
    pub fn start(mut cmd: Command, dir: &Path) -> Server {
        let n = std::fs::read_dir(dir).unwrap().count();
        let stdout = dir.join(format!("stdout-{n}"));
        let stderr = dir.join(format!("stderr-{n}"));
        let child = cmd
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            addr: String::new(),
            stdout: std::fs::read_to_string(&stdout).unwrap_or_default(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(first) = text.lines().next()
                && text.contains('\n')
            {
                let addr = first
                    .strip_prefix("kiln serve: listening on http://")
                    .unwrap_or_else(|| panic!("first line of stdout: {first:?}"));
                server.addr = addr.to_owned();
                // The database line follows at once.
                std::thread::sleep(Duration::from_millis(50));
                server.stdout = std::fs::read_to_string(&stdout).unwrap_or_default();
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("kiln serve exited with {status}: {}", server.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "kiln serve printed no address: {}",
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST a webhook; returns status and JSON body.
    pub fn webhook(
        &self,
        instance: &str,
        event: &str,
        delivery: &str,
        body: &str,
        signature: &str,
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut response = agent
            .post(self.url(&format!("/webhooks/{instance}")))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap_or_else(|e| panic!("POST: {e}; {}", self.stderr()));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub fn get(&self, path: &str) -> String {
        let mut response = ureq::get(self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}; {}", self.stderr()));
        response.body_mut().read_to_string().unwrap()
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster in a temporary directory, listening on loopback,
/// run as `nobody` when the test runs as root.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// Start one, or `None` when Debian's server binaries are missing.
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .find(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())?;
        let dir = tempfile::tempdir().unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let status = Command::new("chown")
                .args(["nobody"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres { bin, dir, port };
        let data = pg.data();
        pg.run(&[
            "initdb",
            "-D",
            &data,
            "-U",
            "kiln",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {}",
            pg.dir.path().display()
        );
        let log = format!("{}/log", pg.dir.path().display());
        pg.run(&[
            "pg_ctl", "-D", &data, "-o", &options, "-l", &log, "-w", "start",
        ]);
        Some(pg)
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn run(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(&args[1..])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its URL for `database_url`.
    pub fn url(&self) -> String {
        format!("postgres://kiln@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
