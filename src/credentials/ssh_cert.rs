//! SSH user certificates signed by the gateway's user CA. Targets trust the CA
//! (`TrustedUserCAKeys`) and hold no key of any engineer.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, PrivateKey};

use super::CredentialError;
use crate::access::Authorization;
use crate::time::UnixTime;

/// Clock skew allowance: the certificate is valid from a little before "now", so a
/// target whose clock is slightly behind does not refuse it as not yet valid.
const BACKDATE_SECS: u64 = 30;

pub struct SshCertificateAuthority {
    key: PrivateKey,
    ttl: Duration,
}

/// A throwaway key pair and its certificate, for one upstream login.
pub struct SshCredential {
    pub key: Arc<PrivateKey>,
    pub certificate: Certificate,
    pub principal: String,
}

impl std::fmt::Debug for SshCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCredential")
            .field("key_id", &self.certificate.key_id())
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl SshCertificateAuthority {
    pub fn new(key: PrivateKey, ttl: Duration) -> Self {
        SshCertificateAuthority { key, ttl }
    }

    /// Signs a fresh key for `auth`'s login, valid for the configured TTL (at most
    /// five minutes: long enough to log in, useless if it leaks). The key id names
    /// the session and user so the target's own auth log identifies the session.
    pub fn mint(
        &self,
        auth: &Authorization,
        session_id: &str,
        now: UnixTime,
    ) -> Result<SshCredential, CredentialError> {
        let err = |e: &dyn std::fmt::Display| CredentialError::Mint(e.to_string());
        let key = crate::keys::new_ed25519().map_err(|e| err(&e))?;
        let nonce = crate::keys::random_bytes::<32>().map_err(|e| err(&e))?;
        let now = now.max(0) as u64;
        let mut builder = Builder::new(
            nonce.to_vec(),
            key.public_key().key_data().clone(),
            now.saturating_sub(BACKDATE_SECS),
            now + self.ttl.as_secs(),
        )
        .map_err(|e| err(&e))?;
        builder
            .cert_type(CertType::User)
            .and_then(|b| {
                b.key_id(format!(
                    "drawbridge session={session_id} user={}",
                    auth.identity().name()
                ))
            })
            .and_then(|b| b.valid_principal(auth.login()))
            .and_then(|b| b.extension("permit-pty", ""))
            .and_then(|b| b.extension("permit-port-forwarding", ""))
            .map_err(|e| err(&e))?;
        let certificate = builder.sign(&self.key).map_err(|e| err(&e))?;
        Ok(SshCredential {
            key: Arc::new(key),
            certificate,
            principal: auth.login().to_string(),
        })
    }
}
