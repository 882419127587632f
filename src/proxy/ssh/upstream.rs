//! Connecting to the target: TCP with a timeout, host key checked against the
//! pinned key (never trust on first use), login with the minted certificate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::{HashAlg, PublicKey};

use crate::credentials::Credential;
use crate::session::{Upstream, UpstreamError};
use crate::store::Target;

pub struct SshUpstream {
    pub connect_timeout: Duration,
}

/// Checks the target's host key; remembers a mismatch so the error can say which
/// key was offered.
pub struct PinnedHostKey {
    pinned: PublicKey,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let offered = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            // Host certificates need a host CA, which targets cannot configure yet.
            PublicKeyOrCertificate::Certificate(_) => return Ok(false),
        };
        if offered.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(offered.fingerprint(HashAlg::Sha256).to_string());
        Ok(false)
    }
}

/// Accepts `ssh-ed25519 AAAA…` or a known_hosts line (`host ssh-ed25519 AAAA…`).
pub fn parse_host_key(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    crate::keys::parse_public_key(line).or_else(|first_error| {
        line.split_once(char::is_whitespace)
            .ok_or(first_error.clone())
            .and_then(|(_, rest)| crate::keys::parse_public_key(rest))
            .map_err(|_| first_error)
    })
}

pub type UpstreamConnection = client::Handle<PinnedHostKey>;

/// russh's defaults with AES-256-GCM first: the gateway picks the cipher of
/// the upstream leg, and with AES-NI it costs the gateway far less CPU per
/// byte than ChaCha20-Poly1305 (`benches/ssh_ratio.rs`). Both are AEADs.
fn upstream_algorithms() -> russh::Preferred {
    use russh::cipher;
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
        ]),
        ..russh::Preferred::default()
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
        let pinned = parse_host_key(&target.host_key)
            .map_err(|e| protocol_error(format!("pinned host key: {e}")))?;
        let offered = Arc::new(Mutex::new(None));
        let check = PinnedHostKey {
            pinned: pinned.clone(),
            offered: offered.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            nodelay: true,
            window_size: super::WINDOW_SIZE,
            maximum_packet_size: super::MAX_PACKET,
            preferred: upstream_algorithms(),
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
                if let Some(got) = offered.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(UpstreamError::HostKeyMismatch {
                        target: target.name.clone(),
                        expected: pinned.fingerprint(HashAlg::Sha256).to_string(),
                        got,
                    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_parse_bare_or_as_known_hosts_lines() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(parse_host_key(key).is_ok());
        assert!(parse_host_key(&format!("[127.0.0.1]:2200 {key}")).is_ok());
        assert!(parse_host_key("ssh-ed25519 garbage").is_err());
    }
}
