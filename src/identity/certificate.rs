//! Engineers' SSH user certificates: `drawbridge login` has the engineer's own
//! public key signed for a working day, so stock `ssh` logs in to the gateway
//! without registering keys one by one.
//!
//! The signing key is the gateway's *engineer CA*, a key of its own: targets trust
//! the upstream user CA, never this one, so an engineer's certificate opens the
//! gateway and nothing behind it.

use std::time::Duration;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, PrivateKey, PublicKey};

use super::{Identity, IdentityError, enabled, fingerprint};
use crate::cert_check::{self, CertificateProblem};
use crate::store::Store;
use crate::time::UnixTime;

/// Clock skew allowance, as for the upstream certificates.
const BACKDATE_SECS: u64 = 30;

/// Signs engineers' keys with the engineer CA.
pub struct EngineerCa {
    key: PrivateKey,
    validity: Duration,
}

/// A freshly signed certificate and what the audit log says about it.
pub struct IssuedCertificate {
    pub certificate: Certificate,
    pub serial: u64,
    pub key_id: String,
}

impl EngineerCa {
    pub fn new(key: PrivateKey, validity: Duration) -> Self {
        EngineerCa { key, validity }
    }

    /// The public half, which the SSH front trusts.
    pub fn public_key(&self) -> KeyData {
        self.key.public_key().key_data().clone()
    }

    /// A user certificate for `key`, principal = the Drawbridge user name, key id
    /// naming the user and a random serial. No extensions: what a session may do is
    /// the policy's decision, not the certificate's.
    pub fn issue(
        &self,
        identity: &Identity,
        key: &PublicKey,
        now: UnixTime,
    ) -> Result<IssuedCertificate, IdentityError> {
        let err = |e: &dyn std::fmt::Display| IdentityError::Internal(e.to_string());
        let nonce = crate::keys::random_bytes::<32>().map_err(|e| err(&e))?;
        // Never 0: OpenSSH treats serial 0 as "no serial" in revocation lists.
        // 63 bits, so it survives JSON readers that use doubles or i64.
        let random = u64::from_be_bytes(crate::keys::random_bytes::<8>().map_err(|e| err(&e))?);
        let serial = (random >> 1).max(1);
        let key_id = format!("drawbridge user={} serial={serial}", identity.name());
        let now = now.max(0) as u64;
        let mut builder = Builder::new(
            nonce.to_vec(),
            key.key_data().clone(),
            now.saturating_sub(BACKDATE_SECS),
            now + self.validity.as_secs(),
        )
        .map_err(|e| err(&e))?;
        builder
            .serial(serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(key_id.clone()))
            .and_then(|b| b.valid_principal(identity.name()))
            .and_then(|b| b.comment(format!("{}@drawbridge", identity.name())))
            .map_err(|e| err(&e))?;
        let certificate = builder.sign(&self.key).map_err(|e| err(&e))?;
        Ok(IssuedCertificate {
            certificate,
            serial,
            key_id,
        })
    }
}

/// The user a certificate names, when the engineer CA signed it, it is a user
/// certificate valid at `now` naming exactly one principal, and that principal is
/// an enabled user. SSH has already verified possession of the certified key.
pub async fn by_certificate(
    store: &dyn Store,
    cert: &Certificate,
    engineer_ca: &KeyData,
    now: UnixTime,
) -> Result<Identity, IdentityError> {
    cert_check::check(cert, CertType::User, std::slice::from_ref(engineer_ca), now)?;
    let [name] = cert.valid_principals() else {
        return Err(match cert.valid_principals() {
            [] => CertificateProblem::NoPrincipals.into(),
            many => IdentityError::CertificatePrincipals(many.join(", ")),
        });
    };
    let Some(creds) = store.user_by_name(name).await? else {
        return Err(IdentityError::CertificateUser(name.clone()));
    };
    let mut identity = enabled(creds.user, "certificate")?;
    identity.detail = format!(
        "serial={} id={:?} key {}",
        cert.serial(),
        cert.key_id(),
        fingerprint(&PublicKey::from(cert.public_key().clone()))
    );
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewUser, SqliteStore};

    async fn store_with(names: &[&str]) -> SqliteStore {
        let store = SqliteStore::in_memory().expect("store");
        for name in names {
            store
                .create_user(NewUser {
                    name: name.to_string(),
                    groups: vec![],
                    admin: false,
                    email: None,
                    password_hash: None,
                    totp_secret: None,
                    ssh_keys: vec![],
                })
                .await
                .expect("create");
        }
        store
    }

    async fn identity(store: &SqliteStore, name: &str) -> Identity {
        let creds = store.user_by_name(name).await.expect("read").expect("user");
        enabled(creds.user, "test").expect("enabled")
    }

    const NOW: UnixTime = 1_800_000_000;

    #[tokio::test]
    async fn an_issued_certificate_identifies_its_user_until_it_expires() {
        let store = store_with(&["alice"]).await;
        let ca = EngineerCa::new(
            crate::keys::new_ed25519().expect("ca"),
            Duration::from_secs(3600),
        );
        let engineer = crate::keys::new_ed25519().expect("key");
        let alice = identity(&store, "alice").await;
        let issued = ca.issue(&alice, engineer.public_key(), NOW).expect("issue");
        assert!(issued.key_id.starts_with("drawbridge user=alice serial="));
        assert_eq!(issued.certificate.serial(), issued.serial);
        let who = by_certificate(&store, &issued.certificate, &ca.public_key(), NOW + 60)
            .await
            .expect("accepted");
        assert_eq!(who.name(), "alice");
        assert!(
            who.describe().contains(&issued.key_id),
            "{}",
            who.describe()
        );
        let late = by_certificate(&store, &issued.certificate, &ca.public_key(), NOW + 3600).await;
        assert!(
            matches!(
                late,
                Err(IdentityError::Certificate(CertificateProblem::Expired(_)))
            ),
            "{late:?}"
        );
        store
            .set_user_disabled("alice", true, NOW)
            .await
            .expect("disable");
        let disabled = by_certificate(&store, &issued.certificate, &ca.public_key(), NOW).await;
        assert!(matches!(disabled, Err(IdentityError::Disabled(_))));
    }

    #[tokio::test]
    async fn a_certificate_for_an_unknown_user_or_from_another_ca_is_refused() {
        let store = store_with(&["alice"]).await;
        let key = || crate::keys::new_ed25519().expect("key");
        let ca = EngineerCa::new(key(), Duration::from_secs(3600));
        let other = EngineerCa::new(key(), Duration::from_secs(3600));
        let alice = identity(&store, "alice").await;
        let foreign = other.issue(&alice, key().public_key(), NOW).expect("issue");
        let r = by_certificate(&store, &foreign.certificate, &ca.public_key(), NOW).await;
        assert!(matches!(
            r,
            Err(IdentityError::Certificate(
                CertificateProblem::UnknownAuthority { .. }
            ))
        ));
        store
            .create_user(NewUser {
                name: "mallory".into(),
                groups: vec![],
                admin: false,
                email: None,
                password_hash: None,
                totp_secret: None,
                ssh_keys: vec![],
            })
            .await
            .expect("mallory");
        let mallory = identity(&store, "mallory").await;
        let issued = ca.issue(&mallory, key().public_key(), NOW).expect("issue");
        let fresh = store_with(&["alice"]).await;
        let r = by_certificate(&fresh, &issued.certificate, &ca.public_key(), NOW).await;
        assert!(matches!(r, Err(IdentityError::CertificateUser(name)) if name == "mallory"));
    }
}
