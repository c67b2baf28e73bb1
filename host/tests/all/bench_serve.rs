//! `kiln bench serve` in a tiny mode: six real checks built through the real
//! service and a thousand jobs persisted (the API figure is skipped: it
//! depends on the `/api/v1/runs` endpoint more than on the benchmark). Each
//! figure line is printed with its numbers; no timing is asserted.

use std::process::Command;

/// The number right after `label` on `line` (`label 1.25 s` → 1.25).
fn figure(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        + label.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn bench_serve_prints_every_figure() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "serve", "--checks", "6", "--jobs-persist", "1000"])
        .arg("--skip-load")
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("KILN_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let line = |prefix: &str| -> &str {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{stdout}\n{stderr}"))
    };

    // End to end: all six checks built, both times and the verdict shown.
    assert!(line("serve end to end:").contains("6 fresh checks (5 independent, 1 dependent)"));
    let kiln = line("kiln serve, webhook to every status final:");
    assert!(kiln.contains("6 built, 0 cached"), "{kiln}");
    assert!(figure(kiln, "every status final:") > 0.0, "{kiln}");
    assert!(figure(line("floor, nix eval"), "-j 2:") > 0.0);
    let ratio = line("ratio kiln / floor");
    assert!(figure(ratio, "ratio kiln / floor") > 0.0, "{ratio}");
    assert!(
        ratio.ends_with(": met") || ratio.ends_with("NOT met"),
        "{ratio}"
    );

    // Persistence: every job recorded, the statuses computed, RSS read.
    assert!(line("serve persist:").contains("1000 job updates"));
    for prefix in ["all at once", "streamed in bursts of at most 256"] {
        let persisted = line(prefix);
        assert!(persisted.contains("2 statuses computed"), "{persisted}");
        assert!(figure(persisted, "persisted in") > 0.0, "{persisted}");
        assert!(figure(persisted, "total") > 0.0, "{persisted}");
    }
    // 1000 jobs in bursts of at most 256 take at least four transactions.
    assert!(figure(line("streamed in bursts"), "s (") >= 4.0, "{stdout}");
    assert!(figure(line("peak RSS"), "this process") > 1.0);
    assert!(line("1000 jobs").contains("edges"), "{stdout}");

    assert_eq!(line("serve api:"), "serve api: skipped");
}
