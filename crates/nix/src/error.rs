//! The adapter's error type.
//!
//! Every failure of a Nix invocation is one [`NixError`] variant that says which
//! command failed and why. It must not format anything for a particular
//! front end (CLI exit codes are the caller's business).

use std::io;

/// A failure of the Nix adapter.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// `nix` is not on PATH.
    #[error(
        "`nix` was not found on PATH: install Nix (e.g. `apt-get install nix-bin`) or add it to PATH"
    )]
    NotFound,
    /// A Nix program could not be started.
    #[error("could not run `{program}`: {source}")]
    Spawn {
        /// Program that failed to start.
        program: String,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A Nix program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// Command line, shortened.
        command: String,
        /// Exit status as text.
        status: String,
        /// The relevant part of standard error.
        stderr: String,
    },
    /// Output of a Nix program could not be understood.
    #[error("could not parse the output of `{command}`: {message}")]
    Parse {
        /// Command whose output was unexpected.
        command: String,
        /// What was wrong.
        message: String,
    },
    /// `nix --version` printed something unrecognised.
    #[error("unrecognised `nix --version` output: {0:?}")]
    Version(String),
}

impl NixError {
    pub(crate) fn parse(command: &str, message: impl ToString) -> Self {
        NixError::Parse {
            command: command.to_string(),
            message: message.to_string(),
        }
    }
}

/// Keep Nix's `error:` text from a stderr dump: drop everything before the
/// first `error:` line (progress, traces, warnings) and the
/// `(use '--show-trace' …)` hint. Falls back to the trimmed whole text.
pub fn error_message(stderr: &str) -> String {
    let start = stderr
        .lines()
        .position(|l| l.trim_start().starts_with("error:"));
    let lines: Vec<&str> = match start {
        Some(i) => stderr.lines().skip(i).collect(),
        None => stderr.lines().collect(),
    };
    let kept: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.trim_start().starts_with("(use '--show-trace'"))
        .collect();
    kept.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nix_is_one_actionable_line() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(crate::find_in(empty.path().as_os_str(), "nix"), None);
        let msg = NixError::NotFound.to_string();
        assert_eq!(msg.lines().count(), 1);
        assert!(msg.contains("PATH") && msg.contains("install"), "{msg}");
    }

    #[test]
    fn keeps_the_error_text_only() {
        let s = "warning: Git tree is dirty\ntrace: hi\nerror: boom b\n(use '--show-trace' to show detailed location information)\n";
        assert_eq!(error_message(s), "error: boom b");
        let s = "error: attribute 'x' missing\n\n       at /f.nix:3:9:\n(use '--show-trace' to show detailed location information)";
        assert_eq!(
            error_message(s),
            "error: attribute 'x' missing\n\n       at /f.nix:3:9:"
        );
        assert_eq!(error_message("  odd failure \n"), "odd failure");
    }
}
