//! The proof types of the authorize stage and the wording of its refusals.

use std::fmt;

use crate::identity::Identity;
use crate::policy::Decision;
use crate::store::{AccessRequestRow, RequestId, RequestState, Target};
use crate::time::{self, UnixTime};

/// An approved request inside its time window.
#[derive(Debug, Clone)]
pub struct Grant {
    id: RequestId,
    ends_at: UnixTime,
    break_glass: bool,
}

impl Grant {
    pub(super) fn from_row(row: &AccessRequestRow) -> Grant {
        Grant {
            id: row.id,
            ends_at: row.grant_end.unwrap_or(0),
            break_glass: row.break_glass,
        }
    }
    /// Self-activated in an emergency; every record of its sessions says so.
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }
    pub fn id(&self) -> RequestId {
        self.id
    }
    pub fn ends_at(&self) -> UnixTime {
        self.ends_at
    }
}

pub(super) fn is_active(row: &AccessRequestRow, now: UnixTime) -> bool {
    row.state == RequestState::Approved
        && row.grant_start.is_some_and(|s| s <= now)
        && row.grant_end.is_some_and(|e| now < e)
}

/// Proof that policy allowed this identity to reach this target as this login,
/// with the grant it relied on (none where policy grants standing access).
#[derive(Debug)]
pub struct Authorization {
    identity: Identity,
    target: Target,
    login: String,
    grant: Option<Grant>,
    policy_ids: Vec<String>,
}

impl Authorization {
    pub(super) fn new(
        identity: Identity,
        target: Target,
        login: &str,
        grant: Option<Grant>,
        decision: Decision,
    ) -> Self {
        Authorization {
            identity,
            target,
            login: login.to_string(),
            grant,
            policy_ids: decision.policy_ids,
        }
    }
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn login(&self) -> &str {
        &self.login
    }
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }
    pub fn policy_ids(&self) -> &[String] {
        &self.policy_ids
    }
}

/// Why a connection was refused, in words for the engineer, with the way forward.
#[derive(Debug, Clone)]
pub struct Denial {
    pub reason: String,
    pub hint: String,
}

impl Denial {
    /// Explains a refusal using the user's requests for this exact target and login
    /// (newest first), so "pending" and "expired" read differently from "none".
    pub(super) fn explain(
        requests: &[AccessRequestRow],
        target: &Target,
        login: &str,
        now: UnixTime,
        decision: &Decision,
    ) -> Denial {
        let who = format!("{login}@{}", target.name);
        let request_cmd = super::request_hint(&target.name, login);
        let by = |r: &AccessRequestRow| {
            r.decided_by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        };
        let because = |r: &AccessRequestRow| {
            r.comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        };
        let reason = match requests.first() {
            Some(r) if r.state == RequestState::Pending => {
                return Denial {
                    reason: format!(
                        "access to {who} denied: request {} is pending approval ({}/{} approvals)",
                        r.id,
                        r.approved_by.len(),
                        r.approvals_required
                    ),
                    hint: format!("ask an approver to run: drawbridge approve {}", r.id),
                };
            }
            Some(r) if is_active(r, now) => format!(
                "access to {who} denied by policy ({}) despite grant {}",
                decision.policy_ids.join(", "),
                r.id
            ),
            Some(r)
                if r.grant_end.is_some()
                    && matches!(r.state, RequestState::Approved | RequestState::Expired) =>
            {
                format!(
                    "access to {who} denied: grant {} expired at {}",
                    r.id,
                    time::format(r.grant_end.unwrap_or(0))
                )
            }
            Some(r) if r.state == RequestState::Revoked => {
                format!(
                    "access to {who} denied: grant {} was revoked{}{}",
                    r.id,
                    by(r),
                    because(r)
                )
            }
            Some(r) if r.state == RequestState::Released => {
                format!("access to {who} denied: grant {} was released", r.id)
            }
            Some(r) if r.state == RequestState::Denied => {
                format!(
                    "access to {who} denied: request {} was denied{}{}",
                    r.id,
                    by(r),
                    because(r)
                )
            }
            Some(r) if r.state == RequestState::Expired => {
                format!(
                    "access to {who} denied: request {} expired before anyone decided",
                    r.id
                )
            }
            _ => format!("access to {who} denied: no active grant"),
        };
        Denial {
            reason,
            hint: format!("request access with: {request_cmd}"),
        }
    }
}

impl Denial {
    pub(super) fn sessions_used_up(grant: &AccessRequestRow, used: u32) -> Denial {
        Denial {
            reason: format!(
                "access to {}@{} denied: grant {} allows {} session(s) and {used} were opened",
                grant.login,
                grant.target,
                grant.id,
                grant.max_sessions.unwrap_or(0)
            ),
            hint: format!(
                "request a new grant with: {}",
                super::request_hint(&grant.target, &grant.login)
            ),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.reason, self.hint)
    }
}
