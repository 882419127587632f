//! `login`, `request`, `requests`, `approve`, `deny`, `revoke`, `sessions`: the
//! engineer's and approver's commands, all through the REST API.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hyper::Method;

use super::client::{ApiClient, DEFAULT_SERVER, SavedLogin};
use super::ssh_cert;
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
    /// Have this SSH public key signed by the gateway; the certificate is written
    /// beside it (`id_ed25519.pub` → `id_ed25519-cert.pub`) and `ssh` offers it.
    /// Default: `~/.ssh/id_ed25519.pub` when it exists.
    #[arg(long, conflicts_with = "no_ssh_cert")]
    ssh_key: Option<PathBuf>,
    /// Sign no SSH key.
    #[arg(long)]
    no_ssh_cert: bool,
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
    /// A ticket reference, e.g. INC-4521.
    #[arg(long)]
    ticket: Option<String>,
    /// Block until the request is decided; exit 0 only when approved.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct BreakGlassArgs {
    target: String,
    #[arg(long)]
    login: String,
    #[arg(long = "for", default_value = "30m")]
    duration: String,
    #[arg(long)]
    reason: String,
}

#[derive(Args)]
pub struct RequestsArgs {
    /// Only pending requests.
    #[arg(long, conflicts_with = "all")]
    pending: bool,
    /// Only your own requests.
    #[arg(long)]
    mine: bool,
    /// Every request in every state (the default shows pending and approved).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GrantsArgs {
    /// Only your own grants.
    #[arg(long)]
    mine: bool,
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
pub struct IdArgs {
    id: i64,
}

#[derive(Args)]
pub struct SessionsArgs {
    /// Only live sessions.
    #[arg(long, conflicts_with = "ended")]
    live: bool,
    /// Only ended sessions.
    #[arg(long)]
    ended: bool,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// ssh, http, postgres
    #[arg(long)]
    protocol: Option<String>,
    /// Started at or after this time (RFC 3339, e.g. 2026-11-29T10:00:00Z) or this
    /// long ago (e.g. 2h).
    #[arg(long, value_parser = parse_when)]
    since: Option<i64>,
    /// Started before this time (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    until: Option<i64>,
    #[arg(long)]
    json: bool,
}

/// An RFC 3339 time, or a duration meaning "that long ago".
fn parse_when(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|e| e.to_string());
    }
    let ago = time::parse_duration(s)?;
    Ok(time::now() - ago.as_secs() as i64)
}

impl SessionsArgs {
    fn keeps(&self, s: &SessionView) -> bool {
        (!self.live || s.live)
            && (!self.ended || !s.live)
            && self.user.as_ref().is_none_or(|u| &s.user == u)
            && self.target.as_ref().is_none_or(|t| &s.target == t)
            && self.protocol.as_ref().is_none_or(|p| &s.protocol == p)
            && self.since.is_none_or(|t| s.started_at >= t)
            && self.until.is_none_or(|t| s.started_at < t)
    }
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
    let saved = SavedLogin {
        server: args.server,
        ca_pem,
        user: response.user.clone(),
        token: response.token,
        expires_at: response.expires_at,
    };
    let path = saved.save()?;
    println!(
        "logged in as {} until {} (token saved in {})",
        response.user,
        time::format(response.expires_at),
        path.display()
    );
    if args.no_ssh_cert {
        return Ok(ExitCode::SUCCESS);
    }
    let named = args.ssh_key.is_some();
    let Some(key) = ssh_cert::key_to_sign(args.ssh_key) else {
        return Ok(ExitCode::SUCCESS);
    };
    let client = ApiClient::new(&saved.server, &saved.ca_pem, Some(saved.token.clone()))?;
    match ssh_cert::sign(&client, &key).await {
        Ok(line) => println!("{line}"),
        // The login itself worked; a default key that cannot be signed only warns.
        Err(e) if !named => eprintln!("drawbridge: warning: {e:#}"),
        Err(e) => return Err(e),
    }
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
    let body = NewAccessRequest {
        target: args.target,
        login: args.login,
        duration: args.duration,
        reason: args.reason,
        ticket: args.ticket,
    };
    let r: RequestView = client
        .call(Method::POST, "/api/v1/requests", Some(&body))
        .await?;
    println!(
        "request {} created ({}@{} for {}s, {} approval(s) needed); an approver runs: drawbridge approve {}",
        r.id, r.login, r.target, r.duration_secs, r.approvals_required, r.id
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "waiting for a decision (until {})…",
        time::format(r.expires_at)
    );
    let decided = wait_for_decision(&client, r.id).await?;
    print_request(&decided);
    Ok(if decided.state == "approved" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Polls the request until it leaves the pending state (it expires at the
/// latest when its TTL passes, so this ends).
async fn wait_for_decision(client: &ApiClient, id: i64) -> anyhow::Result<RequestView> {
    let path = format!("/api/v1/requests/{id}");
    loop {
        let r: RequestView = client.call(Method::GET, &path, None::<&()>).await?;
        if r.state != "pending" {
            return Ok(r);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn break_glass(args: BreakGlassArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let body = NewAccessRequest {
        target: args.target,
        login: args.login,
        duration: args.duration,
        reason: args.reason,
        ticket: None,
    };
    let r: RequestView = client
        .call(Method::POST, "/api/v1/break-glass", Some(&body))
        .await?;
    println!(
        "BREAK-GLASS grant {} active for {}@{} until {}; approvers have been notified",
        r.id,
        r.login,
        r.target,
        time::format(r.grant_end.unwrap_or(0))
    );
    Ok(ExitCode::SUCCESS)
}

fn print_list(list: &[RequestView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
    } else {
        list.iter().for_each(print_request);
    }
    Ok(())
}

pub async fn requests(args: RequestsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let mut path = "/api/v1/requests?".to_string();
    if args.pending {
        path.push_str("state=pending&");
    }
    if args.mine {
        path.push_str("mine=true");
    }
    let list: Vec<RequestView> = client.call(Method::GET, &path, None::<&()>).await?;
    let list: Vec<RequestView> = list
        .into_iter()
        .filter(|r| args.all || args.pending || matches!(r.state.as_str(), "pending" | "approved"))
        .collect();
    print_list(&list, args.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn grants(args: GrantsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let path = if args.mine {
        "/api/v1/grants?mine=true"
    } else {
        "/api/v1/grants"
    };
    let list: Vec<RequestView> = client.call(Method::GET, path, None::<&()>).await?;
    print_list(&list, args.json)?;
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
    if action == "approve" && r.state == "pending" {
        println!(
            "approval counted for request {}: {}/{} approvals ({})",
            r.id,
            r.approved_by.len(),
            r.approvals_required,
            r.approved_by.join(", ")
        );
    } else {
        print_request(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cancel` (own pending request) and `release` (own grant).
pub async fn own(args: IdArgs, action: &str) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_saved_login()?;
    let path = match action {
        "release" => format!("/api/v1/grants/{}/release", args.id),
        _ => format!("/api/v1/requests/{}/{action}", args.id),
    };
    let r: RequestView = client
        .call(Method::POST, &path, Some(&Comment::default()))
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
    let list: Vec<_> = list.into_iter().filter(|s| args.keeps(s)).collect();
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
