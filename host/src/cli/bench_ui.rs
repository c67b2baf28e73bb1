//! `kiln bench ui`: the web UI's run page for a finished run of thousands
//! of jobs (default 5,000; a quarter of them depending on one of the rest,
//! one in fifty failed), served by a real `kiln serve` on SQLite.
//!
//! 1. Time to the first byte and to the last of `GET /runs/{id}` (one
//!    request at a time on one connection; the summary is streamed first,
//!    the graph and jobs after it), against `GET /api/v1/runs/{id}/jobs`,
//!    the same jobs as JSON, measured in the same run.
//! 2. With Debian's chromium and `tests/browser/node_modules` present, the
//!    time the browser takes to show the page's SVG job graph
//!    (`tests/browser/run.mjs --bench`); skipped, saying so, without them.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::Args;
use kiln_engine::job::JobStatus;

use super::bench_serve::{job, running_run, scratch_database, serve_database};
use crate::serve::db::Database;
use crate::serve::pipeline::store::{self, JobWrite};

/// `kiln bench ui`.
#[derive(Debug, Args)]
pub struct UiBenchArgs {
    /// Jobs in the run.
    #[arg(long, default_value_t = 5_000)]
    jobs: usize,
    /// Requests timed per page.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// Browser loads of the page (median printed).
    #[arg(long, default_value_t = 5)]
    loads: usize,
}

/// Run the benchmark.
pub fn main(args: UiBenchArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln bench ui: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln bench ui: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A finished run of `n` jobs with dependency edges; returns its id.
async fn seed(db: &Database, n: usize) -> Result<i64, String> {
    let (run, attempt) = running_run(db, "ui").await?;
    let roots = (n * 3 / 4).max(1);
    let now = crate::serve::pipeline::now_ms();
    let writes: Vec<JobWrite> = (0..n)
        .map(|i| {
            let status = if i % 50 == 7 {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            };
            JobWrite {
                idx: i as u32,
                job: job("x86_64-linux", i, status),
                started_at: Some(now - 1200),
                finished_at: Some(now),
            }
        })
        .collect();
    store::write_jobs(db, run, &writes)
        .await
        .map_err(|e| format!("recording {n} jobs: {e}"))?;
    let edges: Vec<(String, String)> = (roots..n)
        .map(|i| {
            (
                writes[i].job.attr.clone(),
                writes[i % roots].job.attr.clone(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = edges
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    store::write_edges(db, run, &pairs)
        .await
        .map_err(|e| format!("recording the job graph: {e}"))?;
    store::set_evaluated(db, run, None)
        .await
        .map_err(|e| format!("recording the evaluation: {e}"))?;
    let reports: Vec<_> = writes.into_iter().map(|w| w.job).collect();
    let summary = serde_json::to_string(&kiln_engine::report::Summary::of(&reports))
        .map_err(|e| e.to_string())?;
    store::finish_run(db, run, attempt, "failed", None, Some(&summary))
        .await
        .map_err(|e| format!("finishing run {run}: {e}"))?;
    Ok(run)
}

/// Time to the first byte and to the last of `requests` GETs of `url`, one
/// at a time on one connection: sorted milliseconds, and the body's size.
fn time_gets(url: &str, requests: usize) -> Result<(Vec<f64>, Vec<f64>, usize), String> {
    let agent = ureq::Agent::new_with_defaults();
    let (mut first, mut whole, mut size) = (Vec::new(), Vec::new(), 0);
    // One untimed request warms the connection and SQLite's page cache.
    for i in 0..=requests {
        let sent = Instant::now();
        let mut r = agent
            .get(url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let headers = sent.elapsed().as_secs_f64() * 1000.0;
        let n = std::io::copy(&mut r.body_mut().as_reader(), &mut std::io::sink())
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        if i > 0 {
            first.push(headers);
            whole.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        size = n as usize;
    }
    first.sort_by(f64::total_cmp);
    whole.sort_by(f64::total_cmp);
    Ok((first, whole, size))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench(args: &UiBenchArgs) -> Result<(), String> {
    let n = args.jobs.max(1);
    let (tmp, data, db) = scratch_database().await?;
    let run = seed(&db, n).await?;
    let serve = serve_database(db, tmp.path(), &data).await?;
    let page = format!("http://{}/runs/{run}", serve.addr);
    let api = format!("http://{}/api/v1/runs/{run}/jobs", serve.addr);
    let requests = args.requests.max(1);
    let (page_first, page_whole, page_bytes) = time_gets(&page, requests)
        .map_err(|e| format!("{e}; kiln serve: {}", serve.stderr_tail()))?;
    let (api_first, api_whole, api_bytes) = time_gets(&api, requests)?;
    println!(
        "ui run page: GET /runs/{{id}} of a finished run of {n} jobs ({} KiB of HTML with the SVG graph), \
         one request at a time ({requests} timed)",
        page_bytes / 1024
    );
    println!(
        "  first byte p50 {:.1} ms, p99 {:.1} ms; whole page p50 {:.1} ms (target: first byte <= 50 ms)",
        pct(&page_first, 0.5),
        pct(&page_first, 0.99),
        pct(&page_whole, 0.5)
    );
    println!(
        "  baseline GET /api/v1/runs/{{id}}/jobs, the same jobs as JSON ({} KiB): first byte p50 {:.1} ms, \
         whole p50 {:.1} ms; page/API ratio {:.2} to the first byte, {:.2} to the last",
        api_bytes / 1024,
        pct(&api_first, 0.5),
        pct(&api_whole, 0.5),
        pct(&page_first, 0.5) / pct(&api_first, 0.5).max(0.001),
        pct(&page_whole, 0.5) / pct(&api_whole, 0.5).max(0.001)
    );

    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let chromium = std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() || !browser.join("node_modules/playwright-core").is_dir() {
        println!(
            "  browser: skipped (no {chromium} or tests/browser/node_modules: run .ci/setup-browser)"
        );
        return Ok(());
    }
    let out = Command::new("node")
        .arg(browser.join("run.mjs"))
        .args(["--bench", &page, "--repeat", &args.loads.max(1).to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start node: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the browser benchmark failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the browser benchmark printed no JSON: {e}"))?;
    let m = &r["median"];
    println!(
        "  browser ({}): {} nodes, {} edges; graph shown {:.0} ms after navigation, {:.0} ms after the \
         first byte (target <= 1000 ms); DOMContentLoaded {:.0} ms (median of {})",
        r["browser"].as_str().unwrap_or("?"),
        r["nodes"],
        r["edges"],
        m["graph_ms"].as_f64().unwrap_or(0.0),
        m["browser_ms"].as_f64().unwrap_or(0.0),
        m["dom_content_loaded_ms"].as_f64().unwrap_or(0.0),
        r["repeat"]
    );
    Ok(())
}
