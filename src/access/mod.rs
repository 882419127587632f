//! Stage 2, authorize: policy plus just-in-time grants. Also the request → approve
//! → grant → revoke life cycle that produces those grants.
//!
//! Architecture invariants:
//! - An [`Authorization`] (and the [`Grant`] inside it) can only be made by
//!   [`Access::authorize`], after the policy allowed it and the grant was found
//!   active for exactly this user, target and login.
//! - Nobody approves their own request, whatever the policy says: checked here in
//!   code before the policy is even asked.

mod grant;

pub use grant::{Authorization, Denial, Grant};

use std::sync::Arc;
use std::time::Duration;

use crate::identity::Identity;
use crate::policy::{Action, Decision, PolicyEngine, Principal, Query, TargetRef};
use crate::store::{
    AccessRequestRow, NewRequest, RequestDecision, RequestId, RequestState, Store, StoreError,
    Target,
};
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

/// What the caller established before asking the policy (see [`Query`]).
#[derive(Default, Clone, Copy)]
struct Facts<'a> {
    grant_active: bool,
    requester: Option<&'a str>,
    forward_to: Option<(&'a str, u32)>,
}

pub struct Access {
    store: Arc<dyn Store>,
    policy: Arc<PolicyEngine>,
    max_grant: Duration,
}

fn policy_ids(decision: &Decision) -> String {
    if decision.policy_ids.is_empty() {
        "no policy permits it".to_string()
    } else {
        decision.policy_ids.join(", ")
    }
}

