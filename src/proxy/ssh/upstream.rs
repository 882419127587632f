//! Connecting to the target: TCP with a timeout, host key or host certificate
//! checked against the target's known_hosts lines (never trust on first use),
//! login with the minted certificate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKeyOrCertificate;

use super::known_hosts::{HostKeyProblem, HostVerification, host_name};
use crate::credentials::Credential;
use crate::session::{Upstream, UpstreamError};
use crate::store::Target;

pub struct SshUpstream {
    pub connect_timeout: Duration,
}

/// Checks the target's host key or certificate; remembers why it refused so the
/// error can say.
pub struct VerifyHost {
    verification: Arc<HostVerification>,
    /// The name a host certificate must list.
    host: String,
    problem: Arc<Mutex<Option<HostKeyProblem>>>,
}

impl client::Handler for VerifyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = self
            .verification
            .check(offered, &self.host, crate::time::now());
        let accepted = verdict.is_ok();
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = verdict.err();
        Ok(accepted)
    }
}

fn host_key_error(target: &Target, problem: HostKeyProblem) -> UpstreamError {
    match problem {
        HostKeyProblem::NotPinned { expected, got } => UpstreamError::HostKeyMismatch {
            target: target.name.clone(),
            expected,
            got,
        },
        other => UpstreamError::HostUnverified {
            target: target.name.clone(),
            reason: other.to_string(),
        },
    }
}

pub type UpstreamConnection = client::Handle<VerifyHost>;

/// russh's defaults with AES-256-GCM first: the gateway picks the cipher of
/// the upstream leg, and with AES-NI it costs the gateway far less CPU per
/// byte than ChaCha20-Poly1305 (`benches/ssh_ratio.rs`). Both are AEADs.
/// Host certificates are asked for only from targets with a host CA: a target
/// without one is checked against its pinned key, which a certificate would hide.
fn upstream_algorithms(verification: &HostVerification) -> russh::Preferred {
    use russh::cipher;
    let defaults = russh::Preferred::default();
    let host_key_certificates = match verification.wants_certificate() {
        true => defaults.key.clone(),
        false => defaults.host_key_certificates.clone(),
    };
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
        ]),
        host_key_certificates,
        ..defaults
    }
}

impl Upstream for SshUpstream {
    type Connection = UpstreamConnection;
    const PROTOCOL: &'static str = "ssh";

    async fn connect(
        &self,
        target: &Target,
        credential: Credential,
    ) -> Result<UpstreamConnection, UpstreamError> {
        let protocol_error = |reason: String| UpstreamError::Protocol {
            target: target.name.clone(),
            reason,
        };
        let Credential::Ssh(credential) = credential else {
            return Err(protocol_error("not an SSH credential".into()));
        };
        let verification = HostVerification::parse(&target.host_key)
            .map_err(|e| protocol_error(format!("stored host keys: {e}")))?;
        let preferred = upstream_algorithms(&verification);
        let problem = Arc::new(Mutex::new(None));
        let check = VerifyHost {
            verification: Arc::new(verification),
            host: host_name(&target.address),
            problem: problem.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            nodelay: true,
            window_size: super::WINDOW_SIZE,
            maximum_packet_size: super::MAX_PACKET,
            preferred,
            ..Default::default()
        });
        let login = async {
            let mut handle = client::connect(config, target.address.as_str(), check).await?;
            let result = handle
                .authenticate_openssh_cert(
                    credential.principal.clone(),
                    credential.key.clone(),
                    credential.certificate.clone(),
                )
                .await?;
            Ok::<_, russh::Error>((handle, result.success()))
        };
        let outcome = tokio::time::timeout(self.connect_timeout, login)
            .await
            .map_err(|_| UpstreamError::Timeout {
                target: target.name.clone(),
                address: target.address.clone(),
                secs: self.connect_timeout.as_secs(),
            })?;
        match outcome {
            Ok((handle, true)) => Ok(handle),
            Ok((_, false)) => Err(UpstreamError::CredentialRejected {
                target: target.name.clone(),
                principal: credential.principal,
            }),
            Err(e) => {
                if let Some(problem) = problem.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(host_key_error(target, problem));
                }
                Err(match e {
                    russh::Error::IO(io) => UpstreamError::Unreachable {
                        target: target.name.clone(),
                        address: target.address.clone(),
                        reason: io.to_string(),
                    },
                    other => protocol_error(other.to_string()),
                })
            }
        }
    }
}
