//! Stage 3, credential: mint the short-lived upstream credential for one session.
//! The engineer never sees it; it exists only in the gateway's memory.
//!
//! Architecture invariant: a [`Credential`] is minted only from an
//! [`Authorization`](crate::access::Authorization), so no code path can reach the
//! connect stage without passing authorize first.

mod http_assertion;
mod pg_role;
mod ssh_cert;

pub use http_assertion::{AssertionSigner, HttpCredential, MAX_TTL_SECS};
pub use pg_role::{PgLogin, PgRoleMinter, quote_ident, quote_literal, role_name};
pub use ssh_cert::{SshCertificateAuthority, SshCredential};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot mint credential: {0}")]
    Mint(String),
    /// The target cannot serve this grant (the engineer's side: ask for another).
    #[error("{0}")]
    Unavailable(String),
}

/// A minted upstream credential, one variant per kind of upstream.
// One per session, moved once into `connect`: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Credential {
    Ssh(Box<SshCredential>),
    Http(Box<HttpCredential>),
    /// A role created on the target for this session only, or its static one.
    Postgres(PgLogin),
}
