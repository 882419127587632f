//! The command line: one file per command group. Errors become one readable line
//! on stderr and a non-zero exit status.

mod access;
mod admin;
mod audit;
mod audit_log;
mod client;
mod keys;
mod policy;
mod psql;
mod service_account;
mod ssh_cert;
mod terminal;

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

// Parsed once per run; boxing the big variants would only add noise.
#[allow(clippy::large_enum_variant)]
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
    /// Manage service accounts and their API tokens (on the gateway host).
    #[command(subcommand)]
    ServiceAccount(service_account::ServiceAccountCommand),
    /// Log in with password and TOTP; stores a short-lived token and has your SSH
    /// key signed for the day.
    Login(access::LoginArgs),
    /// Ask for time-boxed access to a target.
    Request(access::RequestArgs),
    /// List access requests and grants.
    Requests(access::RequestsArgs),
    /// Approve someone else's request (counts once per approver).
    Approve(access::DecisionArgs),
    /// Deny someone else's request (a comment is required).
    Deny(access::DecisionArgs),
    /// Withdraw your own pending request.
    Cancel(access::IdArgs),
    /// End someone's grant now; its live sessions are closed.
    Revoke(access::DecisionArgs),
    /// End your own grant now ("I'm done"); its live sessions are closed.
    Release(access::IdArgs),
    /// List active grants.
    Grants(access::GrantsArgs),
    /// Open an emergency grant without approval (break-glass group only).
    BreakGlass(access::BreakGlassArgs),
    /// Check and explain policies (on the gateway host).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Find sessions whose screens, commands or events contain TEXT.
    Search(audit::SearchArgs),
    /// Run the stock psql through the gateway with your token.
    Psql(psql::PsqlArgs),
    /// List sessions.
    Sessions(access::SessionsArgs),
    /// End a live session now (admins and approvers).
    Kill(access::KillArgs),
    /// Play a recorded session back in the terminal.
    Replay(audit::ReplayArgs),
    /// Export a recording: asciicast v2 or JSON Lines.
    Export(audit::ExportArgs),
    /// Verify the audit log and recordings: framing, hash chain, checkpoints, seals, and
    /// that every recording the audit log names exists with its sealed hash.
    Verify(audit::VerifyArgs),
    /// Show the global audit log (logins, requests, decisions, sessions, recoveries).
    Audit(audit_log::AuditArgs),
    /// Manage the gateway's keys (on the gateway host).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
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
    // Colours only for a person at a terminal, not in a log file or journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
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
            Command::ServiceAccount(c) => service_account::service_account(&config()?, c).await,
            Command::Login(a) => access::login(a).await,
            Command::Request(a) => access::request(a).await,
            Command::Requests(a) => access::requests(a).await,
            Command::Approve(a) => access::decide(a, "approve").await,
            Command::Deny(a) => access::decide(a, "deny").await,
            Command::Cancel(a) => access::own(a, "cancel").await,
            Command::Revoke(a) => access::decide(a, "revoke").await,
            Command::Release(a) => access::own(a, "release").await,
            Command::Grants(a) => access::grants(a).await,
            Command::BreakGlass(a) => access::break_glass(a).await,
            Command::Policy(c) => policy::run(&config()?, c).await,
            Command::Sessions(a) => access::sessions(a).await,
            Command::Psql(a) => psql::psql(a),
            Command::Search(a) => audit::search(&config()?, a),
            Command::Kill(a) => access::kill(a).await,
            Command::Replay(a) => audit::replay(&config()?, a),
            Command::Export(a) => audit::export(&config()?, a),
            Command::Verify(a) => audit::verify(&config()?, a),
            Command::Audit(a) => audit_log::audit(&config()?, a).await,
            Command::Keys(c) => keys::keys(&config()?, c),
        }
    })
}
