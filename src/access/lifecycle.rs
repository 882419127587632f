//! The life of a request: filed (or break-glass activated), approved by enough
//! people other than the requester, or denied, cancelled, expired; as a grant,
//! ended by expiry, revoke or release. Each step is one atomic store change
//! followed by an [`AccessEvent`].

use std::time::Duration;

use super::{Access, AccessError, AccessEvent, EventKind, policy_ids};
use crate::identity::Identity;
use crate::policy::Action;
use crate::store::{AccessRequestRow, ApprovalOutcome, Ending, NewRequest, RequestId, StoreError};
use crate::time::UnixTime;

/// What an engineer asks for.
pub struct NewAccess<'a> {
    pub target: &'a str,
    pub login: &'a str,
    pub duration: Duration,
    pub reason: &'a str,
    pub ticket: Option<&'a str>,
}

impl Access {
    fn emit(
        &self,
        kind: EventKind,
        actor: &str,
        request: &AccessRequestRow,
        policies: Vec<String>,
        now: UnixTime,
    ) {
        self.events.emit(&AccessEvent {
            kind,
            actor: actor.to_string(),
            at: now,
            request: request.clone(),
            policy_ids: policies,
        });
    }

    fn validate(&self, ask: &NewAccess<'_>, cap: Option<Duration>) -> Result<(), AccessError> {
        if ask.reason.trim().is_empty() {
            return Err(AccessError::Invalid("a reason is required".into()));
        }
        if ask.login.is_empty() || ask.login.contains(['@', ' ', '\n']) {
            return Err(AccessError::Invalid(format!(
                "invalid login {:?}",
                ask.login
            )));
        }
        // Above the cap is refused, not clamped: an engineer who asked for 8h and
        // silently got 1h would be cut off mid-task.
        let cap = cap.map_or(self.limits.max_grant, |c| c.min(self.limits.max_grant));
        if ask.duration.is_zero() || ask.duration > cap {
            return Err(AccessError::Invalid(format!(
                "duration must be between 1s and {} for {}@{}",
                humantime::format_duration(cap),
                ask.login,
                ask.target
            )));
        }
        Ok(())
    }

    pub async fn request(
        &self,
        identity: &Identity,
        ask: NewAccess<'_>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let target = self.target(ask.target).await?;
        let decision = self.decide(identity, Action::Request, &target, ask.login, false, None);
        if !decision.allowed {
            return Err(AccessError::Invalid(format!(
                "policy does not let {} request {}@{} ({})",
                identity.name(),
                ask.login,
                target.name,
                policy_ids(&decision)
            )));
        }
        let needs = &decision.requirements;
        self.validate(&ask, needs.max_duration)?;
        let row = self
            .store
            .create_request(NewRequest {
                user_id: identity.user().id,
                target: target.name,
                login: ask.login.to_string(),
                duration_secs: ask.duration.as_secs() as i64,
                reason: ask.reason.trim().to_string(),
                ticket: ask.ticket.map(str::to_string),
                approvals_required: needs.approvals.max(1),
                max_sessions: needs.max_sessions,
                now,
                expires_at: now + self.limits.request_ttl.as_secs() as i64,
                break_glass: false,
            })
            .await?;
        self.emit(
            EventKind::RequestCreated,
            identity.name(),
            &row,
            decision.policy_ids,
            now,
        );
        Ok(row)
    }

