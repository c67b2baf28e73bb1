//! Evaluation: turn `<flake>#<attribute>` into a stream of [`EvalJob`]s.
//!
//! Uses `nix-eval-jobs` when it is on PATH, else Kiln's own batched evaluator
//! on the `nix` CLI. Either way jobs are sent as soon as they are known, so
//! scheduling can start before evaluation ends, and a failing attribute
//! becomes that job's `error` while the others still evaluate. This module
//! owns that choice and the whole-flake errors; it must not build anything
//! or decide job statuses beyond evaluation.

mod builtin;
mod cache;
mod nix_eval_jobs;
mod tree;

use std::path::{Path, PathBuf};

use kiln_nix::{Nix, NixError};
use tokio::sync::mpsc;

use crate::job::EvalJob;

pub use nix_eval_jobs::parse_line as parse_nix_eval_jobs_line;
pub use tree::attr_name;

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Local directory of the flake (see [`crate::source::prepare`]).
    pub flake_dir: PathBuf,
    /// Attribute of the flake's outputs, e.g. `checks`.
    pub attribute: String,
    /// Parallel evaluator processes (at least 1).
    pub workers: usize,
    /// Memory cap per evaluator process in MiB (0: none). nix-eval-jobs
    /// restarts a worker above it; the built-in evaluator sets `RLIMIT_AS`.
    pub max_memory_mib: u64,
    /// Where to register GC roots for the evaluated derivations.
    pub gc_roots_dir: Option<PathBuf>,
    /// Whether to find out if outputs are already valid.
    pub check_cache_status: bool,
    /// `--reference-lock-file` to pass (modern Nix only; see
    /// [`crate::source::Source::reference_lock_file`]).
    pub reference_lock_file: Option<PathBuf>,
    /// Which evaluator to use (default: nix-eval-jobs when on PATH).
    pub evaluator: EvaluatorChoice,
}

/// How [`evaluate`] picks its evaluator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EvaluatorChoice {
    /// `nix-eval-jobs` when it is on PATH, else the built-in evaluator.
    #[default]
    Auto,
    /// This `nix-eval-jobs` executable.
    NixEvalJobs(PathBuf),
    /// Kiln's evaluator on the `nix` CLI.
    Builtin,
}

impl EvaluatorChoice {
    /// Resolve `Auto` against a `PATH` value (`None`: the process's PATH).
    pub fn resolve(&self, path: Option<&std::ffi::OsStr>) -> EvaluatorChoice {
        match self {
            EvaluatorChoice::Auto => {
                let found = match path {
                    Some(p) => kiln_nix::find_in(p, "nix-eval-jobs"),
                    None => kiln_nix::find_on_path("nix-eval-jobs"),
                };
                found.map_or(EvaluatorChoice::Builtin, EvaluatorChoice::NixEvalJobs)
            }
            other => other.clone(),
        }
    }
}

impl EvalRequest {
    /// A request with the defaults: 1 worker per core (max 4), 4 GiB each,
    /// cache status checked, no GC roots.
    pub fn new(flake_dir: impl Into<PathBuf>, attribute: impl Into<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        EvalRequest {
            flake_dir: flake_dir.into(),
            attribute: attribute.into(),
            workers: cores.clamp(1, 4),
            max_memory_mib: 4096,
            gc_roots_dir: None,
            check_cache_status: true,
            reference_lock_file: None,
            evaluator: EvaluatorChoice::Auto,
        }
    }

    /// A request for a prepared source: its flake directory, `attribute`
    /// (else the repository's configured one) and its reference lock file.
    pub fn for_source(source: &crate::source::Source, attribute: Option<&str>) -> Self {
        let attribute = attribute.unwrap_or(&source.config.attribute);
        let mut req = EvalRequest::new(&source.flake_dir, attribute);
        req.reference_lock_file = source.reference_lock_file.clone();
        req
    }

    /// `<flake_dir>#<attribute>` as Nix sees it, for a directory whose path
    /// needs no escaping (else evaluation goes through [`FlakeRef`]).
    pub fn installable(&self) -> String {
        format!("{}#{}", self.flake_dir.display(), self.attribute)
    }
}

