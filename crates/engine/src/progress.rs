//! What `kiln run` shows on stderr while it works: a live status block when
//! stderr is a terminal (counts queued/running/done/failed, current jobs,
//! elapsed time), one plain line per finished job otherwise, and at the end a
//! summary table naming every failure with the last lines of its log.
//!
//! It must not write to stdout (that is `--json`'s) and must not influence
//! any result.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::job::JobStatus;
use crate::logfile::last_lines;
use crate::report::Report;

/// Lines of log shown per failure in the summary.
const TAIL_LINES: usize = 10;
/// Running jobs named in the live display.
const SHOWN_RUNNING: usize = 4;

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redraw a status block (stderr is a terminal).
    Live,
    /// One line per event.
    Plain,
    /// Nothing (library use, tests).
    Quiet,
}

impl Mode {
    /// `Live` when stderr is a terminal, else `Plain`.
    pub fn detect() -> Mode {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// Job counts for the live display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// All jobs known so far.
    pub total: usize,
    /// Waiting (for dependencies, a slot, or Nix to start them).
    pub queued: usize,
    /// Being built by Nix now.
    pub running: usize,
    /// Finished without failure.
    pub done: usize,
    /// Finished with a failure status.
    pub failed: usize,
}

/// The progress display.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    start: Instant,
    running: Vec<String>,
    drawn: usize,
    finished: usize,
}

impl Progress {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Self {
        Progress {
            mode,
            start: Instant::now(),
            running: Vec::new(),
            drawn: 0,
            finished: 0,
        }
    }

    /// A job's build started.
    pub fn started(&mut self, attr: &str) {
        self.running.push(attr.to_string());
    }

    /// A job reached a final status.
    pub fn finished(&mut self, attr: &str, status: JobStatus, duration_ms: u64) {
        self.running.retain(|a| a != attr);
        self.finished += 1;
        if self.mode == Mode::Plain {
            let secs = duration_ms as f64 / 1000.0;
            let line = match status {
                JobStatus::Succeeded | JobStatus::Failed | JobStatus::TimedOut => {
                    format!("kiln: {} {attr} ({secs:.1}s)", label(status))
                }
                _ => format!("kiln: {} {attr}", label(status)),
            };
            eprintln!("{line}");
        }
    }

    /// Redraw the live block (no-op unless live).
    pub fn tick(&mut self, c: Counts) {
        if self.mode != Mode::Live {
            return;
        }
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        let elapsed = self.start.elapsed().as_secs();
        out.push_str(&format!(
            "kiln: {} jobs · {} queued · {} running · {} done · {} failed · {}:{:02}\n",
            c.total,
            c.queued,
            c.running,
            c.done,
            c.failed,
            elapsed / 60,
            elapsed % 60
        ));
        let mut lines = 1;
        for attr in self.running.iter().take(SHOWN_RUNNING) {
            out.push_str(&format!("  building {attr}\n"));
            lines += 1;
        }
        if self.running.len() > SHOWN_RUNNING {
            out.push_str(&format!(
                "  … and {} more\n",
                self.running.len() - SHOWN_RUNNING
            ));
            lines += 1;
        }
        self.drawn = lines;
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }

    /// Clear the live block and print the summary table.
    pub fn finish(&mut self, report: &Report, interrupted: bool) {
        if self.mode == Mode::Quiet {
            return;
        }
        if self.mode == Mode::Live && self.drawn > 0 {
            eprint!("\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
        eprint!(
            "{}",
            summary_table(report, interrupted, self.start.elapsed().as_secs_f64())
        );
    }
}

fn label(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Cached => "cached",
        JobStatus::Failed => "FAILED",
        JobStatus::DependencyFailed => "DEPENDENCY FAILED",
        JobStatus::EvalError => "EVAL ERROR",
        JobStatus::UnsupportedSystem => "unsupported system",
        JobStatus::TimedOut => "TIMED OUT",
        JobStatus::Cancelled => "cancelled",
    }
}

/// The end-of-run summary: counts, then every failure with its reason and the
/// last lines of its log.
pub fn summary_table(report: &Report, interrupted: bool, secs: f64) -> String {
    let s = &report.summary;
    let mut out = format!(
        "\nkiln: {} jobs in {secs:.1}s: {} succeeded, {} cached, {} failed, {} dependency failed, {} eval errors, {} timed out, {} unsupported system, {} cancelled{}\n",
        s.total,
        s.succeeded,
        s.cached,
        s.failed,
        s.dependency_failed,
        s.eval_error,
        s.timed_out,
        s.unsupported_system,
        s.cancelled,
        if interrupted { " (interrupted)" } else { "" }
    );
    let failures: Vec<_> = report
        .jobs
        .iter()
        .filter(|j| j.status.is_failure())
        .collect();
    if failures.is_empty() {
        return out;
    }
    let width = failures.iter().map(|j| j.attr.len()).max().unwrap_or(0);
    out.push_str("\nfailures:\n");
    for j in &failures {
        let why = j
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("");
        out.push_str(&format!(
            "  {:width$}  {:<18} {why}\n",
            j.attr,
            label(j.status)
        ));
    }
    for j in failures.iter().filter(|j| {
        matches!(
            j.status,
            JobStatus::Failed | JobStatus::TimedOut | JobStatus::EvalError
        )
    }) {
        let tail = j
            .log_path
            .as_deref()
            .map(|p| last_lines(Path::new(p), TAIL_LINES))
            .unwrap_or_default();
        if tail.is_empty() && j.status != JobStatus::EvalError {
            continue;
        }
        out.push_str(&format!("\n── {} ({})", j.attr, label(j.status)));
        if let Some(p) = &j.log_path {
            out.push_str(&format!(", log: {p}"));
        }
        out.push('\n');
        if tail.is_empty() {
            for l in j.error.as_deref().unwrap_or("").lines().take(TAIL_LINES) {
                out.push_str(&format!("   {l}\n"));
            }
        }
        for l in tail {
            out.push_str(&format!("   {l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::JobReport;

    #[test]
    fn the_summary_names_every_failure_with_its_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bad.log");
        std::fs::write(&log, "one\ntwo\nthe last words\n").unwrap();
        let job = |attr: &str, status, error: Option<&str>, log: Option<String>| JobReport {
            attr: attr.into(),
            system: "x86_64-linux".into(),
            drv_path: None,
            outputs: BTreeMap::new(),
            status,
            error: error.map(Into::into),
            failed_dependency: None,
            attempts: 1,
            duration_ms: 5,
            log_path: log,
            post_build: vec![],
        };
        let report = Report::new(
            ".".into(),
            None,
            "checks".into(),
            vec![
                job("x86_64-linux.ok", JobStatus::Succeeded, None, None),
                job(
                    "x86_64-linux.bad",
                    JobStatus::Failed,
                    Some("builder failed with exit code 1"),
                    Some(log.display().to_string()),
                ),
                job(
                    "x86_64-linux.child",
                    JobStatus::DependencyFailed,
                    Some("dependency x86_64-linux.bad failed"),
                    None,
                ),
                job(
                    "x86_64-linux.typo",
                    JobStatus::EvalError,
                    Some("error: undefined variable 'x'"),
                    None,
                ),
            ],
        );
        let t = summary_table(&report, false, 1.0);
        assert!(t.contains("4 jobs"), "{t}");
        assert!(t.contains("x86_64-linux.bad") && t.contains("FAILED"));
        assert!(t.contains("dependency x86_64-linux.bad failed"));
        assert!(t.contains("   the last words"));
        assert!(t.contains("undefined variable"));
        assert!(!t.contains("x86_64-linux.ok "));
    }
}
