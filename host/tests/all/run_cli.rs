//! `kiln run` as a process: the exit codes of DESIGN.md's contract (0, 1, 2,
//! 130 on SIGINT), the report on stdout with `--json` and in `--report` and
//! `--junit` files, and one-line reasons for exit 2. Real Nix, salted
//! derivations.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn salt() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cli-{}-{nanos}", std::process::id())
}

/// A flake with the given `checks.x86_64-linux` attributes; `mk name script`.
fn flake(dir: &Path, checks: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: let
    mk = name: script: derivation {{
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" script ];
      salt = "{}";
    }};
  in {{ checks.x86_64-linux = {{ {checks} }}; }};
}}
"#,
            salt()
        ),
    )
    .unwrap();
}

fn kiln(args: &[&str], logs: &Path) -> Output {
    Command::new(KILN)
        .arg("run")
        .args(args)
        .arg("--log-dir")
        .arg(logs)
        .arg("--systems")
        .arg("x86_64-linux")
        .stdin(Stdio::null())
        .output()
        .expect("kiln runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON report ({e}): {out:?}"))
}

#[test]
fn success_exits_0_with_the_report_on_stdout_and_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(&f, r#"ok = mk "ok" "echo fine; echo > $out";"#);
    let report = dir.path().join("report.json");
    let out = kiln(
        &[
            f.to_str().unwrap(),
            "--json",
            "--report",
            report.to_str().unwrap(),
        ],
        &dir.path().join("logs"),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = json(&out);
    assert_eq!(stdout["version"], 1);
    assert_eq!(stdout["attribute"], "checks");
    assert_eq!(stdout["summary"]["succeeded"], 1);
    assert_eq!(stdout["jobs"][0]["attr"], "x86_64-linux.ok");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(file, stdout);
    // Progress goes to stderr, never into the JSON.
    assert!(String::from_utf8_lossy(&out.stderr).contains("x86_64-linux.ok"));
}

#[test]
fn a_failing_check_exits_1_and_junit_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(
        &f,
        r#"good = mk "good" "echo > $out"; bad = mk "bad" "echo it-broke; exit 1";"#,
    );
    let junit = dir.path().join("junit.xml");
    let out = kiln(
        &[
            f.to_str().unwrap(),
            "--json",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &dir.path().join("logs"),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert_eq!(r["summary"]["failed"], 1);
    assert_eq!(r["summary"]["succeeded"], 1);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("x86_64-linux.bad") && xml.contains("<failure"),
        "{xml}"
    );
    // The summary table names the failure with the end of its log.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("it-broke"), "{stderr}");
}

#[test]
fn unsupported_systems_alone_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(&f, r#"ok = mk "ok" "echo > $out";"#);
    let out = Command::new(KILN)
        .args([
            "run",
            f.to_str().unwrap(),
            "--json",
            "--systems",
            "riscv64-linux",
        ])
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["summary"]["unsupported_system"], 1);
    // Nothing was built: say so, naming what was found and what was built.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("warning") && l.contains("--systems"))
        .unwrap_or_else(|| panic!("a warning on stderr: {stderr}"));
    assert!(
        warning.contains("x86_64-linux") && warning.contains("riscv64-linux"),
        "{warning}"
    );
}

#[test]
fn empty_systems_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(&f, r#"ok = mk "ok" "echo > $out";"#);
    for systems in ["", "x86_64-linux,"] {
        let out = Command::new(KILN)
            .args(["run", f.to_str().unwrap(), "--json", "--systems", systems])
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .output()
            .unwrap();
        assert_exit_2(&out, "--systems");
    }
}

