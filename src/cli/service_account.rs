//! `drawbridge service-account …`: non-human users (CI jobs, scripts) on the
//! gateway host. A service account has no password and no TOTP, so it cannot
//! log in on the web page or with `drawbridge login`; an admin issues it an API
//! token instead, which works wherever a login token does (REST API, bearer
//! token for HTTP apps, password for PostgreSQL). Its access is still per grant.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::identity;
use crate::store::{NewUser, Store};

/// Tokens live at most this long; rotate by issuing a new one.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Subcommand)]
pub enum ServiceAccountCommand {
    /// Create a service account and print its first token (shown once).
    Create {
        name: String,
        /// Group membership (repeatable), e.g. `--group ci`.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        ttl: TtlArgs,
    },
    /// Issue another token for a service account (shown once); older ones stay
    /// valid until they expire or the account is disabled (`user disable`).
    Token {
        name: String,
        #[command(flatten)]
        ttl: TtlArgs,
    },
}

#[derive(Args)]
pub struct TtlArgs {
    /// How long the token is valid, e.g. `30d`, `12h` (at most 365d).
    #[arg(long, default_value = "30d", value_parser = parse_ttl)]
    ttl: Duration,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err("a token lives between 1s and 365d".into());
    }
    Ok(ttl)
}

pub async fn service_account(
    config: &Config,
    command: ServiceAccountCommand,
) -> anyhow::Result<ExitCode> {
    let store = crate::gateway::open_store(config)?;
    let (name, ttl) = match command {
        ServiceAccountCommand::Create { name, groups, ttl } => {
            let user = store
                .create_user(NewUser {
                    name,
                    groups,
                    admin: false,
                    email: None,
                    password_hash: None,
                    totp_secret: None,
                    ssh_keys: vec![],
                })
                .await?;
            println!(
                "created service account {} (groups: {})",
                user.name,
                user.groups.join(",")
            );
            (user.name, ttl.ttl)
        }
        ServiceAccountCommand::Token { name, ttl } => (name, ttl.ttl),
    };
    let now = crate::time::now();
    let token =
        identity::issue_service_token(store.as_ref(), &name, ttl.as_secs() as i64, now).await?;
    // Shown once, to the admin; only its hash is stored.
    println!("token: {}", token.value().expose());
    println!("expires: {}", crate::time::format(token.expires_at()));
    Ok(ExitCode::SUCCESS)
}
