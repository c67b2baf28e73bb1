//! `gcroot`: a post-build plugin that keeps what the default branch built.
//! On the default branch, or on a branch named in the config key
//! `branches`, it registers one GC root per output through the host's
//! `store.add-gc-root`, named after the project, attribute and output
//! (`owner-repo-x86_64-linux.hello-out`); elsewhere it succeeds with a
//! "skipped" message.
//!
//! It asks for nothing but the store operation `add-gc-root`: it must not
//! choose where roots live (the operator's root directory does), touch the
//! file system, or root anything but the job's own outputs.

use kiln_plugin_sdk::branches::{BRANCHES, skip_reason};
use kiln_plugin_sdk::{
    BuildInfo, Config, PluginError, PluginInfo, PostBuild, StepOutcome, StoreOperation, WorldKind,
    export_post_build, log, store,
};

struct GcRoot;

impl PostBuild for GcRoot {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "gcroot",
            env!("CARGO_PKG_VERSION"),
            "Registers a GC root per output of jobs built on the default branch",
        )
        .store(StoreOperation::AddGcRoot)
        .optional_config(
            BRANCHES,
            "Branches besides the default one whose outputs get GC roots, \
             a list such as [\"main\", \"release\"]",
            Some("[]"),
        )
    }

    fn run(build: BuildInfo, config: Config) -> Result<StepOutcome, PluginError> {
        if let Some(reason) = skip_reason(&build, &config)? {
            return Ok(StepOutcome::message(reason));
        }
        let mut names = Vec::new();
        for output in &build.outputs {
            let name = root_name(&build.project, &build.attr, &output.name);
            store::add_gc_root(&name, &output.path).map_err(|e| {
                PluginError::failed(format!(
                    "cannot register GC root `{name}` for {}: {}",
                    output.path,
                    e.describe()
                ))
            })?;
            log::info!("registered GC root `{name}` -> {}", output.path);
            names.push(name);
        }
        Ok(StepOutcome::message(format!(
            "registered {} GC root{}: {}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        )))
    }
}

export_post_build!(GcRoot);

/// `<project>-<attr>-<output>` with every character outside
/// `[A-Za-z0-9._-]` replaced by `-`, and no leading `-` or `.`.
fn root_name(project: &str, attr: &str, output: &str) -> String {
    let name: String = format!("{project}-{attr}-{output}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_start_matches(['-', '.']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::Output;

    fn build(branch: Option<&str>, default: bool) -> BuildInfo {
        BuildInfo {
            project: "owner/repo".into(),
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

    fn config(branches: &str) -> Config {
        [(BRANCHES, branches)].into_iter().collect()
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(
            root_name("owner/repo", "x86_64-linux.hello", "out"),
            "owner-repo-x86_64-linux.hello-out"
        );
        assert_eq!(
            root_name("/tmp/my repo", "x.\"a b\"", "dev"),
            "tmp-my-repo-x.-a-b--dev"
        );
        assert_eq!(root_name("../..", "a", "out"), "a-out");
    }

    #[test]
    fn default_branch_and_listed_branches_are_rooted() {
        let none = Config::default();
        assert_eq!(skip_reason(&build(Some("main"), true), &none), Ok(None));
        assert_eq!(skip_reason(&build(None, true), &none), Ok(None));
        let listed = config(r#"["main","release"]"#);
        assert_eq!(
            skip_reason(&build(Some("release"), false), &listed),
            Ok(None)
        );
        let skipped = skip_reason(&build(Some("feature"), false), &listed)
            .unwrap()
            .unwrap();
        assert!(
            skipped.starts_with("skipped: not the default branch"),
            "{skipped}"
        );
        assert!(skip_reason(&build(None, false), &listed).unwrap().is_some());
        let mut pr = build(Some("main"), true);
        pr.pull_request = Some(7);
        assert_eq!(
            skip_reason(&pr, &none),
            Ok(Some("skipped: pull request #7".into()))
        );
    }

    #[test]
    fn a_malformed_branch_list_names_the_key() {
        let PluginError::Failed(message) =
            skip_reason(&build(Some("x"), false), &config("main")).unwrap_err()
        else {
            panic!("not a permanent failure");
        };
        assert!(message.contains("`branches`"), "{message}");
    }

    #[test]
    fn describe_asks_for_add_gc_root_only() {
        let info = GcRoot::describe();
        assert_eq!(info.capabilities.store, vec![StoreOperation::AddGcRoot]);
        assert!(info.capabilities.secrets.is_empty() && info.capabilities.hosts.is_empty());
        assert!(info.capabilities.directories.is_empty() && !info.capabilities.kv);
        assert!(info.config.iter().any(|k| k.name == BRANCHES));
    }
}