fn assert_exit_2(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rfind(|l| l.starts_with("kiln run:"))
        .unwrap_or("");
    assert!(
        reason.contains(needle),
        "reason {reason:?} lacks {needle:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no report on bad input");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let missing = dir.path().join("missing");
    assert_exit_2(
        &kiln(&[missing.to_str().unwrap(), "--json"], &logs),
        "missing",
    );

    let f = dir.path().join("f");
    flake(&f, r#"ok = mk "ok" "echo > $out";"#);
    let p = f.to_str().unwrap();
    assert_exit_2(
        &kiln(&[p, "--json", "--attribute", "nothere"], &logs),
        "nothere",
    );
    assert_exit_2(
        &kiln(&[p, "--json", "--config", "/nonexistent/kiln.toml"], &logs),
        "kiln.toml",
    );
    assert_exit_2(
        &kiln(&[p, "--json", "--max-jobs", "0"], &logs),
        "--max-jobs",
    );

    std::fs::write(f.join("buildbot-nix.toml"), "atribute = \"checks\"\n").unwrap();
    assert_exit_2(&kiln(&[p, "--json"], &logs), "atribute");
    std::fs::remove_file(f.join("buildbot-nix.toml")).unwrap();

    // No `nix` on PATH.
    let out = Command::new(KILN)
        .args(["run", p, "--json"])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert_exit_2(&out, "nix");
}

#[test]
fn sigint_exits_130_after_writing_the_report_with_the_rest_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(
        &f,
        r#"spin = mk "spin" "echo spinning; while :; do :; done"; later = mk "later" "echo > $out";"#,
    );
    let logs = dir.path().join("logs");
    let report = dir.path().join("report.json");
    let mut child = Command::new(KILN)
        .args(["run", f.to_str().unwrap(), "--max-jobs", "1", "--report"])
        .arg(&report)
        .arg("--log-dir")
        .arg(&logs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // A hang guard, not a timed assertion: give up after a generous while,
    // killing what this test started.
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let spin_log = logs.join("x86_64-linux.spin.log");
    while !std::fs::read_to_string(&spin_log).is_ok_and(|l| l.contains("spinning")) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kiln ended ({status}) before the spin build printed");
        }
        if std::time::Instant::now() > deadline {
            kill_group(&mut child);
            panic!("hang guard: no \"spinning\" in {spin_log:?} after {HANG_GUARD:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            kill_group(&mut child);
            panic!("hang guard: kiln still runs {HANG_GUARD:?} after SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let spin = r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["attr"] == "x86_64-linux.spin")
        .unwrap();
    assert_eq!(spin["status"], "cancelled");
    assert!(r["summary"]["cancelled"].as_u64().unwrap() >= 1);
}

#[test]
fn a_lost_daemon_connection_is_retried_not_reported() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    flake(&f, r#"ok = mk "ok" "echo > $out";"#);
    // Shims: the first `nix-store --realise` dies as if the daemon went
    // away; everything else is the real Nix.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = |p: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(p))
            .find(|c| c.is_file())
            .unwrap_or_else(|| panic!("{p} on PATH"))
    };
    let marker = dir.path().join("died-once");
    let scripts = [
        (
            "nix",
            format!("#!/bin/sh\nexec {} \"$@\"\n", real("nix").display()),
        ),
        (
            "nix-store",
            format!(
                "#!/bin/sh\nif [ \"$1\" = --realise ] && [ ! -e {m} ]; then : > {m}; echo 'error: unexpected end-of-file' >&2; exit 1; fi\nexec {} \"$@\"\n",
                real("nix-store").display(),
                m = marker.display()
            ),
        ),
    ];
    for (name, text) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = Command::new(KILN)
        .args([
            "run",
            f.to_str().unwrap(),
            "--json",
            "--systems",
            "x86_64-linux",
        ])
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(marker.exists(), "the shim failed the first batch");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = json(&out);
    assert_eq!(r["jobs"][0]["status"], "succeeded");
    assert_eq!(r["jobs"][0]["attempts"], 2);
}

/// How long a test waits for something that should happen before it gives
/// up, kills what it started and fails: a guard against hanging CI, not a
/// timing assertion.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(300);

/// SIGKILL the child's process group (it was spawned as its own group
/// leader) and reap it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}
