//! Tokens the HTTP front verified a moment ago. Every request carries its token
//! (bearer or cookie), and checking it in the store is a SQLite read
//! transaction, file locks included, per request; that was the largest cost of
//! a proxied request. A verified token is trusted again for at most [`TTL`],
//! the same bound as a revoke reaching a live HTTP session. Refused tokens are
//! never remembered (a refusal also forgets what was remembered), and tokens
//! are kept by their SHA-256, not their value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::identity::{self, Identity};
use crate::store::Store;
use crate::time;

/// How long a verified token is trusted without asking the store again.
pub const TTL: Duration = Duration::from_secs(1);

/// Past this age one request asks the store again while the others keep using
/// the remembered identity, so a busy token is re-verified before it expires
/// instead of every in-flight request missing at once when it does.
const REFRESH_AFTER: Duration = Duration::from_millis(500);

/// Past this many entries, expired ones are dropped on the next insert.
const PRUNE_ABOVE: usize = 4096;

type Digest = [u8; 32];

struct Verified {
    identity: Arc<Identity>,
    at: Instant,
    /// A request is re-verifying it.
    refreshing: bool,
}

#[derive(Default)]
pub struct RecentTokens {
    verified: Mutex<HashMap<Digest, Verified>>,
}

impl RecentTokens {
    /// The identity `token` belongs to, from memory when verified within
    /// [`TTL`], else from the store; `None` for an unknown, expired or revoked
    /// token or a disabled user.
    pub async fn identify(&self, store: &dyn Store, token: &str) -> Option<Arc<Identity>> {
        let key = digest(token);
        let now = Instant::now();
        if let Some(identity) = self.recent(&key, now) {
            return Some(identity);
        }
        match identity::by_token(store, token, time::now()).await {
            Ok(identity) => {
                let identity = Arc::new(identity);
                self.remember(key, identity.clone(), now);
                Some(identity)
            }
            Err(_) => {
                self.forget(&key);
                None
            }
        }
    }

    /// The remembered identity; `None` when the caller must ask the store
    /// (unknown, expired, or this caller is the one to re-verify it).
    fn recent(&self, key: &Digest, now: Instant) -> Option<Arc<Identity>> {
        // Held for a lookup, never across an await.
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let entry = verified.get_mut(key)?;
        let age = now.duration_since(entry.at);
        if age >= TTL || (age >= REFRESH_AFTER && !std::mem::replace(&mut entry.refreshing, true)) {
            return None;
        }
        Some(entry.identity.clone())
    }

    fn remember(&self, key: Digest, identity: Arc<Identity>, now: Instant) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= PRUNE_ABOVE {
            verified.retain(|_, v| now.duration_since(v.at) < TTL);
        }
        let entry = Verified {
            identity,
            at: now,
            refreshing: false,
        };
        verified.insert(key, entry);
    }

    /// A token the store refused is not trusted from memory either.
    fn forget(&self, key: &Digest) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified.remove(key);
    }
}

fn digest(token: &str) -> Digest {
    let mut key = [0u8; 32];
    key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TotpSecret;
    use crate::secret::Secret;
    use crate::store::SqliteStore;

    /// alice, and a login token of hers.
    async fn alice_token(store: &SqliteStore) -> String {
        let secret = TotpSecret::generate().expect("secret");
        identity::tests::alice(store, &secret).await;
        let now = time::now();
        let code = identity::totp_code(secret.bytes(), now);
        let password = Secret::new("pw".to_string());
        let alice = identity::by_password_totp(store, "alice", &password, &code, now)
            .await
            .expect("login");
        let token = identity::issue_token(store, &alice, 3600, now)
            .await
            .expect("token");
        token.value().expose().clone()
    }

    fn age(tokens: &RecentTokens, token: &str, by: Duration) {
        let mut verified = tokens.verified.lock().expect("lock");
        let entry = verified.get_mut(&digest(token)).expect("remembered");
        entry.at = entry.at.checked_sub(by).expect("instant");
    }

    #[tokio::test]
    async fn a_busy_token_is_reverified_by_one_caller_and_never_trusted_past_the_ttl() {
        let store = SqliteStore::in_memory().expect("store");
        let token = alice_token(&store).await;
        let tokens = RecentTokens::default();
        assert!(tokens.identify(&store, &token).await.is_some());
        store
            .set_user_disabled("alice", true, time::now())
            .await
            .expect("disable");
        assert!(
            tokens.identify(&store, &token).await.is_some(),
            "remembered for less than the TTL"
        );

        // Past half the TTL one caller is sent to the store, the others are not.
        age(&tokens, &token, REFRESH_AFTER);
        let key = digest(&token);
        assert!(tokens.recent(&key, Instant::now()).is_none());
        assert!(tokens.recent(&key, Instant::now()).is_some());
        assert!(tokens.recent(&key, Instant::now()).is_some());

        // Past the TTL everyone asks the store, which refuses the disabled user,
        // and the refusal also forgets what was remembered.
        age(&tokens, &token, TTL);
        assert!(tokens.identify(&store, &token).await.is_none());
        assert!(!tokens.verified.lock().expect("lock").contains_key(&key));
        assert!(tokens.identify(&store, "not-a-token").await.is_none());
    }
}
