//! Wires the services from the config, runs the listeners and shuts down cleanly.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{Access, AccessLimits, EventSink, Fanout, LogSink};
use crate::api::{self, ApiState, HttpsFront, LocalCa};
use crate::config::Config;
use crate::credentials::{AssertionSigner, PgRoleMinter, SshCertificateAuthority};
use crate::identity::{EngineerCa, FailureLimiter, LimiterConfig};
use crate::keys::{self, KeyPaths};
use crate::notify::Webhook;
use crate::policy::{PolicyEngine, SharedPolicy};
use crate::proxy::http::{Handoff, HttpFront, HttpUpstream};
use crate::proxy::postgres::{self, PostgresFront};
use crate::proxy::ssh::{SshFront, SshUpstream};
use crate::recording::audit::{AuditIndex, audit_dir};
use crate::recording::{AuditLog, recovery};
use crate::session::{self, EndReason, Pipeline, RecordingSetup, Registry};
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
    let audit = open_audit_and_recover(&config, &keys, store.as_ref()).await?;
    let policy_files = crate::policy::fingerprint(&config.policies_dir);
    let policy = SharedPolicy::new(PolicyEngine::load(&config.policies_dir).map_err(setup)?);
    let access = Arc::new(Access::new(
        store.clone(),
        policy.clone(),
        AccessLimits {
            max_grant: config.access.max_grant,
            request_ttl: config.access.request_ttl,
        },
        event_sinks(&config, &audit)?,
    ));
    let registry = Registry::default();
    let http_signer = Arc::new(
        AssertionSigner::from_pkcs8(keys.http_assertion.expose(), "drawbridge").map_err(setup)?,
    );
    let limiter = Arc::new(FailureLimiter::new(LimiterConfig {
        per_user: config.access.max_auth_failures_per_user,
        per_address: config.access.max_auth_failures_per_address,
        window: config.access.auth_failure_window,
    }));
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        access.clone(),
        SshCertificateAuthority::new(keys.user_ca.clone(), config.ssh.upstream_cert_ttl),
        http_signer.clone(),
        PgRoleMinter::new(config.postgres.connect_timeout),
        RecordingSetup {
            dir: config.recordings_dir.clone(),
            key: keys.recording.clone(),
            config: config.recording.clone(),
            audit: audit.clone(),
        },
        registry.clone(),
    ));
    let engineer_ca = Arc::new(EngineerCa::new(
        keys.engineer_ca.clone(),
        config.ssh.user_cert_validity,
    ));
    let ssh = Arc::new(SshFront::new(
        pipeline.clone(),
        store.clone(),
        keys.ssh_host.clone(),
        engineer_ca.public_key(),
        SshUpstream {
            connect_timeout: config.ssh.connect_timeout,
        },
        config.ssh.clone(),
        limiter.clone(),
    ));
    let tls = api::server_tls_config(
        LocalCa::new(
            &keys.tls_cert_pem,
            keys.tls_key_pem.expose(),
            &config.http.apps_domain,
        )
        .map_err(setup)?,
    )
    .map_err(setup)?;
    let pg = Arc::new(PostgresFront::new(
        pipeline.clone(),
        store.clone(),
        &tls,
        &config.postgres,
    ));
    let handoff = Arc::new(Handoff::default());
    let router = api::router(Arc::new(ApiState {
        limiter,
        store: store.clone(),
        access: access.clone(),
        registry: registry.clone(),
        token_ttl: config.access.login_token_ttl,
        apps_domain: config.http.apps_domain.clone(),
        jwks: http_signer.jwks(),
        handoff: handoff.clone(),
        audit: audit.clone(),
        engineer_ca,
    }));

    let ssh_listener = bind(config.ssh.listen).await?;
    let pg_listener = bind(config.postgres.listen).await?;
    let api_listener = bind(config.api.listen).await?;
    let https_port = api_listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.api.listen.port());
    let https = Arc::new(HttpsFront {
        api: router,
        apps: Arc::new(HttpFront::new(
            pipeline,
            store.clone(),
            config.http.apps_domain.clone(),
            https_port,
            HttpUpstream::new(config.http.connect_timeout, config.http.response_timeout),
            handoff,
        )),
    });
    // Tests and scripts read these lines to learn the actual ports (the config
    // may say port 0).
    println!("drawbridge: ssh listening on {}", local(&ssh_listener));
    println!("drawbridge: postgres listening on {}", local(&pg_listener));
    println!("drawbridge: https listening on {}", local(&api_listener));
    if store.list_users().await.map_err(setup)?.is_empty() {
        println!(
            "drawbridge: no users yet; create the first admin with `drawbridge user add NAME --admin ...`"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = [
        tokio::spawn(session::enforce(
            store.clone(),
            registry.clone(),
            config.access.enforce_interval,
        )),
        tokio::spawn(expire_loop(access.clone())),
        tokio::spawn(crate::policy::watch(
            config.policies_dir.clone(),
            policy,
            config.access.policy_reload_interval,
            policy_files,
        )),
    ];
    // Leftover session roles of a crashed run; in the background so an
    // unreachable target does not delay the start.
    tokio::spawn(postgres::sweep_leftover_roles(
        store.clone(),
        config.postgres.connect_timeout,
    ));
    let ssh_task = tokio::spawn(ssh.run(ssh_listener, stop_rx.clone()));
    let pg_task = tokio::spawn(pg.run(pg_listener, stop_rx.clone()));
    let api_task = tokio::spawn(api::serve_tls(
        api_listener,
        tls,
        https,
        config.api.header_timeout,
        stop_rx,
    ));

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    registry.end_where(|_| true, EndReason::Shutdown);
    drain(&registry).await;
    background.iter().for_each(|task| task.abort());
    let _ = tokio::join!(ssh_task, pg_task, api_task);
    let stopped = audit.event("gateway.stop", "gateway", "", "clean shutdown");
    if let Err(e) = stopped.and(audit.close("gateway stopped").await.map(|_| ())) {
        tracing::error!(error = %e, "cannot seal the audit log; it is sealed as interrupted on the next start");
    }
    Ok(())
}

/// Where access events go: the gateway log, the audit log and every configured
/// webhook.
fn event_sinks(config: &Config, audit: &AuditLog) -> Result<Arc<dyn EventSink>, GatewayError> {
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(LogSink), Arc::new(audit.clone())];
    for hook in &config.notify.webhooks {
        sinks.push(Arc::new(Webhook::start(hook.clone()).map_err(setup)?));
    }
    Ok(Arc::new(Fanout(sinks)))
}

