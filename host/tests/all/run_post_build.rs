//! `kiln run --config kiln.toml` runs the repository's `[[post_build]]`
//! steps through the plugin host: the `sign` plugin signs real outputs when
//! the operator grants its key; without the grant the step fails naming the
//! step, the secret and the project, and `warn_only` turns that into a
//! warning that does not fail the job.

use std::path::Path;
use std::process::Command;

use crate::common::{kiln_run_json, report, salt, sh};

/// A flake with one salted check, and a buildbot-nix.toml selecting `sign`.
fn flake_with_sign_step(dir: &Path, warn_only: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    checks.x86_64-linux.signed = derivation {{
      name = "signed"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo {} > $out" ];
    }};
  }};
}}
"#,
            salt()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("buildbot-nix.toml"),
        format!("[[post_build]]\nplugin = \"sign\"\nwarn_only = {warn_only}\n"),
    )
    .unwrap();
}

#[test]
fn a_granted_sign_step_signs_the_outputs() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_sign_step(&dir, false);
    let key = sh(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "key",
        "generate-secret",
        "--key-name",
        "kiln-run-1",
    ]));
    let key_file = work.path().join("key.sec");
    std::fs::write(&key_file, key).unwrap();
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.sign]\nsecrets = [\"signing-key\"]\nstore = [\"path-info\"]\n[secrets.signing-key]\nfile = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let out = kiln_run_json(&dir, Some(&config), work.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    let job = &r["jobs"][0];
    assert_eq!(job["status"], "succeeded", "{r}");
    assert_eq!(job["post_build"][0]["step"], "sign", "{r}");
    assert_eq!(job["post_build"][0]["status"], "succeeded", "{r}");
    let path = job["outputs"]["out"].as_str().unwrap();
    let sigs = sh(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--sigs",
        path,
    ]));
    assert!(sigs.contains("kiln-run-1:"), "{sigs}");
    let log = std::fs::read_to_string(job["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("[kiln post-build sign] succeeded"), "{log}");
}

#[test]
fn an_ungranted_secret_fails_the_job_naming_step_secret_and_project() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_sign_step(&dir, false);
    let out = kiln_run_json(&dir, None, work.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    let job = &r["jobs"][0];
    assert_eq!(job["status"], "failed", "{r}");
    let step = &job["post_build"][0];
    assert_eq!(step["status"], "failed", "{r}");
    let msg = step["message"].as_str().unwrap();
    assert!(
        msg.contains("step `sign` needs secret `signing-key`"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("project `{}`", dir.display())),
        "{msg}"
    );
}

#[test]
fn warn_only_keeps_the_job_green() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_sign_step(&dir, true);
    let out = kiln_run_json(&dir, None, work.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(r["jobs"][0]["status"], "succeeded", "{r}");
    assert_eq!(r["jobs"][0]["post_build"][0]["status"], "warning", "{r}");
}
