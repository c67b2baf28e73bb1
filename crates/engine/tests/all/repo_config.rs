//! Snapshot tests for `buildbot-nix.toml`: each input under
//! `tests/fixtures/repo_config/NAME.toml` has its expected parse (`NAME.json`)
//! or error (`NAME.err`) beside it. Set `KILN_BLESS=1` to write missing or
//! changed snapshots, then review them.

use std::path::{Path, PathBuf};

use kiln_engine::repo_config::{RepoConfig, RepoConfigError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo_config")
}

fn snapshot(input: &Path) -> (PathBuf, String) {
    let text = std::fs::read_to_string(input).unwrap();
    let name = input.file_name().unwrap().to_str().unwrap();
    match RepoConfig::parse(&text, name) {
        Ok(c) => (
            input.with_extension("json"),
            serde_json::to_string_pretty(&c).unwrap() + "\n",
        ),
        Err(e) => (input.with_extension("err"), e.to_string() + "\n"),
    }
}

#[test]
fn snapshots() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 9);
    let mut failures = Vec::new();
    for input in inputs {
        let (expected_path, actual) = snapshot(&input);
        let other = if expected_path.extension().unwrap() == "json" {
            input.with_extension("err")
        } else {
            input.with_extension("json")
        };
        assert!(!other.exists(), "stale snapshot {}", other.display());
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            _ if bless => std::fs::write(&expected_path, &actual).unwrap(),
            Ok(expected) => failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                input.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no snapshot; actual:\n{actual}",
                input.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unknown_keys_name_key_and_line() {
    let e = RepoConfig::parse(
        "attribute = \"checks\"\n\nflake-dir = \"x\"\n",
        "buildbot-nix.toml",
    )
    .unwrap_err();
    let RepoConfigError::Invalid { line, message, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*line, 3);
    assert!(message.contains("flake-dir"), "{message}");
    assert!(e.to_string().starts_with("buildbot-nix.toml:3:"), "{e}");
}

#[test]
fn load_reads_the_repository_root_or_defaults() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(RepoConfig::load(dir.path()).unwrap(), RepoConfig::default());
    std::fs::write(
        dir.path().join("buildbot-nix.toml"),
        "attribute = \"hydraJobs\"\n",
    )
    .unwrap();
    assert_eq!(RepoConfig::load(dir.path()).unwrap().attribute, "hydraJobs");
    std::fs::write(dir.path().join("buildbot-nix.toml"), "bogus = 1\n").unwrap();
    let e = RepoConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("buildbot-nix.toml:1:1") && e.contains("bogus"),
        "{e}"
    );
}

#[test]
fn flake_dir_may_not_escape_through_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.path().join("link")).unwrap();
    let mut c = RepoConfig {
        flake_dir: "sub".into(),
        ..RepoConfig::default()
    };
    assert_eq!(
        c.resolve_flake_dir(repo.path()).unwrap(),
        repo.path().canonicalize().unwrap().join("sub")
    );
    c.flake_dir = "link".into();
    let e = c.resolve_flake_dir(repo.path()).unwrap_err().to_string();
    assert!(e.contains("through a symlink"), "{e}");
    c.flake_dir = "sub".into();
    c.lock_file = "../flake.lock".into();
    assert!(c.resolve_lock_file(repo.path()).is_err());
}
