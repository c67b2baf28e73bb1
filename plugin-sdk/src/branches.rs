//! Which builds a branch-scoped step acts on, as buildbot-nix's GC-root and
//! outputs steps decide: never a pull request, always the default branch,
//! and other branches when the `branches` setting lists them. Shared by the
//! first-party `gcroot` and `outputs` plugins; it reads nothing but the
//! build and the setting.

use crate::{BuildInfo, Config, PluginError};

/// The setting that lists extra branches.
pub const BRANCHES: &str = "branches";

/// Why the step should skip this build, or `None` when it should act.
pub fn skip_reason(build: &BuildInfo, config: &Config) -> Result<Option<String>, PluginError> {
    if let Some(pr) = build.pull_request {
        return Ok(Some(format!("skipped: pull request #{pr}")));
    }
    if build.is_default_branch {
        return Ok(None);
    }
    let branches = config.get_list(BRANCHES)?;
    Ok(match &build.branch {
        Some(b) if branches.contains(b) => None,
        Some(b) => Some(format!(
            "skipped: not the default branch (`{b}` is not in `{BRANCHES}`)"
        )),
        None => Some("skipped: not the default branch".to_owned()),
    })
}
