//! Batched builds: one `nix-store --realise <drv…> --keep-going -j N
//! --log-format internal-json -v` per batch, and the parser that attributes
//! every line of its `@nix {…}` activity stream to its own derivation.
//!
//! This module owns the command line, the process group of a batch (so a
//! timeout or Ctrl-C kills the builders too) and the meaning of Nix's
//! internal-json messages. It must not decide what a failure means for a job,
//! retry anything or write logs: it reports [`BuildEvent`]s and the caller
//! decides.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::NixError;

/// Activity type of a derivation build (`actBuild`).
const ACT_BUILD: u64 = 105;
/// Activity type of the overall build counter (`actBuilds`).
const ACT_BUILDS: u64 = 104;
/// Result type of a builder's log line (`resBuildLogLine`).
const RES_BUILD_LOG_LINE: u64 = 101;
/// Result type of a phase change (`resSetPhase`).
const RES_SET_PHASE: u64 = 104;
/// Result type of a progress counter (`resProgress`).
const RES_PROGRESS: u64 = 105;

/// What to build and how; turned into one `nix-store --realise` command.
#[derive(Debug, Clone)]
pub struct BatchBuild {
    /// `.drv` paths to realise.
    pub drvs: Vec<String>,
    /// Parallel builds inside this batch (`-j`).
    pub max_jobs: usize,
    /// `--max-silent-time` in seconds, enforced by Nix per derivation.
    pub max_silent_time: Option<u64>,
    /// `--timeout` in seconds, enforced by Nix per derivation.
    pub timeout: Option<u64>,
    /// Program to run; `nix-store` on PATH unless the adapter found another.
    pub nix_store: OsString,
}

impl BatchBuild {
    /// A batch of `drvs` built `max_jobs` at a time with plain `nix-store`.
    pub fn new(drvs: Vec<String>, max_jobs: usize) -> Self {
        BatchBuild {
            drvs,
            max_jobs: max_jobs.max(1),
            max_silent_time: None,
            timeout: None,
            nix_store: "nix-store".into(),
        }
    }

    /// A batch run with the `nix-store` of a detected installation.
    pub fn for_nix(nix: &crate::Nix, drvs: Vec<String>, max_jobs: usize) -> Self {
        BatchBuild {
            nix_store: nix.bin_dir().join("nix-store").into_os_string(),
            ..Self::new(drvs, max_jobs)
        }
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--realise".into()];
        args.extend(self.drvs.iter().map(OsString::from));
        args.extend(
            [
                "--keep-going",
                "-j",
                &self.max_jobs.to_string(),
                "--log-format",
                "internal-json",
                "-v",
            ]
            .map(OsString::from),
        );
        if let Some(s) = self.max_silent_time {
            args.extend(["--max-silent-time".into(), s.to_string().into()]);
        }
        if let Some(s) = self.timeout {
            args.extend(["--timeout".into(), s.to_string().into()]);
        }
        args
    }

    /// Start the batch in a process group of its own.
    pub fn spawn(&self) -> Result<BuildProcess, NixError> {
        let mut cmd = Command::new(&self.nix_store);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NixError::Spawn {
            program: self.nix_store.to_string_lossy().into_owned(),
            source,
        })?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(g) = pgid {
            live_groups().insert(g);
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok(BuildProcess {
            child,
            pgid,
            stderr: Some(BufReader::new(stderr)),
            line: Vec::new(),
            tracker: Tracker::default(),
        })
    }
}

/// A running batch: its events, and a handle to kill its process group.
#[derive(Debug)]
pub struct BuildProcess {
    child: Child,
    pgid: Option<i32>,
    /// Nix's stderr; `None` once it reached EOF (or failed for good).
    stderr: Option<BufReader<ChildStderr>>,
    /// Buffer of the line being read.
    line: Vec<u8>,
    tracker: Tracker,
}

