//! [`Pipeline::open`]: the fixed order of stages every session goes through.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::access::{Access, Authorization};
use crate::credentials::{Credential, SshCertificateAuthority};
use crate::identity::Identity;
use crate::recording::{Recorder, RecordingError, RecordingKey, SessionMeta};
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
    recordings_dir: PathBuf,
    recording_key: Arc<RecordingKey>,
    registry: Registry,
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
    recorder: Arc<Mutex<Option<Recorder>>>,
    live: LiveSession,
    store: Arc<dyn Store>,
    registry: Registry,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        ssh_ca: SshCertificateAuthority,
        recordings_dir: PathBuf,
        recording_key: Arc<RecordingKey>,
        registry: Registry,
    ) -> Self {
        Pipeline {
            store,
            access,
            ssh_ca,
            recordings_dir,
            recording_key,
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

    fn mint(
        &self,
        protocol: &str,
        auth: &Authorization,
        session_id: &str,
    ) -> Result<Credential, SessionError> {
        match protocol {
            "ssh" => Ok(Credential::Ssh(self.ssh_ca.mint(
                auth,
                session_id,
                time::now(),
            )?)),
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
        let auth = self.access.authorize(identity, target, login, now).await?;
        if auth.target().protocol != U::PROTOCOL {
            return Err(SessionError::Access(
                crate::access::AccessError::UnknownTarget(format!(
                    "{target} (it is a {} target)",
                    auth.target().protocol
                )),
            ));
        }
        let id = super::new_session_id().map_err(|e| SessionError::Internal(e.to_string()))?;
        let credential = self.mint(U::PROTOCOL, &auth, &id)?;
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
        let recorder = Recorder::create(&self.recordings_dir, &meta, self.recording_key.clone())?;
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
                recording: recorder.path().display().to_string(),
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
            recorder: Arc::new(Mutex::new(Some(recorder))),
            live,
            store: self.store.clone(),
            registry: self.registry.clone(),
        })
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

    /// Ends the session through its kill switch; every relay of it stops.
    pub fn end(&self, reason: EndReason) {
        tracing::warn!(session = %self.id, %reason, "ending session");
        self.registry.end_where(|i| i.id == self.id, reason);
    }

    /// Appends to the recording. Fails once the session is finished, and on any
    /// write error: the relay must then end the session (fail closed).
    pub fn record(
        &self,
        write: impl FnOnce(&mut Recorder) -> Result<(), RecordingError>,
    ) -> Result<(), RecordingError> {
        // Held only for one buffered write; never across an await.
        let mut guard = self.recorder.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(recorder) => write(recorder),
            None => Err(RecordingError::Closed),
        }
    }

    /// Seals the recording, marks the session ended and unregisters it. Safe to
    /// call more than once; only the first call does anything.
    pub async fn finish(&self, reason: &str) {
        let recorder = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(recorder) = recorder else { return };
        match recorder.seal(reason) {
            Ok(seal) => {
                tracing::info!(session = %self.id, records = seal.records, reason, "session ended")
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "sealing the recording failed")
            }
        }
        if let Err(e) = self.store.end_session(&self.id, time::now(), reason).await {
            tracing::error!(session = %self.id, error = %e, "cannot mark session ended");
        }
        self.registry.remove(&self.id);
    }
}
