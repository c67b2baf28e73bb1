//! The first-party `gcroot` and `outputs` plugins through `kiln run
//! --config kiln.toml`: with their grants, every output of a salted
//! two-output check gets a GC root that Nix lists and an index file holding
//! its store path; without them, each step fails before it runs, naming the
//! step, the store operation or directory, and the project.

use std::path::Path;
use std::process::Command;

use crate::common::{kiln_run_json, report, salt, sh};

/// A flake with one salted two-output check, and a buildbot-nix.toml
/// selecting `gcroot` then `outputs`.
fn flake_with_steps(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    checks.x86_64-linux.kept = derivation {{
      name = "kept"; system = "x86_64-linux"; builder = "/bin/sh";
      outputs = [ "out" "dev" ];
      args = [ "-c" "echo {salt} > $out; echo dev-{salt} > $dev" ];
    }};
  }};
}}
"#,
            salt = salt()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("buildbot-nix.toml"),
        "[[post_build]]\nplugin = \"gcroot\"\n\n[[post_build]]\nplugin = \"outputs\"\n",
    )
    .unwrap();
}

/// `<project>-<attr>-<output>` as the `gcroot` plugin sanitises it.
fn root_name(project: &str, attr: &str, output: &str) -> String {
    let name: String = format!("{project}-{attr}-{output}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_start_matches(['-', '.']).to_owned()
}

#[test]
fn granted_steps_root_and_index_every_output() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_steps(&dir);
    let outputs_dir = work.path().join("outputs");
    let config = work.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.gcroot]\nstore = [\"add-gc-root\"]\n\n[grants.outputs]\ndirectories = {{ outputs = {:?} }}\n",
            outputs_dir.display().to_string()
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
    let steps = job["post_build"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r}");
    assert_eq!(steps[0]["step"], "gcroot", "{r}");
    assert_eq!(steps[1]["step"], "outputs", "{r}");
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{r}");
    }

    let project = dir.display().to_string();
    let attr = job["attr"].as_str().unwrap();
    assert_eq!(attr, "x86_64-linux.kept", "{r}");
    let roots = sh(Command::new("nix-store").args(["--gc", "--print-roots"]));
    // The project's components, none hidden (tempfile's `.tmpXXXXXX` is
    // written `_tmpXXXXXX`), then the branch, `default` for `kiln run`.
    let index_dir = project
        .split('/')
        .filter(|c| !c.is_empty())
        .fold(outputs_dir.clone(), |d, c| match c.strip_prefix('.') {
            Some(rest) => d.join(format!("_{rest}")),
            None => d.join(c),
        })
        .join("default");
    for (output, file) in [("out", attr.to_owned()), ("dev", format!("{attr}.dev"))] {
        let path = job["outputs"][output].as_str().unwrap();
        assert!(path.starts_with("/nix/store/"), "{r}");

        let link = work
            .path()
            .join("gcroots")
            .join(root_name(&project, attr, output));
        let target =
            std::fs::read_link(&link).unwrap_or_else(|e| panic!("GC root {}: {e}", link.display()));
        assert_eq!(target, Path::new(path));
        assert!(
            roots
                .lines()
                .any(|l| l == format!("{} -> {path}", link.display())),
            "{} is not among Nix's roots:\n{roots}",
            link.display()
        );

        let index = index_dir.join(&file);
        let written = std::fs::read_to_string(&index)
            .unwrap_or_else(|e| panic!("outputs index {}: {e}", index.display()));
        assert_eq!(written, path);
    }
    let log = std::fs::read_to_string(job["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("[kiln post-build gcroot] succeeded"), "{log}");
    assert!(log.contains("[kiln post-build outputs] succeeded"), "{log}");
}

#[test]
fn without_grants_the_steps_fail_naming_what_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    flake_with_steps(&dir);
    let config = work.path().join("kiln.toml");
    std::fs::write(&config, "").unwrap();
    let out = kiln_run_json(&dir, Some(&config), work.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    let job = &r["jobs"][0];
    assert_eq!(job["status"], "failed", "{r}");
    let project = dir.display();
    let expected = [
        (
            "gcroot",
            format!(
                "step `gcroot` needs store operation `add-gc-root`, which kiln.toml does not grant to plugin `gcroot` for project `{project}`"
            ),
        ),
        (
            "outputs",
            format!(
                "step `outputs` needs directory `outputs`, which kiln.toml does not grant to plugin `outputs` for project `{project}`"
            ),
        ),
    ];
    for (step, (name, message)) in job["post_build"].as_array().unwrap().iter().zip(expected) {
        assert_eq!(step["step"], name, "{r}");
        assert_eq!(step["status"], "failed", "{r}");
        assert_eq!(step["message"], message.as_str(), "{r}");
    }
    assert!(
        !work.path().join("gcroots").exists(),
        "a GC root was registered without the grant"
    );
}
