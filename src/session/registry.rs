//! Live sessions, each with a deadline (its grant's end) and a kill switch.
//! `access` (revoke), `identity` (disable) and `drawbridge kill` end sessions here;
//! the relays watch [`LiveSession::ended`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{RequestId, UserId};
use crate::time::UnixTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    GrantExpired(RequestId),
    GrantRevoked(RequestId),
    GrantReleased(RequestId),
    UserDisabled,
    Killed(String),
    Idle(std::time::Duration),
    MaxSession(std::time::Duration),
    Shutdown,
    RecordingFailed,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::GrantExpired(id) => write!(f, "grant {id} expired"),
            EndReason::GrantRevoked(id) => write!(f, "grant {id} was revoked"),
            EndReason::GrantReleased(id) => write!(f, "grant {id} was released"),
            EndReason::UserDisabled => write!(f, "your account was disabled"),
            EndReason::Killed(by) => write!(f, "session terminated by {by}"),
            EndReason::Idle(d) => write!(
                f,
                "session idle for {}, the limit",
                humantime::format_duration(*d)
            ),
            EndReason::MaxSession(d) => write!(
                f,
                "session reached its maximum length of {}",
                humantime::format_duration(*d)
            ),
            EndReason::Shutdown => write!(f, "the gateway is shutting down"),
            EndReason::RecordingFailed => {
                write!(f, "the session could not be recorded (fail-closed)")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveInfo {
    pub id: String,
    pub user: String,
    #[serde(skip)]
    pub user_id: UserId,
    pub target: String,
    pub login: String,
    pub protocol: String,
    pub grant_id: Option<RequestId>,
    pub started_at: UnixTime,
    /// Unix time at which the session's grant ends, if it has one.
    pub ends_at: Option<UnixTime>,
}

struct Entry {
    info: LiveInfo,
    end: watch::Sender<Option<EndReason>>,
}

#[derive(Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A relay's view of its session: resolves once the session must end.
#[derive(Clone)]
pub struct LiveSession {
    deadline: Option<(Instant, RequestId)>,
    end: watch::Receiver<Option<EndReason>>,
}

impl LiveSession {
    /// Whether the session has been ended or its grant's deadline has passed.
    pub fn is_ended(&self) -> bool {
        self.end.borrow().is_some() || self.deadline.is_some_and(|(at, _)| Instant::now() >= at)
    }

    /// When to warn that the grant ends, `before` its end (at once if that
    /// moment has passed), with the grant and its end; `None` without a grant.
    pub fn warning(&self, before: std::time::Duration) -> Option<(Instant, RequestId, Instant)> {
        self.deadline.map(|(end, grant)| {
            let at = end.checked_sub(before).unwrap_or(end).max(Instant::now());
            (at, grant, end)
        })
    }

    /// Waits until the grant's deadline passes or someone ends the session.
    pub async fn ended(&mut self) -> EndReason {
        let deadline = self.deadline;
        let expiry = async move {
            match deadline {
                Some((at, grant)) => {
                    tokio::time::sleep_until(at).await;
                    EndReason::GrantExpired(grant)
                }
                None => std::future::pending().await,
            }
        };
        // Both arms are cancel-safe: sleeping and waiting on a watch channel hold no
        // data that would be lost by dropping the losing future.
        tokio::select! {
            reason = expiry => reason,
            changed = self.end.wait_for(Option::is_some) => match changed {
                Ok(reason) => reason.clone().unwrap_or(EndReason::Shutdown),
                // The registry entry is gone: the gateway is shutting down.
                Err(_) => EndReason::Shutdown,
            },
        }
    }
}

impl Registry {
    pub fn register(&self, info: LiveInfo) -> LiveSession {
        let deadline = info.grant_id.zip(info.ends_at).map(|(grant, ends_at)| {
            let left_ms = (ends_at * 1000 - crate::time::now_ms()).max(0) as u64;
            (
                Instant::now() + std::time::Duration::from_millis(left_ms),
                grant,
            )
        });
        let (tx, rx) = watch::channel(None);
        self.lock().insert(info.id.clone(), Entry { info, end: tx });
        LiveSession { deadline, end: rx }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn list(&self) -> Vec<LiveInfo> {
        let mut v: Vec<_> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Ends every live session matching `which`; returns how many.
    pub fn end_where(&self, which: impl Fn(&LiveInfo) -> bool, reason: EndReason) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for entry in sessions.values().filter(|e| which(&e.info)) {
            // send_replace never fails, even with no receiver left.
            entry.end.send_replace(Some(reason.clone()));
            n += 1;
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are replaced whole; a panic elsewhere cannot leave one half-made.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, grant: Option<RequestId>, ends_at: Option<UnixTime>) -> LiveInfo {
        LiveInfo {
            id: id.into(),
            user: "alice".into(),
            user_id: 1,
            target: "web-1".into(),
            login: "root".into(),
            protocol: "ssh".into(),
            grant_id: grant,
            started_at: 0,
            ends_at,
        }
    }

    #[tokio::test]
    async fn revoking_a_grant_ends_only_its_sessions() {
        let registry = Registry::default();
        let far = crate::time::now() + 3600;
        let mut a = registry.register(info("a", Some(1), Some(far)));
        let mut b = registry.register(info("b", Some(2), Some(far)));
        assert_eq!(
            registry.end_where(|i| i.grant_id == Some(1), EndReason::GrantRevoked(1)),
            1
        );
        assert_eq!(a.ended().await, EndReason::GrantRevoked(1));
        let still_live =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.ended()).await;
        assert!(still_live.is_err(), "session b must stay live");
    }

    #[tokio::test(start_paused = true)]
    async fn the_grant_deadline_ends_the_session() {
        let registry = Registry::default();
        let mut s = registry.register(info("a", Some(7), Some(crate::time::now() + 2)));
        // With time paused, the sleep resolves as soon as the runtime is idle.
        assert_eq!(s.ended().await, EndReason::GrantExpired(7));
    }
}
