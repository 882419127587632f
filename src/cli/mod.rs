//! The command line: one file per command group. Errors become one readable line
//! on stderr and a non-zero exit status.

mod access;
mod admin;
mod audit;
mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "drawbridge",
    version,
    about = "Privileged access gateway: just-in-time grants, short-lived credentials, tamper-evident recordings"
)]
pub struct Cli {
    /// Gateway config file (TOML); the embedded defaults apply without one.
    #[arg(long, global = true, env = "DRAWBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (SSH and HTTPS listeners).
    Serve,
    /// Create the data folder and the gateway's keys, then exit.
    Init,
    /// Manage users (on the gateway host).
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage targets (on the gateway host).
    #[command(subcommand)]
    Target(admin::TargetCommand),
    /// Log in with password and TOTP; stores a short-lived token.
    Login(access::LoginArgs),
    /// Ask for time-boxed access to a target.
    Request(access::RequestArgs),
    /// List access requests and grants.
    Requests(access::RequestsArgs),
    /// Approve someone else's request.
    Approve(access::DecisionArgs),
    /// Deny someone else's request (a comment is required).
    Deny(access::DecisionArgs),
    /// End a grant now; its live sessions are closed.
    Revoke(access::DecisionArgs),
    /// List sessions.
    Sessions(access::SessionsArgs),
    /// End a live session now (admins and approvers).
    Kill(access::KillArgs),
    /// Play a recorded session back in the terminal.
    Replay(audit::ReplayArgs),
    /// Verify recordings: framing, hash chain, signatures, seals.
    Verify(audit::VerifyArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRAWBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let config = || Config::load(cli.config.as_deref());
    runtime.block_on(async {
        match cli.command {
            Command::Serve => {
                crate::gateway::serve(config()?).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Init => {
                crate::gateway::init(&config()?)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::User(c) => admin::user(&config()?, c).await,
            Command::Target(c) => admin::target(&config()?, c).await,
            Command::Login(a) => access::login(a).await,
            Command::Request(a) => access::request(a).await,
            Command::Requests(a) => access::requests(a).await,
            Command::Approve(a) => access::decide(a, "approve").await,
            Command::Deny(a) => access::decide(a, "deny").await,
            Command::Revoke(a) => access::decide(a, "revoke").await,
            Command::Sessions(a) => access::sessions(a).await,
            Command::Kill(a) => access::kill(a).await,
            Command::Replay(a) => audit::replay(&config()?, a),
            Command::Verify(a) => audit::verify(&config()?, a),
        }
    })
}
