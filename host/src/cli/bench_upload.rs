//! `kiln bench upload`: the `binary-cache` plugin uploading a closure of
//! many paths (200 MiB by default) to a local S3 server (SeaweedFS), against
//! `nix copy --to 'http://…?compression=zstd'` to the same server in the
//! same run, with zstd on both sides. Prints the median wall time of each,
//! the ratio and the peak RSS of each uploader.
//!
//! The data paths are deterministic (the same across runs, so the store
//! keeps one copy); every upload goes to a fresh key prefix, so each side
//! uploads everything every time.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use kiln_runtime::bindings::post_build_types::{BuildInfo, Output};

use crate::config::KilnConfig;
use crate::plugins::PluginHost;
use crate::seaweed::{ACCESS_KEY_ID, OPEN_BUCKET, SECRET_ACCESS_KEY, Seaweed};

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Store paths in the closure (besides the one that refers to them).
    #[arg(long, default_value_t = 100)]
    paths: usize,
    /// Total size of their files, in MiB.
    #[arg(long, default_value_t = 200)]
    mib: usize,
    /// Uploads timed on each side (alternating; the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// A small xorshift generator: the data only needs to be deterministic and
/// about as compressible as build outputs (zstd takes it to roughly 40 %).
struct Data(u64);

impl Data {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `len` bytes: lines of words from a small vocabulary, with one line
    /// in four of random bytes.
    fn fill(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "nix",
            "store",
            "kiln",
            "build",
            "derivation",
            "output",
            "closure",
            "cache",
            "lib",
            "share",
            "bin",
            "include",
            "pkgconfig",
            "0.1.2",
            "x86_64-linux",
            "README",
            "=",
            "/nix/store/",
            "{",
            "}",
            ";",
        ];
        let mut out = Vec::with_capacity(len + 128);
        while out.len() < len {
            if self.next().is_multiple_of(4) {
                for _ in 0..8 {
                    out.extend_from_slice(&self.next().to_le_bytes());
                }
            } else {
                for _ in 0..12 {
                    out.extend_from_slice(
                        WORDS[(self.next() % WORDS.len() as u64) as usize].as_bytes(),
                    );
                    out.push(b' ');
                }
            }
            out.push(b'\n');
        }
        out.truncate(len);
        out
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Adds the data paths and builds the path referring to all of them;
/// returns that path.
fn make_closure(args: &UploadArgs, work: &Path) -> Result<String, String> {
    let per_path = (args.mib << 20) / args.paths.max(1);
    let mut paths = Vec::new();
    for i in 0..args.paths {
        let dir = work.join(format!("kiln-bench-data-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut data = Data(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x2545_f491_4f6c_dd1d));
        // Two files per path, so NARs have some structure.
        std::fs::write(dir.join("a"), data.fill(per_path / 2)).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("b"), data.fill(per_path - per_path / 2))
            .map_err(|e| e.to_string())?;
        paths.push(run(Command::new("nix-store").arg("--add").arg(&dir))?);
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }
    let refs: Vec<String> = paths
        .iter()
        .map(|p| format!("${{builtins.storePath \"{p}\"}}"))
        .collect();
    let expr = format!(
        "derivation {{ name = \"kiln-bench-upload-top\"; system = \"x86_64-linux\"; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo {} > $out\" ]; }}",
        refs.join(" ")
    );
    let file = work.join("top.nix");
    std::fs::write(&file, expr).map_err(|e| e.to_string())?;
    run(Command::new("nix-build").arg("--no-out-link").arg(&file))
}

/// Peak resident memory of this process since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak so that [`peak_rss_kib`] measures from now.
fn reset_peak_rss() {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
    {
        let _ = f.write_all(b"5");
    }
}

/// Runs `cmd`, returning its wall time and its peak RSS in KiB.
fn timed_child(cmd: &mut Command) -> Result<(Duration, u64), String> {
    let start = Instant::now();
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    Ok((elapsed, usage.ru_maxrss as u64))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn upload(args: UploadArgs) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    eprintln!("starting SeaweedFS…");
    let server = Seaweed::start()?;
    eprintln!(
        "making a closure of {} paths, {} MiB…",
        args.paths + 1,
        args.mib
    );
    let top = make_closure(&args, work.path())?;
    let closure = run(Command::new("nix-store").args(["--query", "--requisites", &top]))?;
    let closure_bytes: u64 = run(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--closure-size",
        &top,
    ]))?
    .split_whitespace()
    .last()
    .and_then(|s| s.parse().ok())
    .unwrap_or(0);

