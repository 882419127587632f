//! The SSH front: engineers connect with stock `ssh`/`scp`/`sftp`/`rsync` as
//! `LOGIN@TARGET@gateway`; the gateway logs in to the target with a short-lived
//! certificate and relays each channel.
//!
//! - `downstream`: the russh server side (the engineer's connection).
//! - `upstream`: the russh client side (the target).
//! - `known_hosts`: target host verification: pinned keys, host CAs, `@revoked`.
//! - `channel`: one task per session channel: pty, env, shell/exec/subsystem.
//! - `forward`: one task per `direct-tcpip` channel (`ssh -L`, `ssh -W`).
//! - `relay`: bytes both ways for either kind, recorded through a tap.
//! - `sftp`: the SFTP packet decoder that records file operations.
//! - `scp`: the legacy scp (`scp -O`) decoder that names the files sent either way.

mod ask;
mod channel;
mod downstream;
mod forward;
mod known_hosts;
mod relay;
mod scp;
mod sftp;
mod upstream;

pub use known_hosts::{HostVerification, known_hosts_name};
pub use upstream::SshUpstream;

use std::sync::Arc;
use std::time::Duration;

use russh::MethodKind;
use russh::keys::ssh_key::PrivateKey;
use russh::keys::ssh_key::public::KeyData;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{SshCiphers, SshConfig};
use crate::identity::FailureLimiter;
use crate::session::Pipeline;
use crate::store::Store;

/// Flow-control sizes for both sides of the relay (`benches/ssh_ratio.rs`):
/// a larger window keeps a loopback or LAN path busy while the other side
/// catches up; 65535 is russh's largest packet, which halves the per-packet
/// work (record, encrypt, queue hop) against its 32 KiB default.
pub(super) const WINDOW_SIZE: u32 = 8 << 20;
pub(super) const MAX_PACKET: u32 = 65535;

/// Everything a connection needs, shared by all of them.
pub struct SshFront {
    pub pipeline: Arc<Pipeline>,
    pub store: Arc<dyn Store>,
    pub upstream: SshUpstream,
    /// env allow-list, idle timeout, maximum session length.
    pub settings: SshConfig,
    /// Failed authentication per SSH username and per source address.
    pub limiter: Arc<FailureLimiter>,
    /// The engineer CA: user certificates it signed identify their principal.
    pub engineer_ca: KeyData,
    config: Arc<russh::server::Config>,
}

/// What the front offers engineers' clients (`[ssh] ciphers`).
fn downstream_algorithms(ciphers: SshCiphers) -> russh::Preferred {
    use russh::cipher;
    let defaults = russh::Preferred::default();
    match ciphers {
        SshCiphers::Default => defaults,
        SshCiphers::AesGcm => russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[cipher::AES_256_GCM, cipher::AES_128_GCM]),
            ..defaults
        },
    }
}

impl SshFront {
    pub fn new(
        pipeline: Arc<Pipeline>,
        store: Arc<dyn Store>,
        host_key: PrivateKey,
        engineer_ca: KeyData,
        upstream: SshUpstream,
        settings: SshConfig,
        limiter: Arc<FailureLimiter>,
    ) -> Self {
        let config = russh::server::Config {
            keys: vec![host_key],
            methods: (&[MethodKind::PublicKey][..]).into(),
            // Constant-time refusals, but no delay on the "none" probe every
            // OpenSSH client sends first.
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            nodelay: true,
            window_size: WINDOW_SIZE,
            maximum_packet_size: MAX_PACKET,
            preferred: downstream_algorithms(settings.ciphers),
            ..Default::default()
        };
        SshFront {
            pipeline,
            store,
            upstream,
            settings,
            limiter,
            engineer_ca,
            config: Arc::new(config),
        }
    }

    /// Accepts connections until `shutdown` flips to true.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            // Accept is cancel-safe; shutdown only stops taking new connections.
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "ssh accept failed");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let front = self.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                downstream::serve(front, stream, peer).await;
            });
        }
    }
}
