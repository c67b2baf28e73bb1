//! `kiln plugin …`: list installed plugins, check a file, run a post-build
//! plugin against a store path (the plugin author's harness), scaffold a new
//! plugin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use kiln_runtime::bindings::post_build_types::{BuildInfo, Output};
use kiln_runtime::context::{SecretProvider, StaticSecrets};
use kiln_runtime::{CompileCache, Grant, Plugin, Runtime};

use crate::config::KilnConfig;
use crate::plugins::{PluginHost, parse_pairs};

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List installed plugins: name, version, world, what each asks for and is granted.
    List(ListArgs),
    /// Load a plugin file and say whether it works with this Kiln and what it asks for.
    Check(CheckArgs),
    /// Run a post-build plugin against an existing store path, as Kiln does after a build.
    Run(RunArgs),
    /// Create a new plugin crate from the template.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Operator configuration (plugin directory, grants).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The `.wasm` component to check.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An installed plugin's name, or a `.wasm` file.
    plugin: String,
    /// The store path to run on, as the job's `out` output.
    #[arg(long = "out-path", required = true)]
    out_paths: Vec<String>,
    /// Plugin setting, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Secret for the plugin, NAME=FILE (repeatable); granted for this run.
    #[arg(long = "secret", value_name = "NAME=FILE")]
    secrets: Vec<String>,
    /// Host the plugin may reach over HTTP (repeatable).
    #[arg(long = "grant-host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Directory the plugin may write into, NAME=PATH (repeatable).
    #[arg(long = "grant-dir", value_name = "NAME=PATH")]
    dirs: Vec<String>,
    /// Operator configuration (plugin directory, limits).
    #[arg(long = "kiln-config", env = "KILN_CONFIG")]
    kiln_config: Option<PathBuf>,
    /// Branch the build was for.
    #[arg(long)]
    branch: Option<String>,
    /// Project name passed to the plugin.
    #[arg(long, default_value = "local")]
    project: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Crate name of the new plugin (also its directory).
    name: String,
    /// The world to implement.
    #[arg(long, default_value = "post-build", value_parser = ["post-build"])]
    world: String,
    /// Parent directory to create it in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Path of the kiln-plugin-sdk crate to depend on.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk"))]
    sdk_path: PathBuf,
}

/// Run a plugin subcommand.
pub fn main(cmd: PluginCommand) -> ExitCode {
    if let PluginCommand::New(args) = cmd {
        return report(new(args));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(2, &format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        match cmd {
            PluginCommand::List(args) => list(args).await,
            PluginCommand::Check(args) => check(args).await,
            PluginCommand::Run(args) => run(args).await,
            PluginCommand::New(_) => unreachable!("handled above"),
        }
    })
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("kiln: {msg}");
    ExitCode::from(code)
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(2, &e),
    }
}

fn load_config(path: Option<&Path>) -> Result<KilnConfig, String> {
    match path {
        Some(p) => KilnConfig::load(p).map_err(|e| e.to_string()),
        None => Ok(KilnConfig::default()),
    }
}

async fn list(args: ListArgs) -> ExitCode {
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let host = match PluginHost::start(config, None).await {
        Ok(h) => h,
        Err(e) => return fail(2, &format!("{e:#}")),
    };
    let plugins = host.registry.list();
    let failures = host.registry.failures();
    if args.json {
        let items: Vec<_> = plugins
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.info.name, "version": p.info.version, "world": p.info.world,
                    "origin": p.origin, "requests": p.info.requests,
                    "granted": host.config.grants.get(&p.info.name),
                })
            })
            .collect();
        let fails: Vec<_> = failures
            .iter()
            .map(|f| serde_json::json!({"path": f.path, "error": f.error}))
            .collect();
        println!("{}", serde_json::json!({"plugins": items, "failed": fails}));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<16} {:<9} {:<11} {:<40} GRANTED",
        "NAME", "VERSION", "WORLD", "REQUESTS"
    );
    for p in &plugins {
        let granted = host
            .config
            .grants
            .get(&p.info.name)
            .map(grant_summary)
            .unwrap_or_else(|| "nothing".into());
        println!(
            "{:<16} {:<9} {:<11} {:<40} {}",
            p.info.name,
            p.info.version,
            p.info.world.as_str(),
            requests_summary(&p.info),
            granted
        );
    }
    for f in &failures {
        println!("failed to load {}: {}", f.path.display(), f.error);
    }
    ExitCode::SUCCESS
}

