//! Wires the services from the config, runs the listeners and shuts down cleanly.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::credentials::SshCertificateAuthority;
use crate::identity::{FailureLimiter, LimiterConfig};
use crate::keys::{self, KeyPaths};
use crate::policy::PolicyEngine;
use crate::proxy::ssh::{SshFront, SshUpstream};
use crate::session::{self, EndReason, Pipeline, Registry};
use crate::store::{SqliteStore, Store};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn setup(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Setup(e.to_string())
}

pub fn make_dir_private(dir: &Path) -> Result<(), GatewayError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| setup(format!("{}: {e}", dir.display())))
}

/// Opens the state store under `data_dir`, creating it on first use.
pub fn open_store(config: &Config) -> Result<Arc<SqliteStore>, GatewayError> {
    make_dir_private(&config.data_dir)?;
    Ok(Arc::new(
        SqliteStore::open(&config.data_dir.join("drawbridge.db")).map_err(setup)?,
    ))
}

/// Creates the data folder and keys if missing; prints what a new operator does
/// next. Returns the keys.
pub fn init(config: &Config) -> Result<keys::GatewayKeys, GatewayError> {
    make_dir_private(&config.data_dir)?;
    make_dir_private(&config.recordings_dir)?;
    let (keys, created) = keys::load_or_create(&config.data_dir).map_err(setup)?;
    if !created.is_empty() {
        let paths = KeyPaths::new(&config.data_dir);
        println!(
            "drawbridge: first start: created the gateway's keys in {}",
            paths.dir.display()
        );
        println!(
            "  targets must trust the user CA: copy {} to the target and add\n    TrustedUserCAKeys /etc/ssh/drawbridge_user_ca.pub\n  to its sshd_config",
            paths.user_ca_pub().display()
        );
        println!(
            "  create the first admin with:\n    drawbridge user add alice --admin --group approvers --ssh-key ~/.ssh/id_ed25519.pub --password-stdin"
        );
    }
    Ok(keys)
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), GatewayError> {
    let keys = init(&config)?;
    let store: Arc<dyn Store> = open_store(&config)?;
    let policy = Arc::new(PolicyEngine::load(&config.policies_dir).map_err(setup)?);
    let access = Arc::new(Access::new(store.clone(), policy, config.access.max_grant));
    let registry = Registry::default();
    let limiter = Arc::new(FailureLimiter::new(LimiterConfig {
        per_user: config.access.max_auth_failures_per_user,
        per_address: config.access.max_auth_failures_per_address,
        window: config.access.auth_failure_window,
    }));
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        access.clone(),
        SshCertificateAuthority::new(keys.user_ca.clone(), config.ssh.upstream_cert_ttl),
        config.recordings_dir.clone(),
        keys.recording.clone(),
        registry.clone(),
    ));
    let ssh = Arc::new(SshFront::new(
        pipeline,
        store.clone(),
        keys.ssh_host.clone(),
        SshUpstream {
            connect_timeout: config.ssh.connect_timeout,
        },
        config.ssh.clone(),
        limiter.clone(),
    ));
    let tls =
        api::server_tls_config(&keys.tls_cert_pem, keys.tls_key_pem.expose()).map_err(setup)?;
    let router = api::router(Arc::new(ApiState {
        limiter,
        store: store.clone(),
        access,
        registry: registry.clone(),
        token_ttl: config.access.login_token_ttl,
    }));

    let ssh_listener = bind(config.ssh.listen).await?;
    let api_listener = bind(config.api.listen).await?;
    // Tests and scripts read these two lines to learn the actual ports (the config
    // may say port 0).
    println!("drawbridge: ssh listening on {}", local(&ssh_listener));
    println!("drawbridge: https listening on {}", local(&api_listener));
    if store.list_users().await.map_err(setup)?.is_empty() {
        println!(
            "drawbridge: no users yet; create the first admin with `drawbridge user add NAME --admin ...`"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let enforcer = tokio::spawn(session::enforce(
        store.clone(),
        registry.clone(),
        config.access.enforce_interval,
    ));
    let ssh_task = tokio::spawn(ssh.run(ssh_listener, stop_rx.clone()));
    let api_task = tokio::spawn(api::serve_tls(api_listener, tls, router, stop_rx));

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    registry.end_where(|_| true, EndReason::Shutdown);
    drain(&registry).await;
    enforcer.abort();
    let _ = tokio::join!(ssh_task, api_task);
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { addr, source })
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("<unknown: {e}>"))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        // Either signal ends the wait; both futures are cancel-safe.
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Gives live sessions a moment to tell their clients and seal their recordings.
async fn drain(registry: &Registry) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !registry.list().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
