//! Rows the store hands back. Plain data: checks that give them meaning (is this
//! grant usable now? is this user allowed in?) live in `identity` and `access`.

use serde::Serialize;
use std::collections::BTreeMap;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Revoked,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "revoked" => RequestState::Revoked,
            _ => return None,
        })
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
    pub state: RequestState,
    pub created_at: UnixTime,
    pub grant_start: Option<UnixTime>,
    pub grant_end: Option<UnixTime>,
    /// Who approved, denied or revoked, and their comment.
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

pub struct NewRequest {
    pub user_id: UserId,
    pub target: String,
    pub login: String,
    pub duration_secs: i64,
    pub reason: String,
    pub now: UnixTime,
}

/// The outcome of a decision on a pending request, applied atomically.
pub enum RequestDecision {
    Approve { grant_start: UnixTime },
    Deny,
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
