//! Tests of the batch adapter on internal-json lines recorded from Nix 2.8
//! (`keep_going.jsonl`, `silent.jsonl` beside this file).

use super::*;

/// Recorded on Nix 2.8.0: `nix-store --realise dep good bad badchild
/// --keep-going -j 2 --log-format internal-json -v` where `good` depends
/// on `dep`, `bad` exits 3 and `badchild` depends on `bad`.
const KEEP_GOING: &str = include_str!("keep_going.jsonl");

/// Recorded on Nix 2.8.0 with `--max-silent-time 1`: `silent2` loops
/// without output, `bad2` fails, `child2` depends on `bad2`.
const SILENT: &str = include_str!("silent.jsonl");

fn events(recorded: &str) -> Vec<BuildEvent> {
    let mut t = Tracker::default();
    recorded.lines().flat_map(|l| t.feed(l)).collect()
}

fn drv(name: &str, recorded: &str) -> String {
    let i = recorded.find(&format!("-{name}.drv")).unwrap();
    let start = recorded[..i].rfind("/nix/store/").unwrap();
    format!("{}.drv", &recorded[start..i + name.len() + 1])
}

#[test]
fn attributes_log_lines_to_their_derivation() {
    let ev = events(KEEP_GOING);
    let logs = |name: &str| -> Vec<String> {
        let d = drv(name, KEEP_GOING);
        ev.iter()
            .filter_map(|e| match e {
                BuildEvent::Log { drv, line } if *drv == d => Some(line.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(logs("dep"), ["dep-line1", "dep-line2"]);
    assert_eq!(logs("bad"), ["bad going down"]);
    assert_eq!(logs("good")[0], "good says hi");
    assert!(logs("badchild").is_empty());
    let started: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Started { drv } => Some(drv.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 3, "badchild never starts: {started:?}");
}

#[test]
fn names_the_failing_derivation_and_why() {
    let failures: Vec<(String, FailureKind)> = events(KEEP_GOING)
        .into_iter()
        .filter_map(|e| match e {
            BuildEvent::Failed { drv, kind, .. } => Some((drv, kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        [
            (drv("bad", KEEP_GOING), FailureKind::Builder),
            (drv("badchild", KEEP_GOING), FailureKind::DependencyFailed),
        ]
    );
    let message = events(KEEP_GOING)
        .into_iter()
        .find_map(|e| match e {
            BuildEvent::Failed { message, .. } => Some(message),
            _ => None,
        })
        .unwrap();
    assert!(message.ends_with("failed with exit code 3"), "{message}");
    assert!(!message.contains('\u{1b}'));
}

#[test]
fn recognises_silence_timeouts() {
    let failures: Vec<(String, FailureKind)> = events(SILENT)
        .into_iter()
        .filter_map(|e| match e {
            BuildEvent::Failed { drv, kind, .. } => Some((drv, kind)),
            _ => None,
        })
        .collect();
    assert!(failures.contains(&(drv("silent2", SILENT), FailureKind::TimedOut)));
    assert!(failures.contains(&(drv("bad2", SILENT), FailureKind::Builder)));
    assert!(failures.contains(&(drv("child2", SILENT), FailureKind::DependencyFailed)));
}

#[test]
fn reports_the_build_counters() {
    let last = events(KEEP_GOING)
        .into_iter()
        .rev()
        .filter_map(|e| match e {
            BuildEvent::Progress(p) => Some(p),
            _ => None,
        })
        .next()
        .unwrap();
    assert_eq!(
        last,
        Progress {
            done: 2,
            expected: 2,
            running: 0,
            failed: 1
        }
    );
}

#[test]
fn stop_events_name_the_derivation_and_plain_lines_pass_through() {
    let mut t = Tracker::default();
    t.feed(r#"@nix {"action":"start","fields":["/nix/store/aaa-x.drv","",1,1],"id":7,"level":3,"text":"building","type":105}"#);
    assert_eq!(
        t.feed(r#"@nix {"action":"result","fields":["configure"],"id":7,"type":104}"#),
        [BuildEvent::Phase {
            drv: "/nix/store/aaa-x.drv".into(),
            phase: "configure".into()
        }]
    );
    assert_eq!(
        t.feed(r#"@nix {"action":"stop","id":7}"#),
        [BuildEvent::Stopped {
            drv: "/nix/store/aaa-x.drv".into()
        }]
    );
    assert!(
        t.feed(r#"@nix {"action":"result","fields":["late"],"id":7,"type":101}"#)
            .is_empty()
    );
    assert_eq!(
        t.feed("error: unexpected end-of-file"),
        [BuildEvent::Message {
            level: 0,
            text: "error: unexpected end-of-file".into()
        }]
    );
    assert!(t.feed("@nix {not json").is_empty());
}

#[test]
fn transient_failures_are_daemon_trouble_only() {
    assert!(is_transient("error: unexpected end-of-file"));
    assert!(is_transient(
        "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': Connection refused"
    ));
    assert!(!is_transient(
        "builder for '/nix/store/x.drv' failed with exit code 1"
    ));
}

#[test]
fn a_full_disk_is_not_transient() {
    assert!(is_transient("error: writing to file: Broken pipe"));
    assert!(!is_transient(
        "error: writing to file: No space left on device"
    ));
    assert!(!is_transient(
        "error: writing to file '/nix/store/x-y.tmp': No space left on device"
    ));
}

#[test]
fn command_line_has_batch_flags() {
    let mut b = BatchBuild::new(
        vec!["/nix/store/a.drv".into(), "/nix/store/b.drv".into()],
        0,
    );
    b.max_silent_time = Some(5);
    b.timeout = Some(9);
    let args: Vec<String> = b
        .args()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        args.join(" "),
        "--realise /nix/store/a.drv /nix/store/b.drv --keep-going -j 1 --log-format internal-json -v --max-silent-time 5 --timeout 9"
    );
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let mut b = BatchBuild::new(vec![], 1);
    b.nix_store = "/nonexistent/nix-store".into();
    assert!(matches!(b.spawn(), Err(NixError::Spawn { .. })));
}

/// A stand-in `nix-store` (a shell script) for the stream tests.
fn fake_nix_store(dir: &std::path::Path, body: &str) -> OsString {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("nix-store");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.into_os_string()
}

#[tokio::test]
async fn invalid_utf8_does_not_end_the_stream_and_stderr_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    // An invalid UTF-8 line, then far more than a pipe buffer of output,
    // then a last line: all of it must be read, and the process must exit.
    let mut b = BatchBuild::new(vec![], 1);
    b.nix_store = fake_nix_store(
        dir.path(),
        r#"printf 'error: bad \377\376 bytes\n' >&2
i=0
while [ $i -lt 3000 ]; do
  echo "error: filler line $i padded to be long enough to fill the pipe quickly" >&2
  i=$((i+1))
done
echo "error: the last line" >&2
exit 3"#,
    );
    let mut p = b.spawn().unwrap();
    let mut texts = Vec::new();
    while let Some(events) = p.next_events().await {
        for e in events {
            if let BuildEvent::Message { text, .. } = e {
                texts.push(text);
            }
        }
    }
    assert!(texts[0].starts_with("error: bad "), "{:?}", texts[0]);
    assert!(texts[0].contains('\u{fffd}'), "{:?}", texts[0]);
    assert_eq!(texts.len(), 3002);
    assert_eq!(texts.last().unwrap(), "error: the last line");
    assert_eq!(p.wait().await.unwrap().code(), Some(3));
    // Once at EOF it stays there.
    assert!(p.next_events().await.is_none());
}

#[tokio::test]
async fn running_batches_are_registered_until_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BatchBuild::new(vec![], 1);
    b.nix_store = fake_nix_store(dir.path(), "echo started >&2; while :; do :; done");
    let mut p = b.spawn().unwrap();
    let g = p.group().expect("a process group");
    assert!(is_live_group(g));
    p.next_events().await.unwrap();
    p.kill_group(Duration::from_secs(5)).await;
    assert!(!is_live_group(g));

    let p = b.spawn().unwrap();
    let g = p.group().unwrap();
    assert!(is_live_group(g));
    drop(p);
    assert!(!is_live_group(g));
}
