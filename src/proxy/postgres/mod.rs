//! The PostgreSQL front: engineers connect with stock `psql` and drivers as
//! `user=ROLE@TARGET` with their Drawbridge token as password (inside TLS); the
//! gateway logs in to the target with an ephemeral role and relays raw frames.
//!
//! - `wire`: the frame codec (startup packets, tagged frames, limits); no IO.
//! - `downstream`: TLS negotiation, startup, token check, refusals, cancel.
//! - `upstream`: TCP (+ TLS) to the target, SCRAM-SHA-256 login, cancel forward.
//! - `relay`: frames both ways as bytes, the audit tap, the end-of-grant FATAL.
//! - `parameters`: Bind values for the recording, decoded or masked.
//! - `tls`: rustls toward targets, for the relay and for admin connections.

mod downstream;
mod parameters;
mod relay;
pub mod tls;
mod upstream;
pub mod wire;

pub use upstream::PostgresUpstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{BusyPollSetting, PostgresConfig};
use crate::proxy::postgres::parameters::ParameterPolicy;
use crate::proxy::relay_runtimes::relay_runtimes;
use crate::session::Pipeline;
use crate::store::Store;

/// A byte stream to a client or a target, plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// Everything a connection needs, shared by all of them.
pub struct PostgresFront {
    pub pipeline: Arc<Pipeline>,
    pub store: Arc<dyn Store>,
    tls: TlsAcceptor,
    allow_plaintext_loopback: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    login_timeout: Duration,
    busy_poll: BusyPollSetting,
    parameters: ParameterPolicy,
    cancels: CancelKeys,
}

impl PostgresFront {
    /// `tls` is the gateway's certificate, re-offered with ALPN `postgresql` (the
    /// protocol name PostgreSQL 17 clients ask for).
    pub fn new(
        pipeline: Arc<Pipeline>,
        store: Arc<dyn Store>,
        tls: &rustls::ServerConfig,
        config: &PostgresConfig,
    ) -> Self {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        PostgresFront {
            pipeline,
            store,
            tls: TlsAcceptor::from(Arc::new(tls)),
            allow_plaintext_loopback: config.allow_plaintext_loopback,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            login_timeout: config.login_timeout,
            busy_poll: config.busy_poll,
            parameters: ParameterPolicy::from_config(config),
            cancels: CancelKeys::default(),
        }
    }

    /// Accepts connections until `shutdown` flips to true.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        // Started here so that a failure shows at startup, not at a first connection.
        let relays = relay_runtimes();
        relays.start_busy_poll(self.busy_poll);
        loop {
            // Accept is cancel-safe; shutdown only stops taking new connections,
            // live sessions end through the registry.
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres accept failed");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let front = self.clone();
            let spawned = relays.spawn(stream, move |stream| async move {
                let _ = stream.set_nodelay(true);
                downstream::serve(front, stream, peer).await;
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "postgres accept failed");
            }
        }
    }
}

/// Where a cancel request for one of our sessions must go.
#[derive(Clone)]
pub struct UpstreamKey {
    address: String,
    pid: u32,
    secret: u32,
    /// Set when the session's connection uses TLS: the cancel does too.
    tls: Option<tls::TargetTls>,
}

/// The gateway's own BackendKeyData per live session, mapped to the target's, so
/// a client never learns the target's key and a cancel reaches the right backend.
#[derive(Clone, Default)]
struct CancelKeys(Arc<Mutex<HashMap<u32, (u32, UpstreamKey)>>>);

/// Removes its key when the session ends.
struct CancelGuard {
    keys: CancelKeys,
    pid: u32,
}

impl CancelKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (u32, UpstreamKey)>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh random (pid, secret) for `upstream`.
    fn register(&self, upstream: UpstreamKey) -> Result<(CancelGuard, u32, u32), String> {
        loop {
            let random = crate::keys::random_bytes::<8>().map_err(|e| e.to_string())?;
            // Positive as an int32 (clients print it as a process id), never zero.
            let pid =
                u32::from_be_bytes([random[0], random[1], random[2], random[3]]) & 0x7fff_ffff;
            let secret = u32::from_be_bytes([random[4], random[5], random[6], random[7]]);
            let mut map = self.lock();
            if pid != 0 && !map.contains_key(&pid) {
                map.insert(pid, (secret, upstream));
                let guard = CancelGuard {
                    keys: self.clone(),
                    pid,
                };
                return Ok((guard, pid, secret));
            }
        }
    }

    /// The target key for a cancel request, if both halves match a live session.
    fn lookup(&self, pid: u32, secret: u32) -> Option<UpstreamKey> {
        self.lock()
            .get(&pid)
            .filter(|(s, _)| *s == secret)
            .map(|(_, k)| k.clone())
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.pid);
    }
}

/// Drops the leftover session roles of every PostgreSQL target (a previous run
/// that crashed). Runs in the background at start; failures are only logged.
pub async fn sweep_leftover_roles(store: Arc<dyn Store>, connect_timeout: Duration) {
    let minter = crate::credentials::PgRoleMinter::new(connect_timeout);
    let targets = match store.list_targets().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list targets to sweep leftover roles");
            return;
        }
    };
    // Targets with a static login have no roles of ours to sweep.
    let with_roles = targets.iter().filter(|t| {
        t.postgres
            .as_ref()
            .is_some_and(|s| s.static_login.is_none())
    });
    for target in with_roles {
        match minter.sweep(target).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target = %target.name, roles = n, "swept leftover session roles")
            }
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "cannot sweep leftover session roles")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_keys_need_both_halves_and_go_away_with_the_session() {
        let keys = CancelKeys::default();
        let (guard, pid, secret) = keys
            .register(UpstreamKey {
                address: "127.0.0.1:5432".into(),
                pid: 42,
                secret: 7,
                tls: None,
            })
            .expect("register");
        assert!(pid > 0 && pid <= i32::MAX as u32);
        assert_eq!(keys.lookup(pid, secret).map(|k| k.pid), Some(42));
        assert!(keys.lookup(pid, secret.wrapping_add(1)).is_none());
        drop(guard);
        assert!(keys.lookup(pid, secret).is_none());
    }
}
