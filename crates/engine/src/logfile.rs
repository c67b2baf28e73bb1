//! Per-job log files with a size cap: the head is written as it comes, the
//! tail is kept in memory and written when the job ends, with one line saying
//! how much was cut in between.
//!
//! Owns log file naming and capping. It must not interpret log lines.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Bytes kept from the start of a log.
pub const HEAD_BYTES: usize = 256 * 1024;
/// Bytes kept from the end of a log.
pub const TAIL_BYTES: usize = 768 * 1024;

/// A capped, append-only log file.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    file: BufWriter<File>,
    head_left: usize,
    tail: VecDeque<String>,
    tail_bytes: usize,
    tail_cap: usize,
    cut_lines: u64,
    cut_bytes: u64,
}

impl CappedLog {
    /// Open (append to) `path` with the default caps.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::with_caps(path, HEAD_BYTES, TAIL_BYTES)
    }

    /// Open (append to) `path` keeping `head` bytes and `tail` bytes.
    pub fn with_caps(path: &Path, head: usize, tail: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CappedLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            head_left: head,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_cap: tail,
            cut_lines: 0,
            cut_bytes: 0,
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line (a newline is added).
    pub fn line(&mut self, line: &str) {
        let n = line.len() + 1;
        if n <= self.head_left && self.tail.is_empty() {
            self.head_left -= n;
            let _ = writeln!(self.file, "{line}");
            return;
        }
        self.head_left = 0;
        self.tail.push_back(line.to_string());
        self.tail_bytes += n;
        while self.tail_bytes > self.tail_cap {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
            self.cut_lines += 1;
            self.cut_bytes += old.len() as u64 + 1;
        }
    }

    /// Push what was written so far to the file, so the log can be
    /// followed while the build runs.
    pub fn flush(&mut self) {
        let _ = self.file.flush();
    }

    /// Write the tail (and the cut marker) and flush.
    pub fn finish(mut self) -> io::Result<()> {
        if self.cut_lines > 0 {
            writeln!(
                self.file,
                "[kiln: {} lines ({} bytes) cut here to cap the log; the start and the last {} KiB are kept]",
                self.cut_lines,
                self.cut_bytes,
                self.tail_cap / 1024
            )?;
        }
        for l in self.tail.drain(..) {
            writeln!(self.file, "{l}")?;
        }
        self.file.flush()
    }
}

/// A file name for `attr` (dots kept, anything odd replaced by `_`).
pub fn file_name(attr: &str) -> String {
    let mut s: String = attr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s.truncate(200);
    s + ".log"
}

/// The last `n` lines of a log file (for the failure summary).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_and_says_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.log");
        let mut log = CappedLog::with_caps(&p, 20, 20).unwrap();
        for i in 0..100 {
            log.line(&format!("line {i:03}"));
        }
        log.finish().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..2], ["line 000", "line 001"]);
        assert_eq!(&lines[lines.len() - 2..], ["line 098", "line 099"]);
        assert!(
            lines[2].starts_with("[kiln: 96 lines (864 bytes) cut here"),
            "{}",
            lines[2]
        );
        assert_eq!(last_lines(&p, 1), ["line 099"]);
    }

    #[test]
    fn small_logs_are_untouched_and_names_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(file_name("x86_64-linux.a/b"));
        let mut log = CappedLog::open(&p).unwrap();
        log.line("hello");
        log.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello\n");
        assert_eq!(file_name("x86_64-linux.a/b"), "x86_64-linux.a_b.log");
        assert_eq!(file_name(""), "_.log");
    }
}
