//! `login`, `request`, `requests`, `approve`, `deny`, `revoke`, `sessions`: the
//! engineer's and approver's commands, all through the REST API.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hyper::Method;

use super::client::{ApiClient, DEFAULT_SERVER, SavedLogin};
use crate::api::types::*;
use crate::time;

#[derive(Args)]
pub struct LoginArgs {
    #[arg(long, env = "DRAWBRIDGE_USER")]
    user: String,
    /// The gateway's HTTPS address.
    #[arg(long, env = "DRAWBRIDGE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// The gateway's certificate to trust (default: ./data/keys/tls.crt when present).
    #[arg(long, env = "DRAWBRIDGE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
    /// The current TOTP code (prompted for when absent).
    #[arg(long)]
    totp: Option<String>,
}

#[derive(Args)]
pub struct RequestArgs {
    target: String,
    #[arg(long)]
    login: String,
    /// How long, e.g. 30m, 1h.
    #[arg(long = "for", default_value = "1h")]
    duration: String,
    #[arg(long)]
    reason: String,
}

#[derive(Args)]
pub struct RequestsArgs {
    /// Only pending requests.
    #[arg(long)]
    pending: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecisionArgs {
    id: i64,
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Args)]
pub struct SessionsArgs {
    /// Only live sessions.
    #[arg(long)]
    live: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KillArgs {
    /// The session id, e.g. s-3f9a1c0b7d2e4f60 (see `drawbridge sessions --live`).
    id: String,
    /// Shown to the engineer with the reason.
    #[arg(long)]
    comment: Option<String>,
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let ca_path = args
        .ca_cert
        .unwrap_or_else(|| PathBuf::from("data/keys/tls.crt"));
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "cannot read the gateway certificate {} (pass --ca-cert)",
            ca_path.display()
        )
    })?;
    let password = if args.password_stdin {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input)?;
        input.lines().next().unwrap_or("").to_string()
    } else {
        prompt("Password")?
    };
    let totp = match args.totp {
        Some(code) => code,
        None => prompt("TOTP code")?,
    };
    let client = ApiClient::new(&args.server, &ca_pem, None)?;
    let response: LoginResponse = client
        .call(
            Method::POST,
            "/api/v1/login",
            Some(&LoginRequest {
                user: args.user,
                password,
                totp,
            }),
        )
        .await?;
    let path = SavedLogin {
        server: args.server,
        ca_pem,
        user: response.user.clone(),
        token: response.token,
        expires_at: response.expires_at,
    }
    .save()?;
    println!(
        "logged in as {} until {} (token saved in {})",
        response.user,
        time::format(response.expires_at),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_request(r: &RequestView) {
    let window = match (r.grant_start, r.grant_end) {
        (Some(s), Some(e)) => format!(" {} → {}", time::format(s), time::format(e)),
        _ => String::new(),
    };
    let decided = r
        .decided_by
        .as_deref()
        .map(|b| format!(" by {b}"))
        .unwrap_or_default();
    let comment = r
        .comment
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    println!(
        "{}\t{}\t{}@{}\t{}s\t{}{decided}{comment}{window}\treason: {}",
        r.id, r.user, r.login, r.target, r.duration_secs, r.state, r.reason
    );
}

pub async fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let r: RequestView = client
        .call(
            Method::POST,
            "/api/v1/requests",
            Some(&NewAccessRequest {
                target: args.target,
                login: args.login,
                duration: args.duration,
                reason: args.reason,
            }),
        )
        .await?;
    println!(
        "request {} created ({}@{} for {}s); an approver runs: drawbridge approve {}",
        r.id, r.login, r.target, r.duration_secs, r.id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn requests(args: RequestsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let path = if args.pending {
        "/api/v1/requests?state=pending"
    } else {
        "/api/v1/requests"
    };
    let list: Vec<RequestView> = client.call(Method::GET, path, None::<&()>).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        list.iter().for_each(print_request);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn decide(args: DecisionArgs, action: &str) -> anyhow::Result<ExitCode> {
    if action == "deny" && args.comment.as_deref().is_none_or(|c| c.trim().is_empty()) {
        anyhow::bail!("a denial needs a --comment saying why");
    }
    let client = ApiClient::from_saved_login()?;
    let path = match action {
        "revoke" => format!("/api/v1/grants/{}/revoke", args.id),
        _ => format!("/api/v1/requests/{}/{action}", args.id),
    };
    let r: RequestView = client
        .call(
            Method::POST,
            &path,
            Some(&Comment {
                comment: args.comment,
            }),
        )
        .await?;
    print_request(&r);
    Ok(ExitCode::SUCCESS)
}

pub async fn kill(args: KillArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let killed: Killed = client
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{}/kill", args.id),
            Some(&Comment {
                comment: args.comment,
            }),
        )
        .await?;
    println!("session {} ended: {}", killed.id, killed.reason);
    Ok(ExitCode::SUCCESS)
}

pub async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let list: Vec<SessionView> = client
        .call(Method::GET, "/api/v1/sessions", None::<&()>)
        .await?;
    let list: Vec<_> = list.into_iter().filter(|s| !args.live || s.live).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in list {
        let state = if s.live {
            "live".to_string()
        } else {
            s.end_reason.unwrap_or_else(|| "ended".into())
        };
        println!(
            "{}\t{}\t{}@{}\t{}\t{}\tgrant {}\t{}",
            s.id,
            s.user,
            s.login,
            s.target,
            s.protocol,
            time::format(s.started_at),
            s.grant_id
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            state
        );
    }
    Ok(ExitCode::SUCCESS)
}
