//! Session errors record which side failed; that decides what the engineer is
//! told and what the audit trail says.

use crate::access::AccessError;
use crate::credentials::CredentialError;
use crate::recording::RecordingError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The engineer: not allowed, or asked for something that does not exist.
    Downstream,
    /// The target: unreachable, wrong host key, rejected the credential.
    Upstream,
    /// The gateway itself: store, recording, key material.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("target {target} ({address}) is unreachable: {reason}")]
    Unreachable {
        target: String,
        address: String,
        reason: String,
    },
    #[error("timed out after {secs}s connecting to target {target} ({address})")]
    Timeout {
        target: String,
        address: String,
        secs: u64,
    },
    #[error(
        "host key of target {target} does not match its pinned key (expected {expected}, got {got}); refusing to connect"
    )]
    HostKeyMismatch {
        target: String,
        expected: String,
        got: String,
    },
    #[error("cannot verify target {target}: it {reason}; refusing to connect")]
    HostUnverified { target: String, reason: String },
    #[error("target {target} rejected the gateway's certificate for principal {principal:?}")]
    CredentialRejected { target: String, principal: String },
    #[error("target {target}: {reason}")]
    Protocol { target: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("recording failed: {0}")]
    Recording(#[from] RecordingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    pub fn side(&self) -> Side {
        match self {
            SessionError::Access(AccessError::Store(_)) => Side::Internal,
            SessionError::Access(_) => Side::Downstream,
            SessionError::Credential(CredentialError::Unavailable(_)) => Side::Downstream,
            SessionError::Upstream(_) => Side::Upstream,
            _ => Side::Internal,
        }
    }

    /// What the engineer's client shows. Internal failures are not described in
    /// detail (they may name paths or keys); the gateway log has them.
    pub fn client_message(&self) -> String {
        match self.side() {
            Side::Downstream | Side::Upstream => self.to_string(),
            Side::Internal => {
                "drawbridge: internal error, session refused (see the gateway log)".into()
            }
        }
    }
}