    /// An emergency grant without approval, for members of the break-glass
    /// group (policy action `break_glass`), capped by policy (default 30 min).
    pub async fn break_glass(
        &self,
        identity: &Identity,
        ask: NewAccess<'_>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let target = self.target(ask.target).await?;
        let decision = self.decide(
            identity,
            Action::BreakGlass,
            &target,
            ask.login,
            false,
            None,
        );
        if !decision.allowed {
            return Err(AccessError::Invalid(format!(
                "policy does not let {} break glass on {}@{} ({})",
                identity.name(),
                ask.login,
                target.name,
                policy_ids(&decision)
            )));
        }
        let cap = decision
            .requirements
            .max_duration
            .unwrap_or(Duration::from_secs(30 * 60));
        self.validate(&ask, Some(cap))?;
        let row = self
            .store
            .create_request(NewRequest {
                user_id: identity.user().id,
                target: target.name,
                login: ask.login.to_string(),
                duration_secs: ask.duration.as_secs() as i64,
                reason: ask.reason.trim().to_string(),
                ticket: ask.ticket.map(str::to_string),
                approvals_required: 0,
                max_sessions: decision.requirements.max_sessions,
                now,
                expires_at: now,
                break_glass: true,
            })
            .await?;
        self.emit(
            EventKind::BreakGlass,
            identity.name(),
            &row,
            decision.policy_ids,
            now,
        );
        Ok(row)
    }

    async fn existing(&self, id: RequestId) -> Result<AccessRequestRow, AccessError> {
        self.store
            .request(id)
            .await?
            .ok_or(AccessError::NotFound(id))
    }

    /// Checks that `approver` may decide on `request`: never the requester, and
    /// only where the policy's `approve` action allows it. Returns the policy ids.
    async fn check_approver(
        &self,
        approver: &Identity,
        request: &AccessRequestRow,
        action: &'static str,
    ) -> Result<Vec<String>, AccessError> {
        if approver.user().id == request.user_id {
            return Err(AccessError::SelfApproval);
        }
        let target = self.target(&request.target).await?;
        let decision = self.decide(
            approver,
            Action::Approve,
            &target,
            &request.login,
            false,
            Some(&request.user),
        );
        if decision.allowed {
            Ok(decision.policy_ids)
        } else {
            Err(AccessError::NotAllowed {
                user: approver.name().to_string(),
                action,
                id: request.id,
                policies: policy_ids(&decision),
            })
        }
    }

    /// Maps a lost race (the row changed between our read and our write) to the
    /// state the request is in now.
    async fn stale(&self, id: RequestId, expected: &'static str) -> AccessError {
        let state = match self.store.request(id).await {
            Ok(Some(r)) => r.state.as_str(),
            _ => "gone",
        };
        AccessError::WrongState {
            id,
            state,
            expected,
        }
    }

    fn expect_state(
        request: &AccessRequestRow,
        state: crate::store::RequestState,
    ) -> Result<(), AccessError> {
        if request.state == state {
            Ok(())
        } else {
            Err(AccessError::WrongState {
                id: request.id,
                state: request.state.as_str(),
                expected: state.as_str(),
            })
        }
    }