/// Expires undecided requests and ended grants once a second, so their states
/// (and the notifications) follow the clock. Access checks never rely on this:
/// they compare the grant window with the time themselves.
async fn expire_loop(access: Arc<Access>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = access.expire(crate::time::now()).await {
            tracing::warn!(error = %e, "expiring requests failed");
        }
    }
}

/// Opens the audit log (sealing a segment a crash left open) and seals every session
/// recording a crash left open, marking those sessions ended in the store. Runs before any
/// listener opens, so no new session can race the sweep.
async fn open_audit_and_recover(
    config: &Config,
    keys: &keys::GatewayKeys,
    store: &dyn Store,
) -> Result<AuditLog, GatewayError> {
    let trusted = keys::load_key_ring(&config.data_dir).map_err(setup)?;
    let dir = audit_dir(&config.recordings_dir);
    let rec = &config.recording;
    let audit = AuditLog::open(
        &dir,
        keys.recording.clone(),
        &trusted,
        rec.policy(),
        rec.queue_bytes,
    )
    .map_err(|e| setup(format!("audit log {}: {e}", dir.display())))?;
    let index = AuditIndex::load(&dir).map_err(setup)?;
    let recovered = recovery::recover_sessions(
        &config.recordings_dir,
        &audit,
        &index,
        &keys.recording,
        &trusted,
    )
    .map_err(setup)?;
    for r in &recovered {
        tracing::warn!(session = %r.session_id, reason = %r.end_reason, "recovered a recording left open");
        // A recording without a store row (crash before the row was written) is fine.
        if let Err(e) = store
            .end_session(&r.session_id, crate::time::now(), &r.end_reason)
            .await
        {
            tracing::debug!(session = %r.session_id, error = %e, "no session row to end");
        }
    }
    let details = format!(
        "audit segment {}; {} recordings recovered",
        audit.segment(),
        recovered.len()
    );
    audit
        .event("gateway.start", "gateway", "", &details)
        .map_err(setup)?;
    audit.sync().await.map_err(setup)?;
    Ok(audit)
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