impl BuildProcess {
    /// Next batch of events; `None` once Nix closed its stderr.
    ///
    /// Lines are read as bytes and decoded lossily, so a builder printing
    /// invalid UTF-8 does not end the stream early: stderr is drained to EOF,
    /// and Nix never blocks writing to a pipe nobody reads.
    pub async fn next_events(&mut self) -> Option<Vec<BuildEvent>> {
        loop {
            let stderr = self.stderr.as_mut()?;
            self.line.clear();
            match stderr.read_until(b'\n', &mut self.line).await {
                Ok(0) => {
                    self.stderr = None;
                    return None;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&self.line);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    let events = self.tracker.feed(text);
                    if !events.is_empty() {
                        return Some(events);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A real read error on a pipe does not heal; stop reading
                // (dropping our end makes a still-writing Nix get EPIPE
                // rather than block).
                Err(_) => {
                    self.stderr = None;
                    return None;
                }
            }
        }
    }

    /// Send `signal` to the whole process group (Nix and its builders).
    pub fn signal_group(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; a stale
            // group id at worst signals nothing (ESRCH).
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }

    /// Kill the group: SIGTERM, then SIGKILL if it has not exited after
    /// `grace`. Returns once the process has been reaped.
    pub async fn kill_group(&mut self, grace: Duration) {
        self.signal_group(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.forget_group();
    }

    /// Wait for the process and return whether it exited successfully.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            self.forget_group();
        }
        status
    }

    /// The process group of the batch, while it is registered as live.
    pub fn group(&self) -> Option<i32> {
        self.pgid
    }

    /// Take the group off the live registry (its leader was reaped, so the
    /// id may be reused).
    fn forget_group(&mut self) {
        if let Some(g) = self.pgid.take() {
            live_groups().remove(&g);
        }
    }
}

impl Drop for BuildProcess {
    fn drop(&mut self) {
        self.forget_group();
    }
}

/// Process groups of batches started and not yet reaped, for
/// [`kill_live_groups`].
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live_groups() -> MutexGuard<'static, BTreeSet<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `pgid` is the group of a batch still running (not yet reaped).
pub fn is_live_group(pgid: i32) -> bool {
    live_groups().contains(&pgid)
}

/// SIGKILL the process group of every batch not yet reaped: for a process
/// about to exit at once (a second Ctrl-C), where `kill_on_drop` never runs
/// and the builders, in groups of their own, would outlive it.
pub fn kill_live_groups() {
    for &g in live_groups().iter() {
        // SAFETY: killpg has no memory-safety preconditions; a group that is
        // gone at worst yields ESRCH.
        unsafe {
            libc::killpg(g, libc::SIGKILL);
        }
    }
}

/// Something a batch reported about one derivation, or about the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Nix started building `drv`.
    Started {
        /// The derivation.
        drv: String,
    },
    /// A line the builder of `drv` printed.
    Log {
        /// The derivation.
        drv: String,
        /// The line, without its newline.
        line: String,
    },
    /// The builder of `drv` entered a phase (stdenv's `setPhase`).
    Phase {
        /// The derivation.
        drv: String,
        /// Phase name.
        phase: String,
    },
    /// Nix stopped tracking the build of `drv` (Nix 2.8 sends this only at the
    /// end of the batch, so it does not mean "finished").
    Stopped {
        /// The derivation.
        drv: String,
    },
    /// `drv` failed.
    Failed {
        /// The derivation.
        drv: String,
        /// Why.
        kind: FailureKind,
        /// Nix's message, without colours.
        message: String,
    },
    /// The overall counters moved.
    Progress(Progress),
    /// Any other message Nix printed (warnings, final errors, daemon trouble).
    Message {
        /// Nix's verbosity level (0 = error).
        level: u64,
        /// The message, without colours.
        text: String,
    },
}

/// Why a derivation failed, as Nix says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The builder exited non-zero (or was killed, or produced no output).
    Builder,
    /// `--timeout` or `--max-silent-time` was exceeded.
    TimedOut,
    /// One of its inputs failed; Nix never started it.
    DependencyFailed,
}

/// Nix's build counters for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Builds finished successfully.
    pub done: u64,
    /// Builds Nix plans to do.
    pub expected: u64,
    /// Builds running now.
    pub running: u64,
    /// Builds failed.
    pub failed: u64,
}

/// One `@nix {…}` line as Nix writes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Raw {
    Start {
        id: u64,
        #[serde(rename = "type", default)]
        ty: u64,
        #[serde(default)]
        fields: Vec<Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        #[serde(rename = "type")]
        ty: u64,
        #[serde(default)]
        fields: Vec<Value>,
    },
    Msg {
        level: u64,
        msg: String,
    },
}