    /// Counts `approver`'s approval; the grant starts when the policy's threshold
    /// is reached. Approving twice counts once.
    pub async fn approve(
        &self,
        approver: &Identity,
        id: RequestId,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<(AccessRequestRow, ApprovalOutcome), AccessError> {
        let request = self.existing(id).await?;
        Self::expect_state(&request, crate::store::RequestState::Pending)?;
        let policies = self.check_approver(approver, &request, "approve").await?;
        let (row, outcome) = match self
            .store
            .approve_request(id, approver.name(), comment, now)
            .await
        {
            Err(StoreError::Stale(_)) => return Err(self.stale(id, "pending").await),
            other => other?,
        };
        match outcome {
            ApprovalOutcome::Granted => {
                self.emit(EventKind::Approved, approver.name(), &row, policies, now)
            }
            ApprovalOutcome::Counted { .. } => self.emit(
                EventKind::ApprovalCounted,
                approver.name(),
                &row,
                policies,
                now,
            ),
            ApprovalOutcome::Duplicate => {}
        }
        Ok((row, outcome))
    }

    /// Denies a pending request; a denial must say why.
    pub async fn deny(
        &self,
        approver: &Identity,
        id: RequestId,
        comment: &str,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        if comment.trim().is_empty() {
            return Err(AccessError::Invalid(
                "a denial needs a comment saying why".into(),
            ));
        }
        let request = self.existing(id).await?;
        Self::expect_state(&request, crate::store::RequestState::Pending)?;
        let policies = self.check_approver(approver, &request, "deny").await?;
        let row = self
            .end(id, Ending::Deny, approver, Some(comment), now)
            .await?;
        self.emit(EventKind::Denied, approver.name(), &row, policies, now);
        Ok(row)
    }

    /// Withdraws one's own pending request.
    pub async fn cancel(
        &self,
        by: &Identity,
        id: RequestId,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let refusal = "only the requester may cancel";
        self.end_own(
            by,
            id,
            (Ending::Cancel, "cancel", EventKind::Cancelled, refusal),
            now,
        )
        .await
    }

    /// Ends one's own grant early ("I'm done").
    pub async fn release(
        &self,
        by: &Identity,
        id: RequestId,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let refusal = "only the grant's owner may release it; approvers revoke";
        self.end_own(
            by,
            id,
            (Ending::Release, "release", EventKind::Released, refusal),
            now,
        )
        .await
    }

    /// Cancel and release: only the request's owner may.
    async fn end_own(
        &self,
        by: &Identity,
        id: RequestId,
        (ending, action, kind, refusal): (Ending, &'static str, EventKind, &str),
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let request = self.existing(id).await?;
        if by.user().id != request.user_id {
            return Err(AccessError::NotAllowed {
                user: by.name().to_string(),
                action,
                id,
                policies: refusal.into(),
            });
        }
        let row = self.end(id, ending, by, None, now).await?;
        self.emit(kind, by.name(), &row, vec![], now);
        Ok(row)
    }

    /// Ends a grant now. Admins, and those who may approve it, may revoke.
    pub async fn revoke(
        &self,
        by: &Identity,
        id: RequestId,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        let request = self.existing(id).await?;
        let policies = if by.user().admin {
            vec![]
        } else if by.user().id == request.user_id {
            return Err(AccessError::NotAllowed {
                user: by.name().to_string(),
                action: "revoke",
                id,
                policies: "use `drawbridge release` to end your own grant".into(),
            });
        } else {
            self.check_approver(by, &request, "revoke").await?
        };
        let row = self.end(id, Ending::Revoke, by, comment, now).await?;
        self.emit(EventKind::Revoked, by.name(), &row, policies, now);
        Ok(row)
    }

    async fn end(
        &self,
        id: RequestId,
        ending: Ending,
        by: &Identity,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow, AccessError> {
        match self
            .store
            .end_request(id, ending, by.name(), comment, now)
            .await
        {
            Err(StoreError::Stale(_)) => Err(self.stale(id, ending.from_state().as_str()).await),
            other => Ok(other?),
        }
    }

    /// The enabled users other than the requester whom policy lets approve
    /// `request`: who is asked to decide.
    pub async fn eligible_approvers(
        &self,
        request: &AccessRequestRow,
    ) -> Result<Vec<String>, AccessError> {
        let target = self.target(&request.target).await?;
        let mut names = Vec::new();
        for user in self.store.list_users().await? {
            if user.disabled || user.id == request.user_id {
                continue;
            }
            let decision = self.policy.current().decide(&crate::policy::Query {
                principal: crate::policy::Principal {
                    name: &user.name,
                    groups: &user.groups,
                },
                action: Action::Approve,
                target: crate::policy::TargetRef {
                    name: &target.name,
                    labels: &target.labels,
                },
                login: &request.login,
                grant_active: false,
                requester: Some(&request.user),
                forward_to: None,
            });
            if decision.allowed {
                names.push(user.name);
            }
        }
        Ok(names)
    }

    /// Expires pending requests past their TTL and grants past their end.
    pub async fn expire(&self, now: UnixTime) -> Result<usize, AccessError> {
        let expired = self.store.expire_requests(now).await?;
        for row in &expired {
            self.emit(EventKind::Expired, "system", row, vec![], now);
        }
        Ok(expired.len())
    }
}
