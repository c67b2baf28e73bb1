//! Hostile and broken plugins fail their own step with a clear message; the
//! host survives and the next call of a good plugin works.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use kiln_runtime::context::KvStore;
use kiln_runtime::{CallError, Grant, Limits};

use crate::common::{build_info, call, cfg, context, load, runtime};

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

/// After each hostile call, the trivial plugin still runs.
async fn good_call_still_works(rt: &kiln_runtime::Runtime) {
    let noop = load(rt, "kiln-test-noop").await;
    let called = call(
        rt,
        &noop,
        &[],
        context("noop", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    assert!(called.result.is_ok(), "{:?}", called.result);
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_by_the_cpu_budget() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-loop").await;
    let called = call(
        &rt,
        &p,
        &[],
        context("loop", Grant::default(), &[], Default::default()),
        limits(|l| l.cpu_ms = 200),
    )
    .await;
    let err = called.result.unwrap_err();
    assert!(
        matches!(err, CallError::CpuBudget { cpu_ms: 200, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("CPU budget of 200 ms"), "{err}");
    good_call_still_works(&rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_by_the_wall_clock_timeout() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-loop").await;
    let called = rt
        .run_post_build(
            &p,
            &build_info("/nix/store/x"),
            &vec![],
            context("loop", Grant::default(), &[], Default::default()),
            limits(|l| {
                l.cpu_ms = 600_000;
                l.timeout_secs = 1;
            }),
        )
        .await;
    let err = called.result.unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { seconds: 1, .. }),
        "{err:?}"
    );
    good_call_still_works(&rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allocation_past_the_cap_traps() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-alloc").await;
    let called = call(
        &rt,
        &p,
        &[],
        context("alloc", Grant::default(), &[], Default::default()),
        limits(|l| l.memory_mib = 32),
    )
    .await;
    let err = called.result.unwrap_err();
    assert!(
        matches!(err, CallError::Memory { cap_mib: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("memory cap of 32 MiB"), "{err}");
    good_call_still_works(&rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_names_the_panic() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-trap").await;
    let called = call(
        &rt,
        &p,
        &[],
        context("trap", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    let err = called.result.unwrap_err();
    let CallError::Trap { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("panicked"), "{message}");
    good_call_still_works(&rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_spam_is_capped() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-spam").await;
    let called = call(
        &rt,
        &p,
        &[],
        context("spam", Grant::default(), &[], Default::default()),
        limits(|l| l.output_kib = 256),
    )
    .await;
    let err = called.result.unwrap_err();
    assert!(
        matches!(err, CallError::OutputCap { cap_kib: 256, .. }),
        "{err:?}"
    );
    let kept: usize = called.log.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 2 * 256 * 1024 + 4096, "log holds {kept} bytes");
    good_call_still_works(&rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ungranted_secret_is_denied_and_granted_one_read() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-secret").await;
    let config = cfg(&[("secret", "deploy-key")]);
    let secrets: &[(&str, &[u8])] = &[("deploy-key", b"hunter2")];
    let denied = call(
        &rt,
        &p,
        &config,
        context("secret", Grant::default(), secrets, Default::default()),
        Limits::default(),
    )
    .await;
    let err = denied.result.unwrap_err().to_string();
    assert!(err.contains("secret `deploy-key` is not granted"), "{err}");
    assert!(!err.contains("hunter2"));
    let grant = Grant {
        secrets: vec!["deploy-key".into()],
        ..Grant::default()
    };
    let ok = call(
        &rt,
        &p,
        &config,
        context("secret", grant, secrets, Default::default()),
        Limits::default(),
    )
    .await;
    assert_eq!(
        ok.result.unwrap().message,
        "secret `deploy-key` has 7 bytes"
    );
}

/// A one-request-at-a-time HTTP server on loopback; returns its port and
/// a counter of requests it served.
fn http_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_only_to_granted_hosts() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-http").await;
    let (port, hits) = http_server();
    let config = cfg(&[("url", &format!("http://127.0.0.1:{port}/probe"))]);
    let denied = call(
        &rt,
        &p,
        &config,
        context("http", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    let err = denied.result.unwrap_err().to_string();
    assert!(
        err.contains(&format!("HTTP to host `127.0.0.1:{port}` is not granted")),
        "{err}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a denied request reached the server"
    );

    let grant = Grant {
        hosts: vec![format!("127.0.0.1:{port}")],
        ..Grant::default()
    };
    let ok = call(
        &rt,
        &p,
        &config,
        context("http", grant, &[], Default::default()),
        Limits::default(),
    )
    .await;
    assert_eq!(ok.result.unwrap().message, "status 204");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_survives_across_calls_only_when_granted() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-kv").await;
    let kv = Arc::new(KvStore::default());
    let grant = Grant {
        kv: true,
        ..Grant::default()
    };
    let set = rt
        .run_post_build(
            &p,
            &build_info("/nix/store/x"),
            &cfg(&[
                ("op", "set"),
                ("key", "token"),
                ("value", "abc"),
                ("ttl", "60"),
            ]),
            context("kv", grant.clone(), &[], kv.clone()),
            Limits::default(),
        )
        .await;
    assert!(set.result.is_ok(), "{:?}", set.result);
    let get = call(
        &rt,
        &p,
        &cfg(&[("op", "get"), ("key", "token")]),
        context("kv", grant, &[], kv.clone()),
        Limits::default(),
    )
    .await;
    assert_eq!(get.result.unwrap().message, "abc");
    let denied = call(
        &rt,
        &p,
        &cfg(&[("op", "get"), ("key", "token")]),
        context("kv", Grant::default(), &[], kv),
        Limits::default(),
    )
    .await;
    assert!(
        denied
            .result
            .unwrap_err()
            .to_string()
            .contains("key-value cache is not granted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_reported_not_slept() {
    let (rt, _d) = runtime();
    let p = load(&rt, "kiln-test-retry").await;
    let called = call(
        &rt,
        &p,
        &[],
        context("retry", Grant::default(), &[], Default::default()),
        Limits::default(),
    )
    .await;
    assert!(
        matches!(called.result, Err(CallError::RetryAfter { seconds: 5, .. })),
        "{:?}",
        called.result
    );
}