/// Turns the activity stream into [`BuildEvent`]s, remembering which
/// activity belongs to which derivation.
#[derive(Debug, Default)]
pub struct Tracker {
    builds: HashMap<u64, String>,
    counters: Option<u64>,
}

impl Tracker {
    /// Feed one line of Nix's stderr; lines that are not `@nix` JSON become
    /// [`BuildEvent::Message`]s at error level when they look like errors.
    pub fn feed(&mut self, line: &str) -> Vec<BuildEvent> {
        let Some(json) = line.strip_prefix("@nix ") else {
            let text = strip_ansi(line.trim_end());
            if text.is_empty() {
                return vec![];
            }
            let level = if text.starts_with("error") { 0 } else { 3 };
            return vec![BuildEvent::Message { level, text }];
        };
        let Ok(raw) = serde_json::from_str::<Raw>(json) else {
            return vec![];
        };
        match raw {
            Raw::Start { id, ty, fields } => {
                if ty == ACT_BUILD
                    && let Some(drv) = fields.first().and_then(Value::as_str)
                {
                    self.builds.insert(id, drv.to_string());
                    return vec![BuildEvent::Started {
                        drv: drv.to_string(),
                    }];
                }
                if ty == ACT_BUILDS {
                    self.counters = Some(id);
                }
                vec![]
            }
            Raw::Stop { id } => match self.builds.remove(&id) {
                Some(drv) => vec![BuildEvent::Stopped { drv }],
                None => vec![],
            },
            Raw::Result { id, ty, fields } => self.result(id, ty, &fields),
            Raw::Msg { level, msg } => {
                let text = strip_ansi(&msg);
                if level == 0
                    && let Some((drv, kind)) = classify_failure(&text)
                {
                    return vec![BuildEvent::Failed {
                        drv,
                        kind,
                        message: text.trim_start_matches("error: ").to_string(),
                    }];
                }
                vec![BuildEvent::Message { level, text }]
            }
        }
    }

    fn result(&mut self, id: u64, ty: u64, fields: &[Value]) -> Vec<BuildEvent> {
        let text = || {
            fields
                .first()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match (ty, self.builds.get(&id)) {
            (RES_BUILD_LOG_LINE, Some(drv)) => vec![BuildEvent::Log {
                drv: drv.clone(),
                line: text(),
            }],
            (RES_SET_PHASE, Some(drv)) => vec![BuildEvent::Phase {
                drv: drv.clone(),
                phase: text(),
            }],
            (RES_PROGRESS, None) if self.counters == Some(id) => {
                let n = |i: usize| fields.get(i).and_then(Value::as_u64).unwrap_or(0);
                vec![BuildEvent::Progress(Progress {
                    done: n(0),
                    expected: n(1),
                    running: n(2),
                    failed: n(3),
                })]
            }
            _ => vec![],
        }
    }
}

/// Recognise Nix's per-derivation failure messages and name the derivation.
fn classify_failure(text: &str) -> Option<(String, FailureKind)> {
    let kind = if text.contains("builder for '") {
        FailureKind::Builder
    } else if text.contains(" timed out after ") {
        FailureKind::TimedOut
    } else if text.contains("dependencies of derivation '") {
        FailureKind::DependencyFailed
    } else {
        return None;
    };
    let start = text.find("'/")? + 1;
    let rest = &text[start..];
    let end = rest.find('\'')?;
    let path = &rest[..end];
    let drv = match path.find(".drv") {
        Some(i) => &path[..i + 4],
        None => path,
    };
    Some((drv.to_string(), kind))
}

/// Whether a message of a batch that died means "try again" (the daemon went
/// away, the connection broke) rather than "the build is broken".
pub fn is_transient(message: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "unexpected end-of-file",
        "cannot connect to socket",
        "cannot connect to daemon",
        "connection reset by peer",
        "broken pipe",
        "lost connection",
        "daemon disconnected",
        "error: writing to file",
        "resource temporarily unavailable",
    ];
    let lower = message.to_ascii_lowercase();
    // "error: writing to file" is usually a full disk, which retrying
    // does not fix.
    if lower.contains("no space left on device") {
        return false;
    }
    PATTERNS.iter().any(|p| lower.contains(p))
}

/// Remove ANSI escape sequences (Nix colours its messages).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
