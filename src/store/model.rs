//! Rows the store hands back. Plain data: checks that give them meaning (is this
//! grant usable now? is this user allowed in?) live in `identity` and `access`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::time::UnixTime;

pub type UserId = i64;
pub type RequestId = i64;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
    pub disabled: bool,
    /// For apps that want it in a header (`{email}` in HTTP header templates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What the identity stage needs to check a password and TOTP code.
#[derive(Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: Option<String>,
    pub totp_secret: Option<Vec<u8>>,
}

pub struct NewUser {
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub totp_secret: Option<Vec<u8>>,
    pub ssh_keys: Vec<SshKeyRow>,
}

pub struct SshKeyRow {
    /// `ssh-ed25519 AAAA… comment`, as in authorized_keys.
    pub openssh: String,
    /// SHA256 fingerprint, the lookup key at login.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub protocol: String,
    /// `host:port` of the upstream.
    pub address: String,
    /// The pinned host key in OpenSSH public-key form.
    pub host_key: String,
    pub labels: BTreeMap<String, String>,
    /// Only for `protocol = "postgres"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSettings>,
    /// Only for `protocol = "http"`; `None` means the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// How the gateway reaches a PostgreSQL target. Nothing here is secret: the admin
/// password is named by where to read it, and read only when it is used.
///
/// A target has either an admin role (ephemeral session roles) or a static
/// login; both fields are optional only so that the JSON can hold either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSettings {
    /// The role that creates and drops the ephemeral session roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<SecretSource>,
    /// Used when the client names no database, and for admin connections.
    pub database: Option<String>,
    /// A CA (PEM) that the target's certificate must chain to; TLS is used
    /// upstream exactly when this is set.
    pub tls_ca: Option<PathBuf>,
    /// Log in as this role instead of making session roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_login: Option<StaticLogin>,
}

/// A vaulted upstream login for targets where roles cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticLogin {
    pub user: String,
    pub password: SecretSource,
}

/// How the gateway reaches an HTTP target and what it tells it. Nothing here is
/// secret: a static credential is named by where to read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSettings {
    /// Speak TLS to the target (an `https://` address).
    #[serde(default)]
    pub tls: bool,
    /// A CA (PEM) the target's certificate must chain to; the system's CA
    /// bundle when `None`.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Send the signed assertion header.
    #[serde(default = "yes")]
    pub assertion: bool,
    /// Headers rendered from the caller's identity; `None` means the defaults
    /// (`X-Forwarded-User`, `X-Forwarded-Groups`).
    #[serde(default)]
    pub headers: Option<Vec<HeaderTemplate>>,
    /// Sent as `Authorization`, replacing whatever the client sent.
    #[serde(default)]
    pub credential: Option<StaticCredential>,
    /// Record request and response bodies, at most this many bytes of each per
    /// request; `None` records none.
    #[serde(default)]
    pub record_bodies: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            tls: false,
            tls_ca: None,
            assertion: true,
            headers: None,
            credential: None,
            record_bodies: None,
        }
    }
}

/// `name: value` where the value may hold `{user}`, `{email}`, `{groups}`,
/// `{login}` and `{target}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderTemplate {
    pub name: String,
    pub value: String,
}

/// A vaulted credential the app knows the gateway by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticCredential {
    Basic {
        user: String,
        password: SecretSource,
    },
    Bearer {
        token: SecretSource,
    },
}

/// Where a secret is read from at the moment it is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    pub fn read(&self) -> Result<crate::secret::Secret<String>, String> {
        let value = match self {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|e| format!("environment variable {var}: {e}"))?
            }
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        };
        Ok(crate::secret::Secret::new(value))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Enough approvals: this request is a grant, usable inside its window.
    Approved,
    Denied,
    /// Withdrawn by the requester before a decision.
    Cancelled,
    /// Nobody decided within the request TTL.
    Expired,
    /// Ended early by an approver or admin.
    Revoked,
    /// Ended early by its owner ("I'm done").
    Released,
}

impl RequestState {
    pub const ALL: [RequestState; 7] = [
        RequestState::Pending,
        RequestState::Approved,
        RequestState::Denied,
        RequestState::Cancelled,
        RequestState::Expired,
        RequestState::Revoked,
        RequestState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
            RequestState::Revoked => "revoked",
            RequestState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// A request for access; once approved it is also the grant (same id), usable
/// from `grant_start` to `grant_end`.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequestRow {
    pub id: RequestId,
    pub user_id: UserId,
    pub user: String,
    pub target: String,
    pub login: String,
    pub duration_secs: i64,
    pub reason: String,
    pub ticket: Option<String>,
    pub state: RequestState,
    pub created_at: UnixTime,
    /// A pending request left undecided until then expires.
    pub expires_at: UnixTime,
    pub approvals_required: u32,
    /// Who approved so far, in order.
    pub approved_by: Vec<String>,
    /// Sessions this grant may open; `None` is unlimited.
    pub max_sessions: Option<u32>,
    /// Self-activated without approval; marked in every record.
    pub break_glass: bool,
    pub grant_start: Option<UnixTime>,
    pub grant_end: Option<UnixTime>,
    /// Who denied, cancelled, revoked or released, and their comment.
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

pub struct NewRequest {
    pub user_id: UserId,
    pub target: String,
    pub login: String,
    pub duration_secs: i64,
    pub reason: String,
    pub ticket: Option<String>,
    pub approvals_required: u32,
    pub max_sessions: Option<u32>,
    pub now: UnixTime,
    pub expires_at: UnixTime,
    /// Break-glass requests are approved on creation, by their owner.
    pub break_glass: bool,
}

/// How a request or grant ended early, applied only from the right state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// pending → denied
    Deny,
    /// pending → cancelled
    Cancel,
    /// approved → revoked (grant window cut to now)
    Revoke,
    /// approved → released (grant window cut to now)
    Release,
}

impl Ending {
    pub fn from_state(self) -> RequestState {
        match self {
            Ending::Deny | Ending::Cancel => RequestState::Pending,
            Ending::Revoke | Ending::Release => RequestState::Approved,
        }
    }
    pub fn to_state(self) -> RequestState {
        match self {
            Ending::Deny => RequestState::Denied,
            Ending::Cancel => RequestState::Cancelled,
            Ending::Revoke => RequestState::Revoked,
            Ending::Release => RequestState::Released,
        }
    }
}

/// What one approval did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Counted; more approvals are needed.
    Counted { have: u32, need: u32 },
    /// This approval reached the threshold: the grant starts now.
    Granted,
    /// This approver had approved already; nothing changed.
    Duplicate,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub protocol: String,
    pub grant_id: Option<RequestId>,
    pub started_at: UnixTime,
    pub ended_at: Option<UnixTime>,
    pub end_reason: Option<String>,
    pub recording: String,
}
