//! Tokens the HTTP front verified a moment ago. Every request carries its token
//! (bearer or cookie), and checking it in the store is a SQLite read
//! transaction, file locks included, per request; that was the largest cost of
//! a proxied request. A verified token is trusted again for at most [`TTL`],
//! the same bound as a revoke reaching a live HTTP session. Refused tokens are
//! never remembered, and tokens are kept by their SHA-256, not their value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::identity::{self, Identity};
use crate::store::Store;
use crate::time;

/// How long a verified token is trusted without asking the store again.
pub const TTL: Duration = Duration::from_secs(1);

/// Past this many entries, expired ones are dropped on the next insert.
const PRUNE_ABOVE: usize = 4096;

type Digest = [u8; 32];

#[derive(Default)]
pub struct RecentTokens {
    verified: Mutex<HashMap<Digest, (Identity, Instant)>>,
}

impl RecentTokens {
    /// The identity `token` belongs to, from memory when verified within
    /// [`TTL`], else from the store; `None` for an unknown, expired or revoked
    /// token or a disabled user.
    pub async fn identify(&self, store: &dyn Store, token: &str) -> Option<Identity> {
        let key = digest(token);
        let now = Instant::now();
        if let Some(identity) = self.recent(&key, now) {
            return Some(identity);
        }
        let identity = identity::by_token(store, token, time::now()).await.ok()?;
        self.remember(key, identity.clone(), now);
        Some(identity)
    }

    fn recent(&self, key: &Digest, now: Instant) -> Option<Identity> {
        // Held for a lookup and a clone, never across an await.
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let (identity, at) = verified.get(key)?;
        (now.duration_since(*at) < TTL).then(|| identity.clone())
    }

    fn remember(&self, key: Digest, identity: Identity, now: Instant) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= PRUNE_ABOVE {
            verified.retain(|_, (_, at)| now.duration_since(*at) < TTL);
        }
        verified.insert(key, (identity, now));
    }
}

fn digest(token: &str) -> Digest {
    let mut key = [0u8; 32];
    key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    key
}