fn requests_summary(info: &kiln_runtime::PluginInfo) -> String {
    let r = &info.requests;
    let mut parts = Vec::new();
    if !r.secrets.is_empty() {
        parts.push(format!("secrets {}", r.secrets.join(",")));
    }
    if !r.hosts.is_empty() {
        parts.push(format!("hosts {}", r.hosts.join(",")));
    }
    if !r.store.is_empty() {
        parts.push(format!(
            "store {}",
            r.store
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !r.directories.is_empty() {
        parts.push(format!("dirs {}", r.directories.join(",")));
    }
    if r.kv {
        parts.push("kv".into());
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join("; ")
    }
}

fn grant_summary(g: &Grant) -> String {
    let mut parts = Vec::new();
    if !g.secrets.is_empty() {
        parts.push(format!("secrets {}", g.secrets.join(",")));
    }
    if !g.hosts.is_empty() {
        parts.push(format!("hosts {}", g.hosts.join(",")));
    }
    if !g.store.is_empty() {
        parts.push(format!(
            "store {}",
            g.store
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !g.directories.is_empty() {
        parts.push(format!(
            "dirs {}",
            g.directories.keys().cloned().collect::<Vec<_>>().join(",")
        ));
    }
    if g.kv {
        parts.push("kv".into());
    }
    parts.push(format!("projects {}", g.projects.join(",")));
    parts.join("; ")
}

async fn check(args: CheckArgs) -> ExitCode {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => return fail(2, &format!("cannot read {}: {e}", args.file.display())),
    };
    let runtime = match Runtime::new(CompileCache::disabled()) {
        Ok(r) => r,
        Err(e) => return fail(2, &format!("cannot start the plugin runtime: {e:#}")),
    };
    let plugin = match runtime.load(&args.file.display().to_string(), &bytes).await {
        Ok(p) => p,
        Err(e) => return fail(1, &e.to_string()),
    };
    if args.json {
        let v = serde_json::json!({
            "ok": true, "info": plugin.info, "wit_version": plugin.wit_version,
            "imports": plugin.imports, "sha256": plugin.sha256,
        });
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    print_describe(&plugin);
    ExitCode::SUCCESS
}

fn print_describe(p: &Plugin) {
    let i = &p.info;
    println!(
        "ok: {} loads as a {} plugin (kiln:plugin@{})",
        p.origin,
        i.world.as_str(),
        p.wit_version
    );
    println!("name:     {}", i.name);
    println!("version:  {}", i.version);
    println!("summary:  {}", i.summary);
    println!("requests: {}", requests_summary(i));
    if i.config.is_empty() {
        println!("config:   (none)");
    } else {
        println!("config:");
        for k in &i.config {
            let extra = match (&k.default, k.required) {
                (_, true) => " (required)".to_owned(),
                (Some(d), false) => format!(" (default {d})"),
                (None, false) => String::new(),
            };
            println!("  {}{extra}: {}", k.name, k.doc);
        }
    }
    println!("imports:  {}", p.imports.join(", "));
}

async fn run(args: RunArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => fail(2, &e),
    }
}

async fn run_inner(args: RunArgs) -> Result<ExitCode, String> {
    let config = load_config(args.kiln_config.as_deref())?;
    let settings = parse_pairs(&args.settings, "--config")?;
    let mut secret_values = StaticSecrets::default();
    for (name, file) in parse_pairs(&args.secrets, "--secret")? {
        let value = std::fs::read(&file)
            .map_err(|e| format!("--secret {name}: cannot read {file}: {e}"))?;
        secret_values.0.insert(name, value);
    }
    let dirs = parse_pairs(&args.dirs, "--grant-dir")?;
    let nix = kiln_nix::Nix::detect().await.map_err(|e| e.to_string())?;
    let mut host = PluginHost::start(config, Some(nix))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let plugin: Arc<Plugin> = if args.plugin.ends_with(".wasm") || Path::new(&args.plugin).exists()
    {
        let bytes =
            std::fs::read(&args.plugin).map_err(|e| format!("cannot read {}: {e}", args.plugin))?;
        Arc::new(
            host.registry
                .runtime()
                .load(&args.plugin, &bytes)
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        host.registry.get(&args.plugin).ok_or_else(|| {
            let names: Vec<String> = host
                .registry
                .list()
                .iter()
                .map(|p| p.info.name.clone())
                .collect();
            format!(
                "no plugin named `{}`; installed: {}",
                args.plugin,
                names.join(", ")
            )
        })?
    };
    if plugin.info.world != kiln_runtime::World::PostBuild {
        return Err(format!(
            "`{}` is a {} plugin; `kiln plugin run` runs post-build plugins",
            plugin.info.name,
            plugin.info.world.as_str()
        ));
    }
    // The harness grants what the command line names, plus the store
    // operations the plugin asks for, on top of any kiln.toml grant.
    let (mut grant, limits) = host.grant_for(&plugin.info.name, &args.project);
    grant.secrets.extend(secret_values.0.keys().cloned());
    grant.hosts.extend(args.hosts.iter().cloned());
    grant
        .store
        .extend(plugin.info.requests.store.iter().copied());
    grant
        .directories
        .extend(dirs.into_iter().map(|(k, v)| (k, PathBuf::from(v))));
    grant.kv = grant.kv || plugin.info.requests.kv;
    // Say what this run grants, since it is more than kiln.toml may.
    eprintln!(
        "kiln: this run grants `{}`: {}",
        plugin.info.name,
        grant_summary(&grant)
    );
    if !secret_values.0.is_empty() {
        host.secrets = Arc::new(Layered(secret_values, host.secrets.clone()));
    }
    let mut outputs = Vec::new();
    let mut infos = Vec::new();
    for (i, path) in args.out_paths.iter().enumerate() {
        let info = host
            .store
            .path_info(path)
            .await
            .map_err(|e| format!("--out-path {path}: {e}"))?;
        infos.push(info);
        outputs.push(Output {
            name: if i == 0 {
                "out".into()
            } else {
                format!("out{i}")
            },
            path: path.clone(),
        });
    }
    // clap requires at least one --out-path.
    let first = &infos[0];
    let attr = first
        .path
        .rsplit('/')
        .next()
        .and_then(|b| b.split_once('-'))
        .map(|(_, n)| n.to_owned())
        .unwrap_or_default();
    let build = BuildInfo {
        project: args.project.clone(),
        attr,
        system: String::new(),
        drv_path: first.deriver.clone().unwrap_or_default(),
        outputs,
        branch: args.branch.clone(),
        pull_request: None,
        is_default_branch: true,
        rev: None,
        cached: false,
        signatures: Vec::new(),
    };
    let step = host
        .run_post_build(&plugin, &build, &settings, grant, limits)
        .await;
    let (status, message) = match &step.result {
        Ok(o) => ("succeeded", o.message.clone()),
        Err(e) => ("failed", e.to_string()),
    };
    if args.json {
        let v = serde_json::json!({
            "plugin": plugin.info.name, "status": status, "message": message,
            "signatures": step.signatures.iter().map(|s| serde_json::json!({"path": s.path, "signatures": s.signatures})).collect::<Vec<_>>(),
            "log": step.log, "store_warning": step.store_warning,
        });
        println!("{v}");
    } else {
        for line in &step.log {
            eprintln!(
                "[{}] {}",
                serde_json::to_value(line.level)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                line.message
            );
        }
        println!("{}: {status}: {message}", plugin.info.name);
        for s in &step.signatures {
            for sig in &s.signatures {
                println!("signature {} {sig}", s.path);
            }
        }
        if let Some(w) = &step.store_warning {
            println!("warning: {w}");
        }
    }
    Ok(if step.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Command-line secrets first, then the configured ones.
struct Layered(StaticSecrets, Arc<dyn SecretProvider>);

impl SecretProvider for Layered {
    fn get(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        self.0.get(name).or_else(|| self.1.get(name))
    }
}

const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../examples/plugin-template/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../examples/plugin-template/src/lib.rs"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../../examples/plugin-template/.cargo/config.toml"),
    ),
    (
        "README.md",
        include_str!("../../../examples/plugin-template/README.md"),
    ),
];

fn new(args: NewArgs) -> Result<(), String> {
    let name = &args.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{name}` is not a valid crate name (letters, digits, `-`, `_`)"
        ));
    }
    let root = args.dir.join(name);
    if root.exists() {
        return Err(format!("{} already exists", root.display()));
    }
    let sdk = args.sdk_path.canonicalize().map_err(|e| {
        format!(
            "kiln-plugin-sdk not found at {} ({e}); pass --sdk-path",
            args.sdk_path.display()
        )
    })?;
    for (file, text) in TEMPLATE {
        let text = text
            .replace(
                "path = \"../../plugin-sdk\"",
                &format!("path = {:?}", sdk.display().to_string()),
            )
            .replace("plugin-template", name)
            .replace("plugin_template", &name.replace('-', "_"));
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap())
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!(
        "created {} ({} plugin); build it with: cd {} && cargo build --release",
        root.display(),
        args.world,
        root.display()
    );
    Ok(())
}
