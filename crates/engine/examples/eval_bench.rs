//! Evaluation benchmark: Kiln's built-in evaluator on 200 fresh checks (150
//! independent, 50 depending on one of those) against the floor, one
//! `nix eval` of all drvPaths, measured in the same run on freshly salted
//! flakes. Prints figures; asserts nothing.
//!
//! `CARGO_TARGET_DIR=target/engine cargo run --release -p kiln-engine --example eval_bench`

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kiln_engine::eval::{EvalRequest, EvaluatorChoice, evaluate};
use kiln_nix::Nix;
use tokio::sync::mpsc;

/// `heavy`: every check costs real evaluation work (a 300,000-element fold).
fn write_flake(dir: &Path, n: usize, heavy: bool) {
    let salt = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut checks = String::new();
    for i in 0..n {
        if i < n * 3 / 4 {
            checks.push_str(&format!("c{i} = mk \"c{i}\" \"echo {i} > $out\";\n"));
        } else {
            let dep = i % (n * 3 / 4);
            checks.push_str(&format!(
                "c{i} = mk \"c{i}\" \"read l < ${{self.checks.x86_64-linux.c{dep}}}; echo $l > $out\";\n"
            ));
        }
    }
    let work = if heavy {
        "builtins.toString (builtins.foldl' builtins.add 0 (builtins.genList (i: i) 300000))"
    } else {
        "\"\""
    };
    let text = format!(
        "{{ outputs = {{ self }}: let salt = \"{salt}\"; mk = name: script: derivation {{ inherit name salt; work = {work}; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" script ]; }}; in {{ checks.x86_64-linux = {{\n{checks}}}; }}; }}\n"
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("flake.nix"), text).unwrap();
}

async fn floor(nix: &Nix, dir: &Path) -> f64 {
    // One process, no streaming, no failure isolation: the least possible.
    let start = Instant::now();
    let mut cmd = nix.command("nix");
    cmd.args(["eval", "--json", "--no-write-lock-file"])
        .arg(format!("{}#checks", dir.display()))
        .args([
            "--apply",
            "c: builtins.mapAttrs (n: v: v.drvPath) c.x86_64-linux",
        ]);
    kiln_nix::run_output(&mut cmd, "nix eval").await.unwrap();
    start.elapsed().as_secs_f64()
}

async fn kiln(nix: &Nix, dir: &Path, workers: usize, check: bool) -> (f64, f64, usize) {
    let mut req = EvalRequest::new(dir, "checks");
    req.workers = workers;
    req.check_cache_status = check;
    req.evaluator = EvaluatorChoice::Builtin;
    let (tx, mut rx) = mpsc::channel(64);
    let start = Instant::now();
    let first = tokio::spawn(async move {
        let mut first = None;
        let mut n = 0;
        while rx.recv().await.is_some() {
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            n += 1;
        }
        (first.unwrap_or(0.0), n)
    });
    let summary = evaluate(nix, &req, tx).await.unwrap();
    let total = start.elapsed().as_secs_f64();
    let (first, n) = first.await.unwrap();
    assert_eq!(n, summary.jobs);
    (total, first, summary.processes)
}

#[tokio::main]
async fn main() {
    let nix = Nix::detect().await.unwrap();
    for (n, heavy) in [(200, false), (40, true)] {
        let kind = if heavy { "expensive" } else { "small" };
        for round in 0..2 {
            let base = tempfile::tempdir().unwrap();
            let d = |name: &str| base.path().join(name);
            write_flake(&d("floor"), n, heavy);
            let f = floor(&nix, &d("floor")).await;
            println!(
                "{n} {kind} checks, round {round}: floor (one nix eval of all drvPaths): {f:.3} s"
            );
            for (workers, check) in [(1, true), (1, false), (2, true), (4, true)] {
                let dir = d(&format!("w{workers}{check}"));
                write_flake(&dir, n, heavy);
                let (t, first, procs) = kiln(&nix, &dir, workers, check).await;
                println!(
                    "  kiln builtin, {workers} worker(s), cache check {check}: {t:.3} s = {:.2}x floor; first job after {first:.3} s; {procs} nix eval processes",
                    t / f
                );
            }
        }
    }
}
