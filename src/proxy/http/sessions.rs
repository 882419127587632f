//! One Drawbridge session per user and HTTP target: opened through the pipeline
//! on the first request, reused while its grant lasts, and sealed when it ends.
//! A revoke or grant end takes effect on the very next request, because a
//! session that has ended is never reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper::{Response, StatusCode};

use super::json_error;
use super::upstream::{HttpConnection, HttpUpstream};
use crate::access::AccessError;
use crate::identity::Identity;
use crate::session::{Pipeline, SessionError, SessionHandle, Side};
use crate::store::UserId;
use crate::time;

/// The login a grant for an HTTP target names when the engineer did not choose
/// one (`drawbridge request grafana --login web`).
pub const DEFAULT_LOGIN: &str = "web";

/// Live sessions by user and target.
type LiveMap = Arc<Mutex<HashMap<(UserId, String), Arc<HttpSession>>>>;

pub struct HttpSession {
    pub handle: SessionHandle,
    pub connection: HttpConnection,
    /// Open websockets; the session is sealed after they have recorded their end.
    pub websockets: tokio::sync::watch::Sender<usize>,
    /// The last recording channel handed to a request's bodies.
    channels: AtomicU32,
}

impl HttpSession {
    /// A recording channel of its own for the next request's bodies.
    pub fn next_channel(&self) -> u32 {
        self.channels.fetch_add(1, Ordering::Relaxed) + 1
    }
}

pub struct Sessions {
    pipeline: Arc<Pipeline>,
    live: LiveMap,
}

impl Sessions {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Sessions {
            pipeline,
            live: Arc::default(),
        }
    }

    fn cached(&self, key: &(UserId, String)) -> Option<Arc<HttpSession>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(key).filter(|s| !s.handle.is_ended()).cloned()
    }

    pub async fn get_or_open(
        &self,
        identity: &Identity,
        target: &str,
        upstream: &HttpUpstream,
    ) -> Result<Arc<HttpSession>, Response<Body>> {
        let key = (identity.user().id, target.to_string());
        if let Some(session) = self.cached(&key) {
            return Ok(session);
        }
        let login = self
            .pipeline
            .access()
            .granted_login(identity, target, time::now())
            .await
            .unwrap_or_else(|| DEFAULT_LOGIN.to_string());
        let established = self
            .pipeline
            .open(identity.clone(), target, &login, upstream)
            .await
            .map_err(|e| refusal(&e))?;
        let session = Arc::new(HttpSession {
            handle: established.session,
            connection: established.connection,
            websockets: tokio::sync::watch::channel(0).0,
            channels: AtomicU32::new(0),
        });
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), session.clone());
        tokio::spawn(seal_when_ended(self.live.clone(), key, session.clone()));
        Ok(session)
    }
}

/// Seals the recording and forgets the session once it is ended (grant end,
/// revoke, disable, shutdown).
async fn seal_when_ended(live: LiveMap, key: (UserId, String), session: Arc<HttpSession>) {
    let reason = session.handle.live().ended().await.to_string();
    // Let open websockets close and record it first; bounded, so a stuck one
    // cannot hold the recording open.
    let mut open = session.websockets.subscribe();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        open.wait_for(|n| *n == 0),
    )
    .await;
    {
        let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(&key).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            live.remove(&key);
        }
    }
    session.handle.finish(&reason).await;
}

fn refusal(e: &SessionError) -> Response<Body> {
    let status = match (e, e.side()) {
        (SessionError::Access(AccessError::UnknownTarget(_)), _) => StatusCode::NOT_FOUND,
        (_, Side::Downstream) => StatusCode::FORBIDDEN,
        (_, Side::Upstream) => StatusCode::BAD_GATEWAY,
        (_, Side::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::info!(error = %e, side = ?e.side(), "http session refused");
    json_error(status, &e.client_message())
}
