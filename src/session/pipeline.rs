//! [`Pipeline::open`]: the fixed order of stages every session goes through.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::access::{Access, Authorization};
use crate::config::RecordingConfig;
use crate::credentials::{AssertionSigner, Credential, PgRoleMinter, SshCertificateAuthority};
use crate::identity::Identity;
use crate::recording::{
    AuditLog, RecordSink, Recorder, RecordingError, RecordingKey, SessionMeta, Writer,
};
use crate::store::{SessionRow, Store, Target};
use crate::time;

use super::{EndReason, LiveInfo, LiveSession, Registry, SessionError, UpstreamError};

/// What a protocol supplies to the pipeline: how to reach its upstream with a
/// minted credential. Everything before that is the pipeline's business.
pub trait Upstream {
    type Connection: Send;
    const PROTOCOL: &'static str;

    fn connect(
        &self,
        target: &Target,
        credential: Credential,
    ) -> impl Future<Output = Result<Self::Connection, UpstreamError>> + Send;
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    access: Arc<Access>,
    ssh_ca: SshCertificateAuthority,
    http_signer: Arc<AssertionSigner>,
    pg_roles: PgRoleMinter,
    recordings_dir: PathBuf,
    recording_key: Arc<RecordingKey>,
    recording: RecordingConfig,
    audit: AuditLog,
    registry: Registry,
}

/// Where and how sessions are recorded.
pub struct RecordingSetup {
    pub dir: PathBuf,
    pub key: Arc<RecordingKey>,
    pub config: RecordingConfig,
    pub audit: AuditLog,
}

/// A session that passed every stage: the upstream connection, and the handle
/// through which the relay records and learns when to stop.
pub struct Established<C> {
    pub connection: C,
    pub session: SessionHandle,
}

