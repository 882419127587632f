//! Durable state behind one trait, so callers never know which database holds it.
//! SQLite is the embedded default; a PostgreSQL implementation for several gateways
//! sharing one deployment plugs in behind the same [`Store`] trait.
//!
//! Architecture invariant: the store enforces uniqueness and atomic state changes
//! (one decision per pending request, one use per TOTP step) but no policy; who may
//! do what is decided in `access` and `policy`.

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::SqliteStore;

use crate::time::UnixTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The row changed under us (e.g. a request was decided by someone else first).
    #[error("{0}")]
    Stale(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // Users and their credentials.
    async fn create_user(&self, user: NewUser) -> Result<User>;
    async fn user_by_name(&self, name: &str) -> Result<Option<UserCredentials>>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>>;
    async fn user_by_key_fingerprint(&self, fingerprint: &str) -> Result<Option<User>>;
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Disabling also deletes the user's tokens, cancels their pending requests
    /// and revokes their grants, in one transaction.
    async fn set_user_disabled(&self, name: &str, disabled: bool, now: UnixTime) -> Result<()>;
    /// Records that `step` of the user's TOTP was used; false when it (or a later
    /// step) was used already, which is how a replayed code is refused.
    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool>;

    // Login tokens (only their SHA-256 is stored).
    async fn insert_token(&self, hash: &[u8], user: UserId, expires_at: UnixTime) -> Result<()>;
    async fn user_by_token(&self, hash: &[u8], now: UnixTime) -> Result<Option<User>>;

    // Targets.
    async fn create_target(&self, target: Target) -> Result<()>;
    async fn target(&self, name: &str) -> Result<Option<Target>>;
    async fn list_targets(&self) -> Result<Vec<Target>>;

    // Requests and grants.
    async fn create_request(&self, request: NewRequest) -> Result<AccessRequestRow>;
    async fn request(&self, id: RequestId) -> Result<Option<AccessRequestRow>>;
    async fn list_requests(&self, state: Option<RequestState>) -> Result<Vec<AccessRequestRow>>;
    /// Requests of `user` for exactly this target and login, newest first.
    async fn requests_for(
        &self,
        user: UserId,
        target: &str,
        login: &str,
    ) -> Result<Vec<AccessRequestRow>>;
    /// Counts one approval by `approver` (once per person) and, when the
    /// threshold is reached, starts the grant at `now`. Atomic: of concurrent
    /// approvals each counts once and exactly one starts the grant. `Stale` when
    /// the request is no longer pending or has expired.
    async fn approve_request(
        &self,
        id: RequestId,
        approver: &str,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<(AccessRequestRow, ApprovalOutcome)>;
    /// Moves a request from `ending.from_state()` to `ending.to_state()`
    /// (`Stale` otherwise); revoke and release also cut the grant window to now.
    async fn end_request(
        &self,
        id: RequestId,
        ending: Ending,
        by: &str,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow>;
    /// Marks pending requests whose TTL passed as expired; returns them.
    async fn expire_requests(&self, now: UnixTime) -> Result<Vec<AccessRequestRow>>;
    /// Sessions opened so far under a grant.
    async fn count_sessions(&self, grant: RequestId) -> Result<u32>;

    // Sessions.
    async fn insert_session(&self, session: &SessionRow) -> Result<()>;
    async fn end_session(&self, id: &str, at: UnixTime, reason: &str) -> Result<()>;
    async fn list_sessions(&self) -> Result<Vec<SessionRow>>;

    /// A counter bumped by every change to users or grants; live sessions are
    /// re-checked when it moves.
    async fn revision(&self) -> Result<i64>;
}
