//! `outputs`: a post-build plugin that keeps an index of what each branch
//! built, as buildbot-nix's outputs directory does. On the default branch,
//! or on a branch named in the config key `branches`, it writes each
//! output's store path to `<project>/<branch>/<attr>` (output `out`) or
//! `<project>/<branch>/<attr>.<output>` inside the directory the operator
//! grants as `outputs`; elsewhere it succeeds with a "skipped" message.
//!
//! It asks for nothing but that directory and writes through the host's
//! `files.write-file`: it must not reach the file system through WASI, and
//! it sanitises every path component it derives from the build so none can
//! be `..`, absolute or hidden.

use kiln_plugin_sdk::branches::{BRANCHES, skip_reason};
use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, WorldKind,
    export_post_build, files, log,
};

/// The logical directory the operator grants.
const DIRECTORY: &str = "outputs";
/// The branch component when the build has no branch (`kiln run`).
const NO_BRANCH: &str = "default";

struct Outputs;

impl PostBuild for Outputs {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "outputs",
            env!("CARGO_PKG_VERSION"),
            "Writes each output path to `<project>/<branch>/<attr>` in the granted directory `outputs`",
        )
        .directory(DIRECTORY)
        .optional_config(
            BRANCHES,
            "Branches besides the default one whose output paths are written, \
             a list such as [\"main\", \"release\"]",
            Some("[]"),
        )
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        if let Some(reason) = skip_reason(&build, &config)? {
            return Ok(StepOutcome::message(reason));
        }
        let mut written = Vec::new();
        for output in &build.outputs {
            let rel = index_path(&build, &output.name);
            files::write_file(DIRECTORY, &rel, output.path.as_bytes()).map_err(|e| {
                PluginError::failed(format!(
                    "cannot write `{rel}` in directory `{DIRECTORY}`: {}",
                    e.describe()
                ))
            })?;
            log::info!("wrote {} to `{rel}`", output.path);
            written.push(rel);
        }
        Ok(StepOutcome::message(format!(
            "wrote {} output path{}: {}",
            written.len(),
            if written.len() == 1 { "" } else { "s" },
            written.join(", ")
        )))
    }
}

export_post_build!(Outputs);

/// `<project>/<branch>/<attr>[.<output>]`, relative to the granted
/// directory. The project keeps its `/`s (`owner/repo`); the branch and
/// the file name are one component each.
fn index_path(build: &BuildInfo, output: &str) -> String {
    let mut parts: Vec<String> = build
        .project
        .split('/')
        .map(component)
        .filter(|c| !c.is_empty())
        .collect();
    if parts.is_empty() {
        parts.push("project".to_owned());
    }
    parts.push(component(build.branch.as_deref().unwrap_or(NO_BRANCH)));
    let file = if output == "out" {
        build.attr.clone()
    } else {
        format!("{}.{output}", build.attr)
    };
    parts.push(component(&file));
    parts.join("/")
}

/// One path component: characters outside `[A-Za-z0-9._-]` become `_`, a
/// leading `.` and any `.` after a `.` too, so the result is never `.`,
/// `..` or hidden. Empty input stays empty.
fn component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous = None;
    for c in text.chars() {
        let keep = c.is_ascii_alphanumeric()
            || c == '-'
            || c == '_'
            || (c == '.' && previous.is_some_and(|p| p != '.'));
        let c = if keep { c } else { '_' };
        out.push(c);
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::Output;

    fn build(project: &str, branch: Option<&str>, default: bool) -> BuildInfo {
        BuildInfo {
            project: project.into(),
            attr: "x86_64-linux.hello".into(),
            system: "x86_64-linux".into(),
            drv_path: String::new(),
            outputs: vec![Output {
                name: "out".into(),
                path: "/nix/store/x".into(),
            }],
            branch: branch.map(str::to_owned),
            pull_request: None,
            is_default_branch: default,
            rev: None,
            cached: false,
            signatures: Vec::new(),
        }
    }

    #[test]
    fn paths_follow_project_branch_attr() {
        let b = build("owner/repo", Some("main"), true);
        assert_eq!(index_path(&b, "out"), "owner/repo/main/x86_64-linux.hello");
        assert_eq!(
            index_path(&b, "dev"),
            "owner/repo/main/x86_64-linux.hello.dev"
        );
        let local = build("/tmp/my repo", None, true);
        assert_eq!(
            index_path(&local, "out"),
            "tmp/my_repo/default/x86_64-linux.hello"
        );
        let slashed = build("owner/repo", Some("feature/x"), false);
        assert_eq!(
            index_path(&slashed, "out"),
            "owner/repo/feature_x/x86_64-linux.hello"
        );
    }

    #[test]
    fn no_component_can_escape_or_hide() {
        for project in ["../../etc", "..", "./.hidden/..x", "a/.../b", "//"] {
            let path = index_path(&build(project, Some(".."), true), "out");
            for part in path.split('/') {
                assert!(!part.is_empty() && !part.starts_with('.'), "{path}");
                assert!(!part.contains(".."), "{path}");
            }
        }
    }

    #[test]
    fn only_the_default_branch_and_listed_branches_are_written() {
        let none = Config::default();
        assert_eq!(skip_reason(&build("p", None, true), &none), Ok(None));
        let listed: Config = [(BRANCHES, r#"["release"]"#)].into_iter().collect();
        assert_eq!(
            skip_reason(&build("p", Some("release"), false), &listed),
            Ok(None)
        );
        let skipped = skip_reason(&build("p", Some("dev"), false), &listed)
            .unwrap()
            .unwrap();
        assert!(
            skipped.starts_with("skipped: not the default branch"),
            "{skipped}"
        );
        let bad: Config = [(BRANCHES, "release")].into_iter().collect();
        assert!(skip_reason(&build("p", Some("dev"), false), &bad).is_err());
    }

    #[test]
    fn describe_asks_for_the_outputs_directory_only() {
        let info = Outputs::describe();
        assert_eq!(info.capabilities.directories, vec![DIRECTORY.to_owned()]);
        assert!(info.capabilities.store.is_empty() && info.capabilities.secrets.is_empty());
        assert!(info.capabilities.hosts.is_empty() && !info.capabilities.kv);
    }
}
