//! Stage 2, authorize: policy plus just-in-time grants. Also the life cycle that
//! produces those grants (`lifecycle`): request → approvals → grant → expiry,
//! revoke or release; deny, cancel, TTL expiry; break-glass.
//!
//! Architecture invariants:
//! - An [`Authorization`] (and the [`Grant`] inside it) can only be made by
//!   [`Access::authorize`], after the policy allowed it and the grant was found
//!   active for exactly this user, target and login.
//! - Nobody approves their own request, whatever the policy says: checked here in
//!   code before the policy is even asked.
//! - Every transition emits an [`AccessEvent`] to the configured sinks.

mod events;
mod grant;
mod lifecycle;
#[cfg(test)]
mod tests;

pub use events::{AccessEvent, EventKind, EventSink, Fanout, LogSink};
pub use grant::{Authorization, Denial, Grant};
pub use lifecycle::NewAccess;

use std::sync::Arc;
use std::time::Duration;

use crate::identity::Identity;
use crate::policy::{Action, Decision, Principal, Query, SharedPolicy, TargetRef};
use crate::store::{RequestId, Store, StoreError, Target};
use crate::time::UnixTime;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Denied(Denial),
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    #[error("request {0} not found")]
    NotFound(RequestId),
    #[error("you cannot approve your own request")]
    SelfApproval,
    #[error("{user} is not allowed to {action} request {id} (policy: {policies})")]
    NotAllowed {
        user: String,
        action: &'static str,
        id: RequestId,
        policies: String,
    },
    #[error("request {id} is {state}, not {expected}")]
    WrongState {
        id: RequestId,
        state: &'static str,
        expected: &'static str,
    },
    #[error("port forwarding from {target} to {host}:{port} is not allowed (policy: {policies})")]
    ForwardDenied {
        target: String,
        host: String,
        port: u32,
        policies: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The command an engineer runs to ask for access; quoted in every refusal.
pub fn request_hint(target: &str, login: &str) -> String {
    format!("drawbridge request {target} --login {login} --for 1h --reason \"<why>\"")
}

/// Limits that come from the gateway's config rather than policy.
#[derive(Debug, Clone, Copy)]
pub struct AccessLimits {
    /// Longest grant, whatever a policy says.
    pub max_grant: Duration,
    /// How long a request may stay pending.
    pub request_ttl: Duration,
}

pub struct Access {
    store: Arc<dyn Store>,
    policy: SharedPolicy,
    limits: AccessLimits,
    events: Arc<dyn EventSink>,
}

fn policy_ids(decision: &Decision) -> String {
    if decision.policy_ids.is_empty() {
        "no policy permits it".to_string()
    } else {
        decision.policy_ids.join(", ")
    }
}

impl Access {
    pub fn new(
        store: Arc<dyn Store>,
        policy: SharedPolicy,
        limits: AccessLimits,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Access {
            store,
            policy,
            limits,
            events,
        }
    }

    async fn target(&self, name: &str) -> Result<Target, AccessError> {
        self.store
            .target(name)
            .await?
            .ok_or_else(|| AccessError::UnknownTarget(name.to_string()))
    }

    fn decide(
        &self,
        identity: &Identity,
        action: Action,
        target: &Target,
        login: &str,
        grant_active: bool,
        requester: Option<&str>,
    ) -> Decision {
        self.decide_with(
            identity,
            action,
            target,
            login,
            grant_active,
            requester,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_with(
        &self,
        identity: &Identity,
        action: Action,
        target: &Target,
        login: &str,
        grant_active: bool,
        requester: Option<&str>,
        forward_to: Option<(&str, u32)>,
    ) -> Decision {
        self.policy.current().decide(&Query {
            principal: Principal {
                name: identity.name(),
                groups: &identity.user().groups,
            },
            action,
            target: TargetRef {
                name: &target.name,
                labels: &target.labels,
            },
            login,
            grant_active,
            requester,
            forward_to,
        })
    }

    /// May `identity` connect to `target` as `login` right now?
    pub async fn authorize(
        &self,
        identity: Identity,
        target: &str,
        login: &str,
        now: UnixTime,
    ) -> Result<Authorization, AccessError> {
        let target = self.target(target).await?;
        let requests = self
            .store
            .requests_for(identity.user().id, &target.name, login)
            .await?;
        let active = requests.iter().find(|r| grant::is_active(r, now));
        if let Some(grant) = active
            && let Some(max) = grant.max_sessions
        {
            let used = self.store.count_sessions(grant.id).await?;
            if used >= max {
                return Err(AccessError::Denied(Denial::sessions_used_up(grant, used)));
            }
        }
        let decision = self.decide(
            &identity,
            Action::Connect,
            &target,
            login,
            active.is_some(),
            None,
        );
        if decision.allowed {
            let grant = active.map(Grant::from_row);
            return Ok(Authorization::new(identity, target, login, grant, decision));
        }
        Err(AccessError::Denied(Denial::explain(
            &requests, &target, login, now, &decision,
        )))
    }

    /// May `identity`, inside a session as `login` on `target`, open a
    /// forwarded connection from the target to `host:port` right now? Asked
    /// per forwarded channel, so a grant that ended meanwhile stops new ones.
    /// Returns the ids of the policies that allowed it.
    pub async fn authorize_forward(
        &self,
        identity: &Identity,
        target: &str,
        login: &str,
        (host, port): (&str, u32),
        now: UnixTime,
    ) -> Result<Vec<String>, AccessError> {
        let target = self.target(target).await?;
        let requests = self
            .store
            .requests_for(identity.user().id, &target.name, login)
            .await?;
        let active = requests.iter().any(|r| grant::is_active(r, now));
        let decision = self.decide_with(
            identity,
            Action::Forward,
            &target,
            login,
            active,
            None,
            Some((host, port)),
        );
        if decision.allowed {
            return Ok(decision.policy_ids);
        }
        Err(AccessError::ForwardDenied {
            target: target.name,
            host: host.to_string(),
            port,
            policies: policy_ids(&decision),
        })
    }

    /// Whether an interactive connection should ask for a request: connecting is
    /// refused now for lack of a grant, and the policy lets the user request one.
    pub async fn may_ask_at_connect(
        &self,
        identity: &Identity,
        target: &str,
        login: &str,
        now: UnixTime,
    ) -> bool {
        let Ok(target) = self.target(target).await else {
            return false;
        };
        let Ok(requests) = self
            .store
            .requests_for(identity.user().id, &target.name, login)
            .await
        else {
            return false;
        };
        if requests.iter().any(|r| grant::is_active(r, now)) {
            return false;
        }
        let connect = self.decide(identity, Action::Connect, &target, login, false, None);
        let request = self.decide(identity, Action::Request, &target, login, false, None);
        !connect.allowed && request.allowed
    }

    /// Whether policy asks for a second factor before `identity` connects to
    /// `target` as `login` now (`@mfa("required")` on the permitting policy).
    /// False when the connection would be refused anyway: the refusal explains.
    pub async fn connect_requires_mfa(
        &self,
        identity: &Identity,
        target: &str,
        login: &str,
        now: UnixTime,
    ) -> bool {
        let target = match self.target(target).await {
            Ok(target) => target,
            Err(AccessError::UnknownTarget(_)) => return false,
            Err(_) => return true,
        };
        // A store failure asks for the second factor: fail closed.
        let Ok(requests) = self
            .store
            .requests_for(identity.user().id, &target.name, login)
            .await
        else {
            return true;
        };
        let active = requests.iter().any(|r| grant::is_active(r, now));
        let decision = self.decide(identity, Action::Connect, &target, login, active, None);
        decision.allowed && decision.requirements.mfa
    }

    /// The login of `identity`'s active grant on `target`, for clients that name
    /// only the target (an HTTP app, `psql user=TARGET`).
    pub async fn granted_login(
        &self,
        identity: &Identity,
        target: &str,
        now: UnixTime,
    ) -> Option<String> {
        let approved = self
            .store
            .list_requests(Some(crate::store::RequestState::Approved))
            .await
            .ok()?;
        approved
            .into_iter()
            .find(|r| {
                r.user_id == identity.user().id && r.target == target && grant::is_active(r, now)
            })
            .map(|r| r.login)
    }

    /// Whether a grant a live session relies on is still usable.
    pub async fn grant_active(&self, id: RequestId, now: UnixTime) -> Result<bool, StoreError> {
        Ok(self
            .store
            .request(id)
            .await?
            .is_some_and(|r| grant::is_active(&r, now)))
    }
}