    let secret = |name: &str, value: &str| -> Result<String, String> {
        let file = work.path().join(name);
        std::fs::write(&file, value).map_err(|e| e.to_string())?;
        Ok(format!(
            "[secrets.{name}]\nfile = {:?}\n",
            file.display().to_string()
        ))
    };
    let key = run(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "key",
        "generate-secret",
        "--key-name",
        "kiln-bench",
    ]))?;
    let text = format!(
        "[grants.binary-cache]\nhosts = [\"127.0.0.1:{port}\"]\n\
         secrets = [\"s3-access-key-id\", \"s3-secret-access-key\", \"signing-key\"]\n\
         store = [\"path-info\", \"nar-stream\"]\n\
         limits = {{ memory_mib = 256, cpu_ms = 120000, timeout_secs = 1200 }}\n\n{}{}{}",
        secret("s3-access-key-id", ACCESS_KEY_ID)?,
        secret("s3-secret-access-key", SECRET_ACCESS_KEY)?,
        secret("signing-key", &key)?,
        port = server.s3_port,
    );
    let config =
        KilnConfig::parse(Path::new("bench-kiln.toml"), &text).map_err(|e| e.to_string())?;
    let nix = kiln_nix::Nix::detect().await.map_err(|e| e.to_string())?;
    let host = PluginHost::start(config, Some(nix))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let plugin = host
        .registry
        .get("binary-cache")
        .ok_or("the binary-cache plugin is not built in")?;
    let (grant, limits) = host.grant_for("binary-cache", "bench");
    let build = BuildInfo {
        project: "bench".into(),
        attr: "x86_64-linux.upload".into(),
        system: "x86_64-linux".into(),
        drv_path: String::new(),
        outputs: vec![Output {
            name: "out".into(),
            path: top.clone(),
        }],
        branch: Some("main".into()),
        pull_request: None,
        is_default_branch: true,
        rev: None,
        cached: false,
        signatures: Vec::new(),
    };

    let mut kiln_times = Vec::new();
    let mut kiln_rss = 0;
    let mut nix_times = Vec::new();
    let mut nix_rss = 0;
    let mut message = String::new();
    for run_no in 0..args.runs.max(1) {
        let stamp = format!("{}-{run_no}", std::process::id());
        // Kiln: the plugin through the host, as a post-build step runs it.
        let settings: Vec<(String, String)> = [
            ("bucket", OPEN_BUCKET.to_owned()),
            ("endpoint", server.endpoint()),
            ("prefix", format!("kiln-{stamp}")),
            ("compression", "zstd".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        reset_peak_rss();
        let start = Instant::now();
        let step = host
            .run_post_build(&plugin, &build, &settings, grant.clone(), limits)
            .await;
        kiln_times.push(start.elapsed());
        kiln_rss = kiln_rss.max(peak_rss_kib());
        message = step
            .result
            .map_err(|e| format!("the plugin failed: {e}"))?
            .message;

        // Nix: the same closure to the same server.
        let url = format!(
            "{}/{OPEN_BUCKET}/nix-{stamp}?compression=zstd",
            server.endpoint()
        );
        let (elapsed, rss) = timed_child(Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &url,
            &top,
        ]))?;
        nix_times.push(elapsed);
        nix_rss = nix_rss.max(rss);
    }
    let objects = |prefix: &str| server.list(OPEN_BUCKET, prefix).map(|k| k.len());
    let last = format!("{}-{}", std::process::id(), args.runs.max(1) - 1);
    let kiln_objects = objects(&format!("kiln-{last}/"))?;
    let nix_objects = objects(&format!("nix-{last}/"))?;
    let kiln = median(kiln_times);
    let nix_copy = median(nix_times);
    let mib = closure_bytes as f64 / f64::from(1 << 20);
    println!(
        "upload: closure of {} paths, {mib:.0} MiB of NAR, to SeaweedFS S3 on loopback, zstd, {} runs each",
        closure.lines().count(),
        args.runs.max(1)
    );
    println!(
        "  kiln binary-cache plugin: median {:.2} s ({:.0} MiB/s), peak RSS of the kiln process {} MiB; {message}",
        kiln.as_secs_f64(),
        mib / kiln.as_secs_f64(),
        kiln_rss / 1024
    );
    println!(
        "  nix copy --to http://…?compression=zstd: median {:.2} s ({:.0} MiB/s), peak RSS {} MiB",
        nix_copy.as_secs_f64(),
        mib / nix_copy.as_secs_f64(),
        nix_rss / 1024
    );
    println!("  objects written: kiln {kiln_objects}, nix copy {nix_objects}");
    println!(
        "  ratio nix copy / kiln {:.2} (target ≥ 1.0)",
        nix_copy.as_secs_f64() / kiln.as_secs_f64()
    );
    Ok(())
}
