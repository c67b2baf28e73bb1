//! `kiln bench ingest`: signed GitHub push webhooks sent to a real
//! `kiln serve` (SQLite, WAL) from concurrent keep-alive clients; prints
//! accepted/s and p50/p99 latency with group commit and with one
//! transaction per request (`KILN_INGEST_BATCH=1`), then checks the
//! database holds exactly the deliveries sent.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

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
    let url = format!("http://{}/webhooks/github", serve.addr);
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..c)
            .map(|w| {
                let (url, signature) = (&url, &signature);
                scope.spawn(move || -> Result<Vec<Duration>, String> {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(60)))
                        .build()
                        .into();
                    let mut own = Vec::new();
                    for i in (w..n).step_by(c) {
                        let sent = Instant::now();
                        let mut answer = agent
                            .post(url)
                            .header("X-GitHub-Event", "push")
                            .header("X-GitHub-Delivery", format!("bench-{tag}-{i}"))
                            .header("X-Hub-Signature-256", signature)
                            .header("Content-Type", "application/json")
                            .send(body.as_bytes())
                            .map_err(|e| format!("POST {url}: {e}"))?;
                        let code = answer.status().as_u16();
                        let _ = answer.body_mut().read_to_string();
                        if code != 202 {
                            return Err(format!("POST {url} answered {code}, not 202"));
                        }
                        own.push(sent.elapsed());
                    }
                    Ok(own)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            all.extend(
                w.join()
                    .map_err(|_| "a client thread panicked".to_owned())??,
            );
        }
        Ok::<_, String>(all)
    })?;
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
