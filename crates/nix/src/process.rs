//! Process plumbing shared by every Nix invocation: commands that die with
//! their owner and their process group, an address-space cap, and running a
//! command to completion with a useful error.
//!
//! It must not know which Nix command is being run beyond a label for errors.

use std::ffi::OsStr;
use std::process::Stdio;

use tokio::process::Command;

use crate::{NixError, error_message};

/// A command with stdin closed, `kill_on_drop`, and its own process group,
/// so that the caller can kill the whole group (builders included).
pub fn plain_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    cmd
}

/// Cap the child's address space (`RLIMIT_AS`) at `mib` MiB. An evaluation
/// that exceeds it fails with an out-of-memory error instead of taking the
/// machine down. `0` means no cap.
pub fn limit_memory(cmd: &mut Command, mib: u64) {
    if mib == 0 {
        return;
    }
    let bytes = mib.saturating_mul(1024 * 1024) as libc::rlim_t;
    // SAFETY: the closure only calls the async-signal-safe `setrlimit`.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Run `cmd` to completion and return its stdout; a non-zero exit becomes
/// [`NixError::Failed`] carrying Nix's `error:` text.
pub async fn run_output(cmd: &mut Command, label: &str) -> Result<String, NixError> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| NixError::Spawn {
            program: label.split(' ').next().unwrap_or(label).to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(NixError::Failed {
            command: label.to_string(),
            status: out.status.to_string(),
            stderr: error_message(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| NixError::parse(label, e))
}
