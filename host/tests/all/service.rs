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
