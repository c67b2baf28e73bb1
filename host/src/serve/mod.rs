//! `kiln serve`: the CI service. This first slice receives forge webhooks
//! durably: each is verified and parsed by the instance's forge plugin and
//! stored (SQLite in WAL mode by default, PostgreSQL through
//! `database_url`) before it is answered; `/metrics` and `/api/v1/health`
//! report on it. Building what was received is the pipeline's job, not yet
//! wired here.
//!
//! Start-up: read `kiln.toml`, open the database and run its migrations,
//! load the plugins, check every `[forges.<instance>]` names an installed
//! forge plugin, bind, then print `listening on http://ADDR` as the first
//! line of stdout (tests read the port from it) and the database on the
//! second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use kiln_runtime::World;

use crate::config::KilnConfig;
use crate::plugins::PluginHost;

pub mod api;
pub mod app;
pub mod db;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod retry;
pub mod session;
pub mod ui;
pub mod webhooks;

/// Where `kiln serve` listens without `--listen` or `[serve] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8010";

/// `kiln serve`'s options; each overrides its `[serve]` key.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The operator's configuration (`[serve]`, `[forges.*]`, plugins, grants).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8010; port 0 picks one).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of the SQLite database (default $XDG_STATE_HOME/kiln or
    /// ~/.local/state/kiln).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Run the service until SIGINT or SIGTERM. Exit 2 when it cannot start.
pub fn main(args: ServeArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln serve: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let (listener, app) = match start(args).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("kiln serve: {e:#}");
                return ExitCode::from(2);
            }
        };
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

pub(crate) async fn start(
    args: ServeArgs,
) -> anyhow::Result<(tokio::net::TcpListener, axum::Router)> {
    let config = match &args.config {
        Some(path) => KilnConfig::load(path)?,
        None => KilnConfig::default(),
    };
    let listen = match args.listen.or(config.serve.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN.parse().expect("a valid address"),
    };
    let location = DatabaseLocation::resolve(args.data_dir.clone(), &config)?;
    let db = location.open().await?;
    let DatabaseLocation {
        data_dir,
        url: database_url,
        sqlite_path,
    } = location;
    let stored = db.count_deliveries().await?;

    let forges = config.forges.clone();
    let nix = kiln_nix::Nix::detect()
        .await
        .context("kiln serve builds with Nix")?;
    let serve_config = config.clone();
    let plugins = Arc::new(PluginHost::start(config, Some(nix)).await?);
    check_forges(&plugins, &forges)?;
    check_authz(&plugins)?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    println!("kiln serve: listening on http://{bound}");
    println!(
        "kiln serve: database {}",
        db::describe(database_url.as_deref(), &sqlite_path)
    );
    let settings = pipeline::Settings::from_config(&serve_config, bound, data_dir.clone());
    let pipeline = pipeline::Pipeline::new(db.clone(), plugins.clone(), forges.clone(), settings);
    pipeline.start().await?;
    let metrics = pipeline.metrics().clone();
    metrics.set_stored(stored);
    let ingest = ingest::Ingest::start(db.clone(), None);
    let state = Arc::new(app::AppState {
        db,
        ingest,
        plugins,
        forges,
        metrics,
        pipeline,
    });
    tokio::spawn(retry::run(state.clone()));
    Ok((listener, app::app(state)))
}

/// The authz plugin named by `[serve] authz` is installed and of the
/// `authz` world: otherwise every control action would be refused. Without
/// the key (and without the built-in plugins) Kiln starts, warning that
/// every control action and private read will be refused.
fn check_authz(plugins: &PluginHost) -> anyhow::Result<()> {
    let name = api::auth::authz_plugin(&plugins.config);
    match plugins.registry.get(name) {
        Some(p) if p.info.world == World::Authz => Ok(()),
        Some(p) => anyhow::bail!(
            "[serve] authz = `{name}` is a {} plugin, not an authz plugin",
            p.info.world.as_str()
        ),
        None if plugins.config.serve.authz.is_some() => anyhow::bail!(
            "[serve] authz = `{name}`: no such plugin is installed (see `kiln plugin list`)"
        ),
        None => {
            tracing::warn!(
                "the authz plugin `{name}` is not installed: every control action and every \
                 read of a private project will be refused"
            );
            Ok(())
        }
    }
}

/// Every forge instance names an installed forge plugin.
fn check_forges(
    plugins: &PluginHost,
    forges: &BTreeMap<String, crate::config::ForgeInstance>,
) -> anyhow::Result<()> {
    for (instance, forge) in forges {
        match plugins.registry.get(&forge.plugin) {
            Some(p) if p.info.world == World::Forge => {}
            Some(p) => anyhow::bail!(
                "[forges.{instance}] plugin `{}` is a {} plugin, not a forge plugin",
                forge.plugin,
                p.info.world.as_str()
            ),
            None => {
                let installed: Vec<String> = plugins
                    .registry
                    .list()
                    .iter()
                    .filter(|p| p.info.world == World::Forge)
                    .map(|p| p.info.name.clone())
                    .collect();
                anyhow::bail!(
                    "[forges.{instance}] plugin `{}` is not installed (forge plugins installed: {}); put its .wasm in [plugins] directory",
                    forge.plugin,
                    if installed.is_empty() {
                        "none".to_owned()
                    } else {
                        installed.join(", ")
                    }
                )
            }
        }
    }
    Ok(())
}

/// Where the service's database is, as `kiln serve` and `kiln token` find
/// it: `KILN_DATABASE_URL`, else `[serve] database_url`, else
/// `kiln.sqlite3` in the data directory (`--data-dir`, `[serve] data_dir`,
/// then the XDG state directory).
#[derive(Debug, Clone)]
pub struct DatabaseLocation {
    /// The data directory (logs and mirrors live there too).
    pub data_dir: PathBuf,
    /// The database URL, when one is set.
    pub url: Option<String>,
    /// The SQLite file used without a URL.
    pub sqlite_path: PathBuf,
}

impl DatabaseLocation {
    /// Resolve the location from `--data-dir` and the configuration.
    pub fn resolve(data_dir: Option<PathBuf>, config: &KilnConfig) -> anyhow::Result<Self> {
        let data_dir = data_dir
            .or_else(|| config.serve.data_dir.clone())
            .or_else(default_data_dir)
            .context(
                "no data directory: set --data-dir, [serve] data_dir, XDG_STATE_HOME or HOME",
            )?;
        let url = std::env::var("KILN_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| config.serve.database_url.clone());
        let sqlite_path = data_dir.join("kiln.sqlite3");
        Ok(DatabaseLocation {
            data_dir,
            url,
            sqlite_path,
        })
    }

    /// Where it is, without credentials.
    pub fn describe(&self) -> String {
        db::describe(self.url.as_deref(), &self.sqlite_path)
    }

    /// Open it (creating the data directory for SQLite) and run the
    /// migrations.
    pub async fn open(&self) -> anyhow::Result<db::Database> {
        if self.url.is_none() {
            create_private_dir(&self.data_dir)?;
        }
        db::Database::open(self.url.as_deref(), &self.sqlite_path)
            .await
            .with_context(|| format!("cannot open the database {}", self.describe()))
    }
}

/// `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`.
fn default_data_dir() -> Option<PathBuf> {
    crate::config::xdg_dir("XDG_STATE_HOME", ".local/state").map(|base| base.join("kiln"))
}

/// Create `dir` (and parents) with mode 0700 when missing.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
