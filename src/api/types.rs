//! The JSON bodies of the REST API, shared by the server and the CLI client so the
//! two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::session::LiveInfo;
use crate::store::{AccessRequestRow, SessionRow};

#[derive(Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub totp: String,
}

#[derive(Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    pub token: String,
    pub expires_at: i64,
}

/// `POST /api/v1/ssh-certificates`: sign the caller's own public key.
#[derive(Serialize, Deserialize)]
pub struct SshCertificateRequest {
    /// One OpenSSH public key line, e.g. the contents of `~/.ssh/id_ed25519.pub`.
    pub public_key: String,
}

#[derive(Serialize, Deserialize)]
pub struct SshCertificateResponse {
    /// The certificate line, ready to be written as `id_ed25519-cert.pub`.
    pub certificate: String,
    pub serial: u64,
    pub key_id: String,
    pub valid_after: i64,
    pub valid_before: i64,
}

#[derive(Serialize, Deserialize)]
pub struct WhoAmI {
    pub user: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

#[derive(Serialize, Deserialize)]
pub struct NewAccessRequest {
    pub target: String,
    pub login: String,
    /// e.g. "30m", "1h"
    pub duration: String,
    pub reason: String,
    #[serde(default)]
    pub ticket: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Comment {
    pub comment: Option<String>,
}

/// The answer to `POST /api/v1/sessions/{id}/kill`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Killed {
    pub id: String,
    /// What the engineer's client was told.
    pub reason: String,
}

/// A request or grant as clients see it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RequestView {
    pub id: i64,
    pub user: String,
    pub target: String,
    pub login: String,
    pub duration_secs: i64,
    pub reason: String,
    pub ticket: Option<String>,
    pub state: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub approvals_required: u32,
    pub approved_by: Vec<String>,
    pub max_sessions: Option<u32>,
    pub break_glass: bool,
    pub grant_start: Option<i64>,
    pub grant_end: Option<i64>,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

impl From<AccessRequestRow> for RequestView {
    fn from(r: AccessRequestRow) -> Self {
        RequestView {
            id: r.id,
            user: r.user,
            target: r.target,
            login: r.login,
            duration_secs: r.duration_secs,
            reason: r.reason,
            ticket: r.ticket,
            state: r.state.as_str().to_string(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            approvals_required: r.approvals_required,
            approved_by: r.approved_by,
            max_sessions: r.max_sessions,
            break_glass: r.break_glass,
            grant_start: r.grant_start,
            grant_end: r.grant_end,
            decided_by: r.decided_by,
            comment: r.comment,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub protocol: String,
    pub grant_id: Option<i64>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub live: bool,
}

impl SessionView {
    pub fn from_row(r: SessionRow, live: &[LiveInfo]) -> Self {
        let is_live = live.iter().any(|l| l.id == r.id);
        SessionView {
            id: r.id,
            user: r.user,
            target: r.target,
            login: r.login,
            protocol: r.protocol,
            grant_id: r.grant_id,
            started_at: r.started_at,
            ended_at: r.ended_at,
            end_reason: r.end_reason,
            live: is_live,
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorBody {
    pub error: String,
}
