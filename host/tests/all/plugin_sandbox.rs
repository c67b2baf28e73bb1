//! The sandbox around a plugin call: WASI gives a plugin no environment, no
//! file system and no sockets; the wall-clock timeout also covers time
//! blocked in a host call; store operations and directories are denied
//! unless granted, and a granted directory cannot be escaped.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use kiln_runtime::{CallError, Grant, Limits, Runtime};

use crate::common::{build_info, cfg, context, load, runtime};

/// Run a post-build test plugin with `config` under `grant`, default limits.
async fn run(
    rt: &Runtime,
    crate_name: &str,
    config: &[(&str, &str)],
    grant: Grant,
) -> Result<String, CallError> {
    let plugin = load(rt, crate_name).await;
    rt.run_post_build(
        &plugin,
        &build_info("/nix/store/00000000000000000000000000000000-x"),
        &cfg(config),
        context(crate_name, grant, &[], Default::default()),
        Limits::default(),
    )
    .await
    .result
    .map(|outcome| outcome.message)
}

#[tokio::test(flavor = "multi_thread")]
async fn wasi_gives_no_environment_files_or_sockets() {
    let (rt, _d) = runtime();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let report = run(
        &rt,
        "kiln-test-sandbox",
        &[("port", &port)],
        Grant::default(),
    )
    .await
    .expect("the sandbox probe itself succeeds");
    let probes: BTreeMap<&str, &str> = report
        .split(" | ")
        .map(|p| p.split_once(": ").unwrap_or_else(|| panic!("{report}")))
        .collect();
    assert_eq!(probes.len(), 4, "{report}");
    assert_eq!(probes["env"], "0 variables", "{report}");
    for probe in ["read_dir /", "read /etc/passwd", "connect"] {
        assert!(
            probes[probe].starts_with("failed "),
            "`{probe}` should have failed: {report}"
        );
    }
    // Nothing reached the listener, not even a connection the plugin gave up on.
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the plugin connected from {from}: {report}"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeout_covers_a_host_call_that_never_returns() {
    let (rt, _d) = runtime();
    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let plugin = load(&rt, "kiln-test-http").await;
    let grant = Grant {
        hosts: vec![format!("127.0.0.1:{port}")],
        ..Grant::default()
    };
    let limits = Limits {
        timeout_secs: 1,
        cpu_ms: 600_000,
        ..Limits::default()
    };
    let build = build_info("/nix/store/x");
    let config = cfg(&[("url", &format!("http://127.0.0.1:{port}/slow"))]);
    let call = rt.run_post_build(
        &plugin,
        &build,
        &config,
        context("kiln-test-http", grant, &[], Default::default()),
        limits,
    );
    let called = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call was not stopped by its 1 s timeout");
    let err = called.result.unwrap_err();
    assert_eq!(
        err,
        CallError::Timeout {
            plugin: "kiln-test-http".into(),
            seconds: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "plugin `kiln-test-http` did not finish within its wall-clock timeout of 1 s"
    );

    let noop = run(&rt, "kiln-test-noop", &[], Grant::default()).await;
    assert!(noop.is_ok(), "{noop:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ungranted_store_operation_is_denied() {
    let (rt, _d) = runtime();
    let err = run(&rt, "kiln-test-path-info", &[], Grant::default())
        .await
        .unwrap_err();
    let CallError::Failed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("store operation `path-info` is not granted to this plugin"),
        "{msg}"
    );
    assert!(
        msg.contains("denied by Kiln: store operation `path-info` is not granted"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_are_denied_unless_granted_and_cannot_be_escaped() {
    let (rt, _d) = runtime();
    let outer = tempfile::tempdir().unwrap();
    let granted = outer.path().join("granted");
    std::fs::create_dir(&granted).unwrap();

    let write = |path: &'static str| {
        [
            ("directory", "out"),
            ("path", path),
            ("contents", "/nix/store/x"),
        ]
    };
    let err = run(
        &rt,
        "kiln-test-write",
        &write("index.txt"),
        Grant::default(),
    )
    .await
    .unwrap_err();
    let CallError::Failed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("directory `out` is not granted to this plugin"),
        "{msg}"
    );
    assert_eq!(std::fs::read_dir(&granted).unwrap().count(), 0);

    let grant = Grant {
        directories: BTreeMap::from([("out".to_owned(), granted.clone())]),
        ..Grant::default()
    };
    let ok = run(
        &rt,
        "kiln-test-write",
        &write("owner/repo/index.txt"),
        grant.clone(),
    )
    .await;
    assert_eq!(ok.unwrap(), "wrote `owner/repo/index.txt` in `out`");
    assert_eq!(
        std::fs::read_to_string(granted.join("owner/repo/index.txt")).unwrap(),
        "/nix/store/x"
    );

    let err = run(&rt, "kiln-test-write", &write("../escape"), grant.clone())
        .await
        .unwrap_err();
    let CallError::Failed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("`../escape` must be a relative path without `..`"),
        "{msg}"
    );
    assert!(
        !outer.path().join("escape").exists(),
        "escaped the directory"
    );

    // A directory the plugin was not granted by name is denied even though
    // another one is granted.
    let other = [("directory", "elsewhere"), ("path", "x"), ("contents", "")];
    let err = run(&rt, "kiln-test-write", &other, grant)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("directory `elsewhere` is not granted to this plugin"),
        "{err}"
    );
}