/// How Nix is pointed at a flake directory. A path in a flake reference
/// cannot hold a space, `#`, `?` or `%`, and Nix 2.8 neither decodes
/// percent-escapes in paths nor escapes the `git+file://` URL it derives from
/// a directory inside a git work tree. Such directories are reached through
/// a symlink with a plain name: `git+file://<link to the work tree>?dir=…`
/// inside a clean git work tree (exactly what Nix derives for the directory
/// itself), `path:<link>/.` outside git. A dirty work tree is read by Nix
/// through that path, which then must not be a link: its tracked files are
/// copied into an uncommitted repository instead (what Nix would see: tracked
/// files, no rev). The link or copy lives as long as this.
pub(crate) struct FlakeRef {
    /// The flake reference, without `#attribute`.
    pub(crate) reference: String,
    _link: Option<tempfile::TempDir>,
}

impl FlakeRef {
    /// The reference for `dir`.
    pub(crate) async fn new(dir: &Path) -> Result<FlakeRef, EvalError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let shown = dir.to_string_lossy().into_owned();
        if plain(&shown) {
            return Ok(FlakeRef {
                reference: shown,
                _link: None,
            });
        }
        let flake_error = |message: String| EvalError::Flake {
            flake: shown.clone(),
            message,
        };
        let work_tree =
            match git_out(&dir, &["rev-parse", "--show-toplevel", "--show-prefix"]).await {
                Some(text) => {
                    let mut lines = text.lines();
                    let top = lines.next().unwrap_or_default().to_string();
                    let prefix = lines.next().unwrap_or_default();
                    let prefix = prefix.trim_end_matches('/').to_string();
                    (!top.is_empty()).then_some((PathBuf::from(top), prefix))
                }
                None => None,
            };
        let mut tmp = std::env::temp_dir();
        if !plain(&tmp.to_string_lossy()) {
            tmp = PathBuf::from("/tmp");
        }
        let link_dir = tempfile::Builder::new()
            .prefix("kiln-flake-")
            .tempdir_in(&tmp)
            .map_err(|e| flake_error(format!("cannot create a temporary directory: {e}")))?;
        let link = link_dir.path().join("flake");
        let reference = match work_tree {
            Some((top, prefix)) => {
                let dirty = git_out(&top, &["status", "--porcelain", "--untracked-files=no"])
                    .await
                    .is_none_or(|s| !s.trim().is_empty());
                if dirty {
                    // Nix copies a dirty work tree through the path in the
                    // URL, which must then not be a link: copy the tracked
                    // files (what Nix would see) into a fresh, uncommitted
                    // repository, which Nix reads the same way.
                    crate::source::copy_tree(&top, &link)
                        .await
                        .map_err(|e| flake_error(e.to_string()))?;
                    git_out(&link, &["init", "--quiet"])
                        .await
                        .ok_or_else(|| flake_error("git init failed in a copy".into()))?;
                    git_out(&link, &["add", "--all", "--force"])
                        .await
                        .ok_or_else(|| flake_error("git add failed in a copy".into()))?;
                } else {
                    std::os::unix::fs::symlink(&top, &link)
                        .map_err(|e| flake_error(format!("cannot link {}: {e}", link.display())))?;
                }
                if prefix.is_empty() {
                    format!("git+file://{}", link.display())
                } else {
                    format!(
                        "git+file://{}?dir={}",
                        link.display(),
                        percent_encode(&prefix)
                    )
                }
            }
            None => {
                std::os::unix::fs::symlink(&dir, &link)
                    .map_err(|e| flake_error(format!("cannot link {}: {e}", link.display())))?;
                // `/.`: the directory behind the link, not the link itself.
                format!("path:{}/.", link.display())
            }
        };
        Ok(FlakeRef {
            reference,
            _link: Some(link_dir),
        })
    }

    /// `<reference>#<attribute>`.
    pub(crate) fn installable(&self, attribute: &str) -> String {
        format!("{}#{attribute}", self.reference)
    }
}