#[derive(Clone)]
pub struct SessionHandle {
    id: String,
    /// `None` once the session is finished. Read-locked only to queue an event, so
    /// the requests and channels of one session queue side by side; write-locked
    /// once, to take the writer for the seal.
    writer: Arc<RwLock<Option<Writer>>>,
    live: LiveSession,
    store: Arc<dyn Store>,
    audit: AuditLog,
    registry: Registry,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        ssh_ca: SshCertificateAuthority,
        http_signer: Arc<AssertionSigner>,
        pg_roles: PgRoleMinter,
        recording: RecordingSetup,
        registry: Registry,
    ) -> Self {
        Pipeline {
            store,
            access,
            ssh_ca,
            http_signer,
            pg_roles,
            recordings_dir: recording.dir,
            recording_key: recording.key,
            recording: recording.config,
            audit: recording.audit,
            registry,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// For decisions inside an open session (port forwarding), which the
    /// protocol asks per channel.
    pub fn access(&self) -> &Access {
        &self.access
    }

    async fn mint(
        &self,
        protocol: &str,
        auth: &Authorization,
        session_id: &str,
    ) -> Result<Credential, SessionError> {
        match protocol {
            "ssh" => Ok(Credential::Ssh(Box::new(self.ssh_ca.mint(
                auth,
                session_id,
                time::now(),
            )?))),
            "http" => Ok(Credential::Http(Box::new(
                self.http_signer.for_session(auth, session_id),
            ))),
            "postgres" => Ok(Credential::Postgres(
                self.pg_roles.mint(auth, session_id, time::now()).await?,
            )),
            other => Err(SessionError::Internal(format!(
                "no credential kind for {other}"
            ))),
        }
    }

    /// Runs authorize → credential → connect → record+register for `identity`
    /// asking for `login` on `target`. The order is fixed here; protocols cannot
    /// skip or reorder a stage.
    pub async fn open<U: Upstream>(
        &self,
        identity: Identity,
        target: &str,
        login: &str,
        upstream: &U,
    ) -> Result<Established<U::Connection>, SessionError> {
        let now = time::now();
        let user = identity.name().to_string();
        let authenticated_by = identity.describe();
        let auth = match self.access.authorize(identity, target, login, now).await {
            Ok(auth) => auth,
            Err(e) => {
                // Every connect decision is in the audit log, refusals included.
                let details = format!(
                    "{login}@{target} via {}: {e}; auth: {authenticated_by}",
                    U::PROTOCOL
                );
                if let Err(e) = self.audit.event("session.refused", &user, "", &details) {
                    tracing::error!(error = %e, "cannot write the audit record");
                }
                return Err(e.into());
            }
        };
        if auth.target().protocol != U::PROTOCOL {
            return Err(SessionError::Access(
                crate::access::AccessError::UnknownTarget(format!(
                    "{target} (it is a {} target)",
                    auth.target().protocol
                )),
            ));
        }
        let id = super::new_session_id().map_err(|e| SessionError::Internal(e.to_string()))?;
        let credential = self.mint(U::PROTOCOL, &auth, &id).await?;
        let connection = upstream.connect(auth.target(), credential).await?;
        let session = self.start(&id, &auth, U::PROTOCOL).await?;
        tracing::info!(
            session = %id,
            user = auth.identity().name(),
            target = %auth.target().name,
            login = auth.login(),
            grant = ?auth.grant().map(|g| g.id()),
            policies = ?auth.policy_ids(),
            "session started"
        );
        Ok(Established {
            connection,
            session,
        })
    }

    async fn start(
        &self,
        id: &str,
        auth: &Authorization,
        protocol: &str,
    ) -> Result<SessionHandle, SessionError> {
        let started_at = time::now();
        let meta = SessionMeta {
            session_id: id.to_string(),
            user: auth.identity().name().to_string(),
            target: auth.target().name.clone(),
            login: auth.login().to_string(),
            protocol: protocol.to_string(),
            grant_id: auth.grant().map(|g| g.id()),
            started_at_unix_ms: time::now_ms(),
        };
        let writer = self
            .start_recording(&meta, auth.policy_ids(), &auth.identity().describe())
            .await?;
        if let Some(grant) = auth.grant().filter(|g| g.break_glass()) {
            writer
                .sink()
                .note(format!("BREAK-GLASS grant {}", grant.id()))?;
        }
        let recording_path = self.recordings_dir.join(format!("{id}.dbr"));
        self.store
            .insert_session(&SessionRow {
                id: id.to_string(),
                user: meta.user.clone(),
                target: meta.target.clone(),
                login: meta.login.clone(),
                protocol: meta.protocol.clone(),
                grant_id: meta.grant_id,
                started_at,
                ended_at: None,
                end_reason: None,
                recording: recording_path.display().to_string(),
            })
            .await?;
        let live = self.registry.register(LiveInfo {
            id: id.to_string(),
            user: meta.user,
            user_id: auth.identity().user().id,
            target: meta.target,
            login: meta.login,
            protocol: meta.protocol,
            grant_id: meta.grant_id,
            started_at,
            ends_at: auth.grant().map(|g| g.ends_at()),
        });
        Ok(SessionHandle {
            id: id.to_string(),
            writer: Arc::new(RwLock::new(Some(writer))),
            live,
            store: self.store.clone(),
            audit: self.audit.clone(),
            registry: self.registry.clone(),
        })
    }

    /// Creates the recording and its writer thread, then makes the session's start durable
    /// in the audit log. Without the audit entry the session is refused (fail closed) and
    /// its recording sealed at once, so every recording is named in the audit log.
    async fn start_recording(
        &self,
        meta: &SessionMeta,
        policies: &[String],
        credential: &str,
    ) -> Result<Writer, SessionError> {
        let recorder = Recorder::create(
            &self.recordings_dir,
            meta,
            self.recording_key.clone(),
            self.recording.policy(),
        )?;
        let (registry, id) = (self.registry.clone(), meta.session_id.clone());
        // Runs on the writer thread when a write fails, even while the relay is idle.
        let on_failure = Box::new(move |why: &str| {
            tracing::error!(session = %id, why, "recording failed; ending the session");
            registry.end_where(|i| i.id == id, EndReason::RecordingFailed);
        });
        let writer = Writer::spawn(recorder, self.recording.queue_bytes, on_failure)?;
        let details = format!(
            "{}@{} via {}{}; policies: {}; auth: {credential}",
            meta.login,
            meta.target,
            meta.protocol,
            meta.grant_id
                .map(|g| format!(", grant {g}"))
                .unwrap_or_default(),
            policies.join(", ")
        );
        let logged = match self
            .audit
            .event("session.start", &meta.user, &meta.session_id, &details)
        {
            Ok(()) => self.audit.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = logged {
            tracing::error!(session = %meta.session_id, error = %e, "audit log unavailable; refusing the session");
            if let Err(e) = writer.seal("refused: the audit log is unavailable").await {
                tracing::error!(session = %meta.session_id, error = %e, "sealing failed");
            }
            return Err(SessionError::Recording(e));
        }
        Ok(writer)
    }
}

impl SessionHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A receiver that resolves when the session must end.
    pub fn live(&self) -> LiveSession {
        self.live.clone()
    }

    pub fn is_ended(&self) -> bool {
        self.live.is_ended()
    }

    /// Ends the session through its kill switch; every relay of it stops.
    pub fn end(&self, reason: EndReason) {
        tracing::warn!(session = %self.id, %reason, "ending session");
        self.registry.end_where(|i| i.id == self.id, reason);
    }

    /// Queues events for the recording; never waits on the disk. Fails once the session
    /// is finished, when the queue is full and on any earlier write error: the relay must
    /// then end the session (fail closed).
    pub fn record(
        &self,
        write: impl FnOnce(&mut RecordSink<'_>) -> Result<(), RecordingError>,
    ) -> Result<(), RecordingError> {
        // Held only to queue (no IO); never across an await.
        let guard = self.writer.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(writer) => write(&mut writer.sink()),
            None => Err(RecordingError::Closed),
        }
    }

    /// Waits while the recording queue is backlogged (see [`Writer::room`]);
    /// relays call it before reading more from either side. Immediate in the
    /// common case: one atomic load under a read lock.
    pub async fn recording_room(&self) -> Result<(), RecordingError> {
        let backlogged = {
            let guard = self.writer.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(writer) if writer.backlogged() => writer.clone(),
                Some(_) => return Ok(()),
                None => return Err(RecordingError::Closed),
            }
        };
        backlogged.room().await
    }

    /// Seals the recording, marks the session ended and unregisters it. Safe to
    /// call more than once; only the first call does anything.
    ///
    /// The seal hash is durable in the audit log before the session is marked ended in the
    /// store, so anyone who sees it ended can verify it against the audit log.
    pub async fn finish(&self, reason: &str) {
        let writer = self
            .writer
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(writer) = writer else { return };
        let audit = &self.audit;
        let id = self.id.as_str();
        let mut logged = Ok(());
        if let Some(why) = writer.failure() {
            logged = audit.event("recording.failed", "gateway", id, &why);
        }
        match writer.seal(reason).await {
            Ok(seal) => {
                tracing::info!(session = %id, records = seal.records, reason, "session ended");
                logged = logged.and(audit.session_sealed(id, &seal, reason, false));
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "sealing the recording failed");
                let details = format!("{reason}; recording not sealed: {e}");
                logged = logged.and(audit.event("session.end", "gateway", id, &details));
            }
        }
        if let Err(e) = logged.and(audit.sync().await) {
            tracing::error!(session = %id, error = %e, "audit log entry for the session end failed");
        }
        if let Err(e) = self.store.end_session(&self.id, time::now(), reason).await {
            tracing::error!(session = %self.id, error = %e, "cannot mark session ended");
        }
        self.registry.remove(&self.id);
    }
}
