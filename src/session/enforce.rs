//! Re-checks live sessions whenever the store's revision moves, so a revoke or a
//! user disable made by another process (the local admin CLI, another gateway)
//! reaches the sessions it concerns within one interval.
//! Revokes made through this gateway's API end sessions directly and do not wait.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::time;

use super::{EndReason, Registry};

pub async fn enforce(store: Arc<dyn Store>, registry: Registry, interval: Duration) {
    let mut seen = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let revision = match store.revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read store revision");
                continue;
            }
        };
        if seen == Some(revision) {
            continue;
        }
        seen = Some(revision);
        for info in registry.list() {
            if let Some(reason) = still_allowed(store.as_ref(), &info).await {
                registry.end_where(|i| i.id == info.id, reason);
            }
        }
    }
}

/// `Some(reason)` when the session must end. A store error keeps the session
/// (the next revision change re-checks); ending sessions on a flaky read would
/// let a database hiccup cut every engineer off.
async fn still_allowed(store: &dyn Store, info: &super::LiveInfo) -> Option<EndReason> {
    match store.user_by_id(info.user_id).await {
        Ok(Some(user)) if !user.disabled => {}
        Ok(_) => return Some(EndReason::UserDisabled),
        Err(_) => return None,
    }
    let grant = info.grant_id?;
    match store.request(grant).await {
        Ok(Some(r)) if r.state == crate::store::RequestState::Revoked => {
            Some(EndReason::GrantRevoked(grant))
        }
        Ok(Some(r)) if r.state == crate::store::RequestState::Released => {
            Some(EndReason::GrantReleased(grant))
        }
        Ok(Some(r)) if r.grant_end.is_some_and(|end| end <= time::now()) => {
            Some(EndReason::GrantExpired(grant))
        }
        Ok(None) => Some(EndReason::GrantRevoked(grant)),
        _ => None,
    }
}