/// stdout of a successful `git -C dir args…`.
async fn git_out(dir: &Path, args: &[&str]) -> Option<String> {
    let mut git = kiln_nix::plain_command("git");
    git.arg("-C").arg(dir).args(args);
    let out = git.output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` can appear as is in a flake reference.
fn plain(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+~@:,=".contains(&b))
}

/// `s` with every byte but unreserved URL characters and `/` percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which evaluator ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    /// `nix-eval-jobs` from PATH.
    NixEvalJobs,
    /// Kiln's evaluator on the `nix` CLI.
    Builtin,
}

/// Totals of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSummary {
    /// Which evaluator was used.
    pub evaluator: Evaluator,
    /// Jobs sent (including failed attributes).
    pub jobs: usize,
    /// Of which failed to evaluate.
    pub errors: usize,
    /// Nix processes started (evaluator workers and retries).
    pub processes: usize,
}

/// A failure of the whole evaluation (exit-2 class): per-attribute failures
/// are jobs with an `error` instead.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The flake could not be loaded (missing, unlocked inputs, syntax error).
    #[error("cannot evaluate flake {flake}: {message}")]
    Flake {
        /// The flake directory.
        flake: String,
        /// Nix's message.
        message: String,
    },
    /// The flake has no such attribute.
    #[error(
        "flake {flake} does not provide attribute `{attribute}`; pick an existing one with --attribute or `attribute` in buildbot-nix.toml"
    )]
    AttributeMissing {
        /// The flake directory.
        flake: String,
        /// The attribute asked for.
        attribute: String,
    },
    /// Running Nix failed.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The receiver of jobs went away (the run was cancelled).
    #[error("evaluation cancelled")]
    Cancelled,
    /// `nix-eval-jobs` failed as a whole.
    #[error("nix-eval-jobs failed: {0}")]
    NixEvalJobs(String),
}

/// Longest line kept from an evaluator's output; the rest of a longer line is
/// read and dropped, so a runaway line cannot exhaust memory.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Read the next line of `r` (without its `\n`), decoding invalid UTF-8
/// lossily and dropping what exceeds `max` bytes. `None` at end of input (or
/// on a read error, which ends a pipe just the same), so callers that loop
/// until `None` always drain the child's output and never leave it blocked on
/// a full pipe.
pub(crate) async fn next_line_lossy<R>(r: &mut R, max: usize) -> Option<String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(max as u64)
        .read_until(b'\n', &mut buf)
        .await
        .ok()?;
    if n == 0 {
        return None;
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n == max {
        // Too long: skip to the end of this line.
        let mut rest = Vec::new();
        loop {
            rest.clear();
            let m = (&mut *r)
                .take(64 * 1024)
                .read_until(b'\n', &mut rest)
                .await
                .unwrap_or(0);
            if m == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Read `r` to its end, keeping at most the first and the last `keep` lines
/// (each cut at 4 KiB) with a note of how many were left out between them.
pub(crate) async fn drain_capped<R>(r: R, keep: usize) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    const LINE: usize = 4096;
    let mut r = tokio::io::BufReader::new(r);
    let mut head = Vec::new();
    let mut tail = std::collections::VecDeque::new();
    let mut omitted = 0usize;
    while let Some(mut line) = next_line_lossy(&mut r, LINE).await {
        if line.len() >= LINE {
            line.push_str(" …");
        }
        if head.len() < keep {
            head.push(line);
            continue;
        }
        tail.push_back(line);
        if tail.len() > keep {
            tail.pop_front();
            omitted += 1;
        }
    }
    if omitted > 0 {
        head.push(format!("… {omitted} lines left out …"));
    }
    head.extend(tail);
    head.join("\n")
}

/// Fill in what an evaluator leaves out: a job for the selected attribute
/// itself (a single derivation, empty path) is named by the attribute's last
/// component, and a job without a system (an evaluation error) gets the
/// system its path starts with, if any.
pub(crate) fn complete_job(job: &mut EvalJob, attribute: &str) {
    if job.attr_path.is_empty()
        && let Some(last) = tree::split_attribute(attribute).pop()
    {
        job.attr_path = vec![last];
        job.attr = attr_name(&job.attr_path);
    }
    if job.system.is_empty() {
        job.system = tree::system_of(&job.attr_path);
    }
}

/// Evaluate `req`, sending every job to `tx` as soon as it is known.
pub async fn evaluate(
    nix: &Nix,
    req: &EvalRequest,
    tx: mpsc::Sender<EvalJob>,
) -> Result<EvalSummary, EvalError> {
    if !req.flake_dir.join("flake.nix").is_file() {
        return Err(EvalError::Flake {
            flake: req.flake_dir.display().to_string(),
            message: "no flake.nix in this directory".into(),
        });
    }
    match req.evaluator.resolve(None) {
        EvaluatorChoice::NixEvalJobs(program) => {
            nix_eval_jobs::evaluate(nix, &program, req, tx).await
        }
        _ => builtin::evaluate(nix, req, tx).await,
    }
}
