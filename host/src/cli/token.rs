//! `kiln token`: API tokens for `kiln serve`'s control actions, in the
//! service's own database (found as `kiln serve` finds it: `--data-dir`,
//! `KILN_DATABASE_URL`, `[serve]`).
//!
//! `create` prints the new token once, alone on stdout, and stores only its
//! SHA-256; `revoke` marks tokens refused from then on; `list` shows who
//! holds tokens, never the tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::KilnConfig;
use crate::serve::DatabaseLocation;
use crate::serve::api::auth::{self, Revoke};
use crate::serve::db::Database;

/// `kiln token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create(CreateArgs),
    /// Revoke a subject's tokens, or one token by id.
    Revoke(RevokeArgs),
    /// List tokens: id, subject, rights and use (never the tokens).
    List(DatabaseArgs),
}

/// Where the database is.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// The service's configuration (`[serve] data_dir`, `database_url`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the SQLite database, as for `kiln serve`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `kiln token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Who the token speaks for (a login or a service's name).
    #[arg(long)]
    pub subject: String,
    /// Give it every right.
    #[arg(long)]
    pub admin: bool,
    /// An organisation the subject belongs to (repeatable).
    #[arg(long = "org", value_name = "ORG")]
    pub organisations: Vec<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `kiln token revoke`.
#[derive(Debug, clap::Args)]
#[group(id = "which", required = true, multiple = false)]
pub struct RevokeArgs {
    /// Revoke every token of this subject.
    #[arg(long, group = "which")]
    pub subject: Option<String>,
    /// Revoke the token with this id (see `kiln token list`).
    #[arg(long, group = "which")]
    pub id: Option<i64>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Run a `kiln token` command: exit 0 on success, 1 when there was nothing
/// to revoke, 2 when the database cannot be used.
pub fn main(cmd: TokenCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln token: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln token: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn open(args: &DatabaseArgs) -> anyhow::Result<Database> {
    let config = match &args.config {
        Some(path) => KilnConfig::load(path)?,
        None => KilnConfig::default(),
    };
    DatabaseLocation::resolve(args.data_dir.clone(), &config)?
        .open()
        .await
}

async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create(args) => {
            check_name("subject", &args.subject)?;
            for org in &args.organisations {
                check_name("organisation", org)?;
            }
            let db = open(&args.database).await?;
            let (id, token) =
                auth::create_token(&db, &args.subject, args.admin, &args.organisations).await?;
            println!("{token}");
            eprintln!(
                "kiln token: created token {id} for {} ({}; organisations: {}). \
                 It is shown only this once: store it now.",
                args.subject,
                if args.admin {
                    "administrator"
                } else {
                    "not an administrator"
                },
                list_or_none(&args.organisations)
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke(args) => {
            let db = open(&args.database).await?;
            let (which, what) = match (&args.subject, args.id) {
                (Some(s), _) => (Revoke::Subject(s), format!("subject {s}")),
                (None, Some(id)) => (Revoke::Id(id), format!("id {id}")),
                (None, None) => unreachable!("clap requires --subject or --id"),
            };
            let n = auth::revoke_tokens(&db, which).await?;
            if n == 0 {
                eprintln!("kiln token: no token to revoke for {what} (none, or already revoked)");
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "revoked {n} token{} for {what}",
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List(args) => {
            let db = open(&args).await?;
            let rows = auth::list_tokens(&db).await?;
            println!("ID\tSUBJECT\tADMIN\tORGANISATIONS\tCREATED\tLAST USED\tREVOKED");
            for t in rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.subject,
                    if t.admin { "yes" } else { "no" },
                    list_or_none(&t.organisations),
                    utc(t.created_at),
                    t.last_used_at.map_or_else(|| "never".to_owned(), utc),
                    t.revoked_at.map_or_else(|| "-".to_owned(), utc),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A subject or organisation: non-empty, printable, no spaces.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("the {what} {name:?} must be a non-empty name without spaces");
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(",")
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_340_096_789), "2026-11-22T09:34:56Z");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("subject", "alice").is_ok());
        assert!(check_name("subject", "").is_err());
        assert!(check_name("subject", "a b").is_err());
    }
}
