//! `kiln bench ingest`: signed GitHub push webhooks sent to a real
//! `kiln serve` (SQLite, WAL) over concurrent keep-alive connections from
//! one client thread; prints accepted/s and p50/p99 latency with group
//! commit and with one transaction per request (`KILN_INGEST_BATCH=1`), then checks the
//! database holds exactly the deliveries sent.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bench_serve::{ServeProcess, hmac_sha256};
use crate::serve::db::Database;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Webhooks to send per run.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// Run the benchmark; prints the figures.
pub fn main(args: IngestArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln bench ingest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One run's figures.
struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn run(args: &IngestArgs) -> Result<(), String> {
    let n = args.requests.max(1);
    let c = args.concurrency.clamp(1, n);
    println!("kiln bench ingest: {n} signed push webhooks, {c} keep-alive clients");
    let grouped = one_run(n, c, "grouped", None)?;
    print_figures("group commit", &grouped);
    let single = one_run(n, c, "single", Some("1"))?;
    print_figures("one transaction per request", &single);
    println!(
        "  ratio: {:.2}x accepted/s",
        grouped.per_sec / single.per_sec.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// The load generator: `c` keep-alive connections driven by one thread
/// (epoll through tokio, as wrk does), so the client takes as little of the
/// two cores as possible. Each request is written with one `write` and its
/// answer read to the end of its `Content-Length`; anything but 202 fails
/// the run. Returns when it started and every request's latency.
fn load(
    addr: std::net::SocketAddr,
    n: usize,
    c: usize,
    tag: &str,
    signature: &str,
    body: &[u8],
) -> Result<(Instant, Vec<Duration>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..c {
            let next = next.clone();
            let (tag, signature, body) = (tag.to_owned(), signature.to_owned(), body.to_vec());
            clients.spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut own = Vec::new();
                let mut request = Vec::with_capacity(body.len() + 512);
                let mut answer = Vec::with_capacity(1024);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, String>(own);
                    }
                    request.clear();
                    request.extend_from_slice(
                        format!(
                            "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\n\
                             X-GitHub-Event: push\r\nX-GitHub-Delivery: bench-{tag}-{i}\r\n\
                             X-Hub-Signature-256: {signature}\r\n\
                             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    request.extend_from_slice(&body);
                    let sent = Instant::now();
                    stream
                        .write_all(&request)
                        .await
                        .map_err(|e| format!("POST to {addr}: {e}"))?;
                    let code = read_answer(&mut stream, &mut answer).await?;
                    if code != 202 {
                        return Err(format!("POST to {addr} answered {code}, not 202"));
                    }
                    own.push(sent.elapsed());
                }
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(joined) = clients.join_next().await {
            all.extend(joined.map_err(|e| format!("a client task failed: {e}"))??);
        }
        Ok::<_, String>(all)
    })?;
    Ok((start, latencies))
}

/// Read one HTTP/1.1 answer (headers, then `Content-Length` bytes) from
/// `stream` into `buf`; returns its status code.
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .ok_or_else(|| format!("an answer without Content-Length: {head:?}"))?;
            while buf.len() < end + 4 + length {
                read_some(stream, buf, &mut chunk).await?;
            }
            return Ok(code);
        }
        read_some(stream, buf, &mut chunk).await?;
    }
}

async fn read_some(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<(), String> {
    let got = stream
        .read(chunk)
        .await
        .map_err(|e| format!("reading an answer: {e}"))?;
    if got == 0 {
        return Err("the service closed the connection".into());
    }
    buf.extend_from_slice(&chunk[..got]);
    Ok(())
}

fn print_figures(label: &str, f: &Figures) {
    println!(
        "  {label}: {:.0} accepted/s, p50 {:.2} ms, p99 {:.2} ms",
        f.per_sec,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

fn one_run(n: usize, c: usize, tag: &str, batch: Option<&str>) -> Result<Figures, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let dir = dir.path();
    let secret = format!("bench ingest secret {tag}");
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, &secret)
        .map_err(|e| format!("cannot write {}: {e}", secret_file.display()))?;
    let config = format!(
        "[serve]\npoll_interval_secs = 0\n\n\
         [forges.github]\nplugin = \"github\"\n\n\
         [grants.github]\nsecrets = [\"github-webhook-secret\"]\n\n\
         [secrets.github-webhook-secret]\nfile = {:?}\n",
        secret_file.display().to_string()
    );
    let config_file = dir.join("kiln.toml");
    std::fs::write(&config_file, config)
        .map_err(|e| format!("cannot write {}: {e}", config_file.display()))?;
    let data_dir = dir.join("data");
    let env: Vec<(&str, &str)> = batch
        .map(|b| vec![(crate::serve::ingest::BATCH_ENV, b)])
        .unwrap_or_default();
    let serve = ServeProcess::start_with_env(dir, &config_file, &data_dir, &env)?;

    let body = include_str!("../../../plugins/github/tests/fixtures/push.json");
    let signature = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body.as_bytes()))
    );
    let addr: std::net::SocketAddr = serve
        .addr
        .parse()
        .map_err(|e| format!("the service's address {}: {e}", serve.addr))?;
    let (start, mut latencies) = load(addr, n, c, tag, &signature, body.as_bytes())?;
    let elapsed = start.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let figures = Figures {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    };
    let stored = count(&data_dir.join("kiln.sqlite3"))?;
    drop(serve);
    if stored != n as i64 {
        return Err(format!(
            "{tag}: the database holds {stored} deliveries, {n} were accepted"
        ));
    }
    Ok(figures)
}

/// Deliveries in the SQLite file (WAL allows reading beside the service).
fn count(path: &Path) -> Result<i64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let db = Database::open(None, path)
            .await
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        db.count_deliveries()
            .await
            .map_err(|e| format!("cannot count deliveries in {}: {e}", path.display()))
    })
}
