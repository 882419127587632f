//! Idle timeout and maximum session length: one small task per session that
//! ends it through the registry, like any other end (revoke, kill, expiry),
//! so every protocol's relay stops and tells the client why.
//!
//! Relays call [`Activity::touch`] for every chunk they pass; that is one
//! relaxed atomic store, cheap enough for the bulk-data path. A relay that knows
//! a statement is running (PostgreSQL) marks the session busy: waiting for a
//! long query is not idleness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{EndReason, SessionHandle};

/// When the session last carried a byte, in milliseconds since it started.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the target is working on something the client waits for.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Limits from the config; a zero duration turns that limit off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_session: Duration,
}

/// Ends `session` when it has been idle for `limits.idle_timeout` or has lasted
/// `limits.max_session`; returns early when the session ends for another reason.
pub async fn enforce_limits(session: SessionHandle, activity: Arc<Activity>, limits: Limits) {
    let mut live = session.live();
    let max_at = (!limits.max_session.is_zero()).then(|| activity.start + limits.max_session);
    loop {
        let idle_at =
            (!limits.idle_timeout.is_zero()).then(|| activity.last() + limits.idle_timeout);
        let next = match (idle_at, max_at) {
            (None, None) => return,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
        };
        // Both arms are cancel-safe: a sleep and a watch wait hold no data.
        tokio::select! {
            _ = live.ended() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now = Instant::now();
        if max_at.is_some_and(|at| now >= at) {
            session.end(EndReason::MaxSession(limits.max_session));
            return;
        }
        // Activity may have moved the idle deadline while we slept: re-check.
        if idle_at.is_some() && now >= activity.last() + limits.idle_timeout {
            if activity.busy.load(Ordering::Relaxed) {
                // A running statement: count it as activity and look again later.
                activity.touch();
                continue;
            }
            session.end(EndReason::Idle(limits.idle_timeout));
            return;
        }
    }
}
