//! What happened to a request or grant, for everyone who must hear of it: the
//! audit log, webhooks, the gateway log. Sinks must not block the workflow.

use std::sync::Arc;

use serde::Serialize;

use crate::store::AccessRequestRow;
use crate::time::UnixTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RequestCreated,
    /// An approval was counted but more are needed.
    ApprovalCounted,
    /// The threshold was reached: the grant has started.
    Approved,
    Denied,
    Cancelled,
    /// A pending request's TTL passed, or a grant's time ran out.
    Expired,
    Revoked,
    Released,
    BreakGlass,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RequestCreated => "request_created",
            EventKind::ApprovalCounted => "approval_counted",
            EventKind::Approved => "approved",
            EventKind::Denied => "denied",
            EventKind::Cancelled => "cancelled",
            EventKind::Expired => "expired",
            EventKind::Revoked => "revoked",
            EventKind::Released => "released",
            EventKind::BreakGlass => "break_glass",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessEvent {
    pub kind: EventKind,
    /// Who caused it ("system" for expiry).
    pub actor: String,
    pub at: UnixTime,
    pub request: AccessRequestRow,
    /// Policy ids that decided, where a decision was involved.
    pub policy_ids: Vec<String>,
}

impl AccessEvent {
    /// One line for people (Slack, logs).
    pub fn summary(&self) -> String {
        let r = &self.request;
        let what = format!("{}@{} for {} (request {})", r.login, r.target, r.user, r.id);
        match self.kind {
            EventKind::RequestCreated => format!(
                "{} requests {what}, {} approval(s) needed: {}",
                r.user, r.approvals_required, r.reason
            ),
            EventKind::ApprovalCounted => format!(
                "{} approved {what}: {}/{} approvals",
                self.actor,
                r.approved_by.len(),
                r.approvals_required
            ),
            EventKind::Approved => {
                format!("{what} granted ({} approved)", r.approved_by.join(", "))
            }
            EventKind::Denied => format!("{} denied {what}", self.actor),
            EventKind::Cancelled => format!("{} cancelled {what}", self.actor),
            EventKind::Expired => format!("{what} expired"),
            EventKind::Revoked => format!("{} revoked {what}", self.actor),
            EventKind::Released => format!("{} released {what}", self.actor),
            EventKind::BreakGlass => format!("BREAK-GLASS: {} opened {what}: {}", r.user, r.reason),
        }
    }
}

/// Receives events. `emit` must return at once (queue, don't send).
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &AccessEvent);
}

/// Writes every event to the gateway log.
pub struct LogSink;

impl EventSink for LogSink {
    fn emit(&self, event: &AccessEvent) {
        tracing::info!(
            kind = event.kind.as_str(),
            actor = event.actor,
            request = event.request.id,
            user = event.request.user,
            target = event.request.target,
            login = event.request.login,
            break_glass = event.request.break_glass,
            policies = ?event.policy_ids,
            "{}",
            event.summary()
        );
    }
}

/// Sends each event to every sink in turn.
pub struct Fanout(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&self, event: &AccessEvent) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// Every transition goes to the tamper-evident audit log as `access.<kind>`.
impl EventSink for crate::recording::AuditLog {
    fn emit(&self, event: &AccessEvent) {
        let r = &event.request;
        let details = serde_json::json!({
            "summary": event.summary(),
            "target": r.target,
            "login": r.login,
            "user": r.user,
            "state": r.state.as_str(),
            "reason": r.reason,
            "ticket": r.ticket,
            "comment": r.comment,
            "approved_by": r.approved_by,
            "break_glass": r.break_glass,
            "grant_end": r.grant_end,
            "policies": event.policy_ids,
        });
        let kind = format!("access.{}", event.kind.as_str());
        let subject = format!("request {}", r.id);
        if let Err(e) = self.event(&kind, &event.actor, &subject, &details.to_string()) {
            tracing::error!(error = %e, kind, "cannot write the audit record");
        }
    }
}
