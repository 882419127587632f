//! `drawbridge psql TARGET --role R`: runs the stock `psql` through the gateway
//! with the saved login token as password and the gateway's certificate
//! verified (`sslmode=verify-full`), so nobody pastes tokens into
//! connection strings.

use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Args;

use super::client::SavedLogin;

#[derive(Args)]
pub struct PsqlArgs {
    target: String,
    /// The granted role (`drawbridge request TARGET --login ROLE`).
    #[arg(long)]
    role: String,
    /// Database on the target.
    #[arg(long, default_value = "postgres")]
    db: String,
    /// The gateway's PostgreSQL listener.
    #[arg(long, env = "DRAWBRIDGE_PG_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "DRAWBRIDGE_PG_PORT", default_value_t = 6432)]
    port: u16,
    /// Passed to psql as is (after `--`).
    #[arg(last = true)]
    psql_args: Vec<String>,
}

pub fn psql(args: PsqlArgs) -> anyhow::Result<ExitCode> {
    let saved = SavedLogin::load()?;
    let token = std::env::var("DRAWBRIDGE_TOKEN").unwrap_or(saved.token.clone());
    let ca = saved.write_ca_file()?;
    let conninfo = format!(
        "host={} port={} user={}@{} dbname={} sslmode=verify-full sslrootcert={}",
        args.host,
        args.port,
        args.role,
        args.target,
        args.db,
        ca.display()
    );
    let status = Command::new("psql")
        .arg(conninfo)
        .args(&args.psql_args)
        // The token goes through the environment, never the command line
        // (which other local users can read in the process list).
        .env("PGPASSWORD", token)
        .status()
        .context("cannot run psql (is the PostgreSQL client installed?)")?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
