//! Stage 1, identify: who is this? Checks SSH keys, passwords, TOTP codes and login
//! tokens against the store and hands back an [`Identity`].
//!
//! Architecture invariant: an [`Identity`] can only be made in this module, after a
//! check succeeded and the user was found enabled, so every later stage can take one
//! as proof.

mod certificate;
mod limiter;
mod password;
mod token;
mod totp;

pub use certificate::{EngineerCa, IssuedCertificate, by_certificate};
pub use limiter::{FailureLimiter, LimiterConfig, Subject};
pub use password::hash_password;
pub use token::LoginToken;
pub use totp::{TotpSecret, totp_code};

use russh::keys::ssh_key::{HashAlg, PublicKey};

use crate::secret::Secret;
use crate::store::{Store, StoreError, User};
use crate::time::UnixTime;

/// A user whose identity was verified just now.
#[derive(Debug, Clone)]
pub struct Identity {
    user: User,
    method: &'static str,
    /// Which key or certificate, for the audit log; empty when there is nothing to add.
    detail: String,
}

impl Identity {
    pub fn user(&self) -> &User {
        &self.user
    }
    pub fn name(&self) -> &str {
        &self.user.name
    }
    /// How the user proved it ("publickey", "token", "password+totp"), for audit.
    pub fn method(&self) -> &'static str {
        self.method
    }
    /// The method and the credential used, e.g. `certificate serial=7 id="…" key SHA256:…`.
    pub fn describe(&self) -> String {
        if self.detail.is_empty() {
            return self.method.to_string();
        }
        format!("{} {}", self.method, self.detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Deliberately vague: a client must not learn which part was wrong.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("user {0} is disabled")]
    Disabled(String),
    #[error("certificate refused: it {0}")]
    Certificate(#[from] crate::cert_check::CertificateProblem),
    #[error("certificate refused: it names several principals ({0}), not one user")]
    CertificatePrincipals(String),
    #[error("certificate refused: it names {0}, who is not a Drawbridge user")]
    CertificateUser(String),
    /// Tokens for people come only from a password and TOTP login.
    #[error("{0} logs in with a password and TOTP: only service accounts get tokens this way")]
    NotServiceAccount(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The SHA-256 fingerprint that keys are looked up by.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn enabled(user: User, method: &'static str) -> Result<Identity, IdentityError> {
    if user.disabled {
        return Err(IdentityError::Disabled(user.name));
    }
    Ok(Identity {
        user,
        method,
        detail: String::new(),
    })
}

/// The owner of a public key whose possession SSH has already verified.
pub async fn by_public_key(store: &dyn Store, key: &PublicKey) -> Result<Identity, IdentityError> {
    let fingerprint = fingerprint(key);
    match store.user_by_key_fingerprint(&fingerprint).await? {
        Some(user) => {
            let mut identity = enabled(user, "publickey")?;
            identity.detail = fingerprint;
            Ok(identity)
        }
        None => Err(IdentityError::InvalidCredentials),
    }
}

/// Password and TOTP code, both required. A TOTP code is accepted once: the step
/// it belongs to is burnt, so a replayed code is refused.
pub async fn by_password_totp(
    store: &dyn Store,
    name: &str,
    password: &Secret<String>,
    code: &str,
    now: UnixTime,
) -> Result<Identity, IdentityError> {
    let Some(creds) = store.user_by_name(name).await? else {
        // Hash anyway so an unknown name costs the same time as a wrong password.
        password::verify_dummy(password);
        return Err(IdentityError::InvalidCredentials);
    };
    let password_ok = creds
        .password_hash
        .as_deref()
        .is_some_and(|hash| password::verify(hash, password));
    let step = creds
        .totp_secret
        .as_deref()
        .and_then(|secret| totp::matching_step(secret, code, now));
    let (true, Some(step)) = (password_ok, step) else {
        return Err(IdentityError::InvalidCredentials);
    };
    if !store.use_totp_step(creds.user.id, step).await? {
        return Err(IdentityError::InvalidCredentials);
    }
    enabled(creds.user, "password+totp")
}

/// A TOTP code from an already identified user, as a second factor (SSH MFA).
/// Single use, like at login.
pub async fn second_factor(
    store: &dyn Store,
    identity: &Identity,
    code: &str,
    now: UnixTime,
) -> Result<(), IdentityError> {
    let creds = store
        .user_by_name(identity.name())
        .await?
        .ok_or(IdentityError::InvalidCredentials)?;
    let step = creds
        .totp_secret
        .as_deref()
        .and_then(|secret| totp::matching_step(secret, code, now))
        .ok_or(IdentityError::InvalidCredentials)?;
    if !store.use_totp_step(creds.user.id, step).await? {
        return Err(IdentityError::InvalidCredentials);
    }
    if creds.user.disabled {
        return Err(IdentityError::Disabled(creds.user.name));
    }
    Ok(())
}

/// The holder of a login token that has not expired.
pub async fn by_token(
    store: &dyn Store,
    token: &str,
    now: UnixTime,
) -> Result<Identity, IdentityError> {
    match store.user_by_token(&token::hash(token), now).await? {
        Some(user) => enabled(user, "token"),
        None => Err(IdentityError::InvalidCredentials),
    }
}

/// Issues a login token for a freshly verified identity.
pub async fn issue_token(
    store: &dyn Store,
    identity: &Identity,
    ttl_secs: i64,
    now: UnixTime,
) -> Result<LoginToken, IdentityError> {
    let token = LoginToken::generate().map_err(|e| IdentityError::Internal(e.to_string()))?;
    let expires_at = now + ttl_secs;
    store
        .insert_token(
            &token::hash(token.value().expose()),
            identity.user.id,
            expires_at,
        )
        .await?;
    Ok(token.with_expiry(expires_at))
}

/// A token for the service account `name`: a user with no password and no TOTP
/// secret, who therefore cannot log in on the web page or with `drawbridge
/// login`. Issued by an admin on the gateway host; only its hash is stored.
pub async fn issue_service_token(
    store: &dyn Store,
    name: &str,
    ttl_secs: i64,
    now: UnixTime,
) -> Result<LoginToken, IdentityError> {
    let creds = store
        .user_by_name(name)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {name}")))?;
    if creds.password_hash.is_some() || creds.totp_secret.is_some() {
        return Err(IdentityError::NotServiceAccount(name.to_string()));
    }
    let identity = enabled(creds.user, "service-account")?;
    issue_token(store, &identity, ttl_secs, now).await
}

/// Re-reads the user, for checks long after the identity was made (live sessions).
pub async fn still_enabled(store: &dyn Store, identity: &Identity) -> Result<bool, StoreError> {
    Ok(store
        .user_by_id(identity.user.id)
        .await?
        .is_some_and(|u| !u.disabled))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{NewUser, SqliteStore};

    /// Creates alice, password `pw`, TOTP with `secret`.
    pub(crate) async fn alice(store: &SqliteStore, secret: &TotpSecret) {
        store
            .create_user(NewUser {
                name: "alice".into(),
                groups: vec![],
                admin: false,
                email: None,
                password_hash: Some(hash_password(&Secret::new("pw".into())).expect("hash")),
                totp_secret: Some(secret.bytes().to_vec()),
                ssh_keys: vec![],
            })
            .await
            .expect("create");
    }

    #[tokio::test]
    async fn password_and_totp_log_in_once_and_replay_is_refused() {
        let store = SqliteStore::in_memory().expect("store");
        let secret = TotpSecret::generate().expect("secret");
        alice(&store, &secret).await;
        let now = 1_700_000_000;
        let code = totp_code(secret.bytes(), now);
        let pw = Secret::new("pw".to_string());
        let id = by_password_totp(&store, "alice", &pw, &code, now)
            .await
            .expect("login");
        assert_eq!(id.name(), "alice");
        let again = by_password_totp(&store, "alice", &pw, &code, now).await;
        assert!(matches!(again, Err(IdentityError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn wrong_password_wrong_code_unknown_user_are_refused() {
        let store = SqliteStore::in_memory().expect("store");
        let secret = TotpSecret::generate().expect("secret");
        alice(&store, &secret).await;
        let now = 1_700_000_000;
        let code = totp_code(secret.bytes(), now);
        let bad_code = if code == "000000" { "000001" } else { "000000" };
        let pw = Secret::new("pw".to_string());
        let wrong = Secret::new("nope".to_string());
        for (name, pw, code) in [
            ("alice", &wrong, code.as_str()),
            ("alice", &pw, bad_code),
            ("mallory", &pw, code.as_str()),
        ] {
            let r = by_password_totp(&store, name, pw, code, now).await;
            assert!(
                matches!(r, Err(IdentityError::InvalidCredentials)),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn tokens_expire_and_die_with_a_disabled_user() {
        let store = SqliteStore::in_memory().expect("store");
        let secret = TotpSecret::generate().expect("secret");
        alice(&store, &secret).await;
        let now = 1_700_000_000;
        let code = totp_code(secret.bytes(), now);
        let id = by_password_totp(&store, "alice", &Secret::new("pw".into()), &code, now)
            .await
            .expect("login");
        let token = issue_token(&store, &id, 60, now).await.expect("token");
        let value = token.value().expose().clone();
        assert!(by_token(&store, &value, now + 59).await.is_ok());
        assert!(by_token(&store, &value, now + 60).await.is_err());
        store
            .set_user_disabled("alice", true, now)
            .await
            .expect("disable");
        assert!(by_token(&store, &value, now + 1).await.is_err());
    }

    #[tokio::test]
    async fn service_tokens_only_for_users_without_password_or_totp() {
        let store = SqliteStore::in_memory().expect("store");
        alice(&store, &TotpSecret::generate().expect("secret")).await;
        store
            .create_user(NewUser {
                name: "ci-bot".into(),
                groups: vec![],
                admin: false,
                email: None,
                password_hash: None,
                totp_secret: None,
                ssh_keys: vec![],
            })
            .await
            .expect("create");
        let now = 1_700_000_000;
        let token = issue_service_token(&store, "ci-bot", 60, now)
            .await
            .expect("token");
        let id = by_token(&store, token.value().expose(), now + 1)
            .await
            .expect("the token identifies the service account");
        assert_eq!(id.name(), "ci-bot");
        assert!(
            by_token(&store, token.value().expose(), now + 60)
                .await
                .is_err()
        );
        let person = issue_service_token(&store, "alice", 60, now).await;
        assert!(matches!(person, Err(IdentityError::NotServiceAccount(_))));
        let unknown = issue_service_token(&store, "nobody", 60, now).await;
        assert!(matches!(
            unknown,
            Err(IdentityError::Store(StoreError::NotFound(_)))
        ));
        store
            .set_user_disabled("ci-bot", true, now)
            .await
            .expect("disable");
        let disabled = issue_service_token(&store, "ci-bot", 60, now).await;
        assert!(matches!(disabled, Err(IdentityError::Disabled(_))));
    }
}
