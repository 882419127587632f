//! Stage 3, credential: mint the short-lived upstream credential for one session.
//! The engineer never sees it; it exists only in the gateway's memory.
//!
//! Architecture invariant: a [`Credential`] is minted only from an
//! [`Authorization`](crate::access::Authorization), so no code path can reach the
//! connect stage without passing authorize first.

mod http_assertion;
mod ssh_cert;

pub use http_assertion::{AssertionSigner, HttpCredential, MAX_TTL_SECS};
pub use ssh_cert::{SshCertificateAuthority, SshCredential};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot mint credential: {0}")]
    Mint(String),
}

/// A minted upstream credential, one variant per kind of upstream.
#[derive(Debug)]
pub enum Credential {
    // Boxed: both are hundreds of bytes and are moved through the pipeline.
    Ssh(Box<SshCredential>),
    Http(Box<HttpCredential>),
}