impl Access {
    pub fn new(store: Arc<dyn Store>, policy: Arc<PolicyEngine>, max_grant: Duration) -> Self {
        Access {
            store,
            policy,
            max_grant,
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
        facts: Facts<'_>,
    ) -> Decision {
        let Facts {
            grant_active,
            requester,
            forward_to,
        } = facts;
        self.policy.decide(&Query {
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
        let decision = self.decide(
            &identity,
            Action::Connect,
            &target,
            login,
            Facts {
                grant_active: active.is_some(),
                ..Facts::default()
            },
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
        let decision = self.decide(
            identity,
            Action::Forward,
            &target,
            login,
            Facts {
                grant_active: active,
                forward_to: Some((host, port)),
                ..Facts::default()
            },
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

    pub async fn request(
        &self,
        identity: &Identity,
        target: &str,
        login: &str,
        duration: Duration,
        reason: &str,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        if reason.trim().is_empty() {
            return Err(AccessError::Invalid("a reason is required".into()));
        }
        if login.is_empty() || login.contains(['@', ' ', '\n']) {
            return Err(AccessError::Invalid(format!("invalid login {login:?}")));
        }
        if duration.is_zero() || duration > self.max_grant {
            return Err(AccessError::Invalid(format!(
                "duration must be between 1s and {}",
                humantime::format_duration(self.max_grant)
            )));
        }
        let target = self.target(target).await?;
        let decision = self.decide(identity, Action::Request, &target, login, Facts::default());
        if !decision.allowed {
            return Err(AccessError::Invalid(format!(
                "policy does not let {} request {}@{} ({})",
                identity.name(),
                login,
                target.name,
                policy_ids(&decision)
            )));
        }
        Ok(self
            .store
            .create_request(NewRequest {
                user_id: identity.user().id,
                target: target.name,
                login: login.to_string(),
                duration_secs: duration.as_secs() as i64,
                reason: reason.trim().to_string(),
                now,
            })
            .await?)
    }

    async fn pending(&self, id: RequestId) -> Result<AccessRequestRow, AccessError> {
        let request = self
            .store
            .request(id)
            .await?
            .ok_or(AccessError::NotFound(id))?;
        if request.state != RequestState::Pending {
            return Err(AccessError::WrongState {
                id,
                state: request.state.as_str(),
                expected: "pending",
            });
        }
        Ok(request)
    }

    /// Checks that `approver` may decide on `request`: never the requester, and
    /// only where the policy's `approve` action allows it.
    async fn check_approver(
        &self,
        approver: &Identity,
        request: &AccessRequestRow,
        action: &'static str,
    ) -> Result<(), AccessError> {
        if approver.user().id == request.user_id {
            return Err(AccessError::SelfApproval);
        }
        let target = self.target(&request.target).await?;
        let decision = self.decide(
            approver,
            Action::Approve,
            &target,
            &request.login,
            Facts {
                requester: Some(&request.user),
                ..Facts::default()
            },
        );
        if decision.allowed {
            Ok(())
        } else {
            Err(AccessError::NotAllowed {
                user: approver.name().to_string(),
                action,
                id: request.id,
                policies: policy_ids(&decision),
            })
        }
    }

    pub async fn approve(
        &self,
        approver: &Identity,
        id: RequestId,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let request = self.pending(id).await?;
        self.check_approver(approver, &request, "approve").await?;
        self.decide_stale_safe(
            id,
            approver,
            comment,
            RequestDecision::Approve { grant_start: now },
        )
        .await
    }

    pub async fn deny(
        &self,
        approver: &Identity,
        id: RequestId,
        comment: Option<&str>,
    ) -> Result<AccessRequestRow, AccessError> {
        let request = self.pending(id).await?;
        self.check_approver(approver, &request, "deny").await?;
        self.decide_stale_safe(id, approver, comment, RequestDecision::Deny)
            .await
    }

    async fn decide_stale_safe(
        &self,
        id: RequestId,
        approver: &Identity,
        comment: Option<&str>,
        decision: RequestDecision,
    ) -> Result<AccessRequestRow, AccessError> {
        match self
            .store
            .decide_request(id, approver.name(), comment, decision)
            .await
        {
            // Someone else decided between our read and our write.
            Err(StoreError::Stale(_)) => {
                let state = self
                    .store
                    .request(id)
                    .await?
                    .map_or("gone", |r| r.state.as_str());
                Err(AccessError::WrongState {
                    id,
                    state,
                    expected: "pending",
                })
            }
            other => Ok(other?),
        }
    }

    /// Ends a grant now. The grant's owner may end their own; otherwise the same
    /// people who may approve it.
    pub async fn revoke(
        &self,
        by: &Identity,
        id: RequestId,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let request = self
            .store
            .request(id)
            .await?
            .ok_or(AccessError::NotFound(id))?;
        if by.user().id != request.user_id && !by.user().admin {
            self.check_approver(by, &request, "revoke").await?;
        }
        match self.store.revoke_grant(id, by.name(), comment, now).await {
            Err(StoreError::Stale(_)) => Err(AccessError::WrongState {
                id,
                state: request.state.as_str(),
                expected: "approved",
            }),
            other => Ok(other?),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::SshCertificateAuthority;
    use crate::store::{NewUser, SqliteStore};
    use std::collections::BTreeMap;

    struct Fixture {
        access: Access,
        alice: Identity,
        bob: Identity,
    }

    async fn user(store: &Arc<SqliteStore>, name: &str, groups: &[&str]) -> Identity {
        let secret = crate::identity::TotpSecret::generate().expect("secret");
        let password = crate::secret::Secret::new("pw".to_string());
        store
            .create_user(NewUser {
                name: name.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                admin: false,
                password_hash: Some(crate::identity::hash_password(&password).expect("hash")),
                totp_secret: Some(secret.bytes().to_vec()),
                ssh_keys: vec![],
            })
            .await
            .expect("user");
        let code = crate::identity::totp_code(secret.bytes(), 1_000_000);
        crate::identity::by_password_totp(store.as_ref(), name, &password, &code, 1_000_000)
            .await
            .expect("identity")
    }

    async fn fixture() -> Fixture {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        store
            .create_target(Target {
                name: "web-1".into(),
                protocol: "ssh".into(),
                address: "127.0.0.1:22".into(),
                host_key: String::new(),
                labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            })
            .await
            .expect("target");
        let alice = user(&store, "alice", &["dev"]).await;
        let bob = user(&store, "bob", &["approvers"]).await;
        let access = Access::new(
            store,
            Arc::new(PolicyEngine::builtin()),
            Duration::from_secs(3600),
        );
        Fixture { access, alice, bob }
    }

    #[tokio::test]
    async fn a_grant_opens_its_window_only_and_mints_a_short_certificate() {
        let f = fixture().await;
        let now = 2_000_000;
        let r = f
            .access
            .request(
                &f.alice,
                "web-1",
                "root",
                Duration::from_secs(600),
                "INC-1",
                now,
            )
            .await
            .expect("request");
        assert!(
            f.access
                .authorize(f.alice.clone(), "web-1", "root", now)
                .await
                .is_err()
        );
        f.access
            .approve(&f.bob, r.id, None, now + 10)
            .await
            .expect("approve");
        // The clock starts at approval, not at request.
        let auth = f
            .access
            .authorize(f.alice.clone(), "web-1", "root", now + 609)
            .await
            .expect("inside the window");
        assert_eq!(auth.grant().map(|g| g.id()), Some(r.id));
        assert!(
            f.access
                .authorize(f.alice.clone(), "web-1", "root", now + 610)
                .await
                .is_err()
        );

        let ca_key = crate::keys::new_ed25519().expect("ca");
        let ca_public = ca_key.public_key().key_data().clone();
        let ca = SshCertificateAuthority::new(ca_key, Duration::from_secs(300));
        let cred = ca.mint(&auth, "s-1", now + 609).expect("mint");
        let cert = &cred.certificate;
        assert_eq!(cert.valid_principals(), ["root".to_string()]);
        assert_eq!(cert.key_id(), "drawbridge session=s-1 user=alice");
        assert!(cert.valid_before() - cert.valid_after() <= 330);
        assert_eq!(cert.signature_key(), &ca_public);
        assert_eq!(cert.public_key(), cred.key.public_key().key_data());
    }

    #[tokio::test]
    async fn refusals_name_the_reason() {
        let f = fixture().await;
        let now = 2_000_000;
        let err = f
            .access
            .authorize(f.alice.clone(), "web-1", "root", now)
            .await
            .expect_err("no grant");
        assert!(err.to_string().contains("no active grant"), "{err}");
        let r = f
            .access
            .request(&f.alice, "web-1", "root", Duration::from_secs(60), "x", now)
            .await
            .expect("request");
        let err = f
            .access
            .authorize(f.alice.clone(), "web-1", "root", now)
            .await
            .expect_err("pending");
        assert!(err.to_string().contains("pending approval"), "{err}");
        assert!(matches!(
            f.access.approve(&f.alice, r.id, None, now).await,
            Err(AccessError::SelfApproval)
        ));
        f.access
            .approve(&f.bob, r.id, None, now)
            .await
            .expect("approve");
        assert!(matches!(
            f.access.approve(&f.bob, r.id, None, now).await,
            Err(AccessError::WrongState { .. })
        ));
        let err = f
            .access
            .authorize(f.alice.clone(), "web-1", "root", now + 61)
            .await
            .expect_err("expired");
        assert!(err.to_string().contains("expired at"), "{err}");
        assert!(matches!(
            f.access
                .authorize(f.alice.clone(), "db-9", "root", now)
                .await,
            Err(AccessError::UnknownTarget(_))
        ));
    }

    #[tokio::test]
    async fn requests_need_a_reason_and_a_bounded_duration() {
        let f = fixture().await;
        for (duration, reason) in [(60, " "), (0, "x"), (3601, "x")] {
            let r = f
                .access
                .request(
                    &f.alice,
                    "web-1",
                    "root",
                    Duration::from_secs(duration),
                    reason,
                    1,
                )
                .await;
            assert!(
                matches!(r, Err(AccessError::Invalid(_))),
                "{duration} {reason:?}"
            );
        }
    }
}
