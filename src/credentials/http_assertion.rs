//! Signed identity assertions for HTTP upstreams: a JWT (EdDSA / Ed25519) naming
//! the user, the target (audience), the granted login and the session, valid for
//! at most five minutes and never past the grant's end. Upstreams verify it with
//! the public keys served at `/.well-known/jwks.json`.
//!
//! One assertion is reused until shortly before it expires, so signing is not on
//! the per-request path; it is kept as a ready header value, so reusing it
//! copies nothing.

use std::sync::{Arc, Mutex};

use base64ct::{Base64UrlUnpadded, Encoding};
use hyper::header::HeaderValue;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

use super::CredentialError;
use crate::access::Authorization;
use crate::time::UnixTime;

/// Longest validity of one assertion.
pub const MAX_TTL_SECS: i64 = 300;
/// Re-sign when less than this remains, so a request never carries an assertion
/// that expires in flight.
const REFRESH_SECS: i64 = 60;

/// The gateway's assertion signing key.
pub struct AssertionSigner {
    key: Ed25519KeyPair,
    key_id: String,
    issuer: String,
}

impl AssertionSigner {
    pub fn from_pkcs8(pkcs8: &[u8], issuer: &str) -> Result<Self, CredentialError> {
        let key =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| CredentialError::Mint(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let key_id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(AssertionSigner {
            key,
            key_id,
            issuer: issuer.to_string(),
        })
    }

    /// The JWKS document (RFC 7517, OKP key type for Ed25519 per RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.key_id,
                "x": Base64UrlUnpadded::encode_string(self.key.public_key().as_ref()),
            }]
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, CredentialError> {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.key_id });
        let encode = |v: &dyn erased::Json| -> Result<String, CredentialError> {
            Ok(Base64UrlUnpadded::encode_string(
                &v.to_vec()
                    .map_err(|e| CredentialError::Mint(e.to_string()))?,
            ))
        };
        let signing_input = format!("{}.{}", encode(&header)?, encode(claims)?);
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            Base64UrlUnpadded::encode_string(signature.as_ref())
        ))
    }

    /// A credential for one HTTP session, built from its authorization.
    pub fn for_session(self: &Arc<Self>, auth: &Authorization, session_id: &str) -> HttpCredential {
        HttpCredential {
            signer: self.clone(),
            template: Claims {
                iss: self.issuer.clone(),
                sub: auth.identity().name().to_string(),
                aud: auth.target().name.clone(),
                iat: 0,
                exp: 0,
                jti: String::new(),
                login: auth.login().to_string(),
                groups: auth.identity().user().groups.clone(),
                email: auth.identity().user().email.clone(),
                session: session_id.to_string(),
                grant: auth.grant().map(|g| g.id()),
            },
            not_after: auth.grant().map(|g| g.ends_at()),
            cached: Mutex::new(None),
        }
    }
}

/// Serialising two different types through one closure.
mod erased {
    pub trait Json {
        fn to_vec(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

#[derive(Clone, Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: UnixTime,
    exp: UnixTime,
    jti: String,
    /// The granted login/role on the target.
    login: String,
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    /// The Drawbridge session, so the app's logs can be joined with ours.
    session: String,
    grant: Option<i64>,
}

/// Mints the session's assertions on demand.
pub struct HttpCredential {
    signer: Arc<AssertionSigner>,
    template: Claims,
    not_after: Option<UnixTime>,
    cached: Mutex<Option<(HeaderValue, UnixTime)>>,
}

impl std::fmt::Debug for HttpCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCredential")
            .field("sub", &self.template.sub)
            .field("aud", &self.template.aud)
            .finish_non_exhaustive()
    }
}

impl HttpCredential {
    /// A valid assertion: the cached one while it has a minute left, else a new
    /// one expiring in five minutes or at the grant's end, whichever is first.
    pub fn assertion(&self, now: UnixTime) -> Result<HeaderValue, CredentialError> {
        if self.not_after.is_some_and(|end| end <= now) {
            return Err(CredentialError::Mint("the grant has ended".into()));
        }
        // Held for a reference-count bump or one signature (tens of microseconds),
        // never across IO.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, exp)) = cached.as_ref() {
            // One capped by the grant's end cannot be improved on: keep it while valid.
            let capped_by_grant = self.not_after == Some(*exp);
            if *exp - now > REFRESH_SECS || (capped_by_grant && *exp > now) {
                return Ok(jwt.clone());
            }
        }
        let exp = self
            .not_after
            .map_or(now + MAX_TTL_SECS, |end| end.min(now + MAX_TTL_SECS));
        let jti = crate::keys::random_bytes::<12>()
            .map_err(|e| CredentialError::Mint(e.to_string()))?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let claims = Claims {
            iat: now,
            exp,
            jti,
            ..self.template.clone()
        };
        // Base64url and dots only, so always a valid header value.
        let jwt = HeaderValue::try_from(self.signer.sign(&claims)?)
            .map_err(|e| CredentialError::Mint(e.to_string()))?;
        *cached = Some((jwt.clone(), exp));
        Ok(jwt)
    }

    pub fn user(&self) -> &str {
        &self.template.sub
    }

    pub fn groups(&self) -> &[String] {
        &self.template.groups
    }

    pub fn email(&self) -> Option<&str> {
        self.template.email.as_deref()
    }

    /// The granted login on the target.
    pub fn login(&self) -> &str {
        &self.template.login
    }

    /// The target (the assertion's audience).
    pub fn target(&self) -> &str {
        &self.template.aud
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(not_after: Option<UnixTime>) -> HttpCredential {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        let signer = AssertionSigner::from_pkcs8(pkcs8.as_ref(), "drawbridge").expect("signer");
        HttpCredential {
            signer: Arc::new(signer),
            template: Claims {
                iss: "drawbridge".into(),
                sub: "alice".into(),
                aud: "grafana".into(),
                iat: 0,
                exp: 0,
                jti: String::new(),
                login: "viewer".into(),
                groups: vec!["dev".into()],
                email: None,
                session: "s-1".into(),
                grant: Some(7),
            },
            not_after,
            cached: Mutex::new(None),
        }
    }

    fn claims(jwt: &HeaderValue) -> serde_json::Value {
        let jwt = jwt.to_str().expect("ascii");
        let payload = jwt.split('.').nth(1).expect("a payload");
        let json = Base64UrlUnpadded::decode_vec(payload).expect("base64url");
        serde_json::from_slice(&json).expect("json claims")
    }

    #[test]
    fn one_assertion_serves_until_a_minute_before_it_expires() {
        let credential = credential(None);
        let t0 = 1_800_000_000;
        let first = credential.assertion(t0).expect("minted");
        assert_eq!(claims(&first)["exp"], t0 + MAX_TTL_SECS);
        assert_eq!(credential.assertion(t0 + 1).expect("minted"), first);
        let last_reuse = t0 + MAX_TTL_SECS - REFRESH_SECS - 1;
        assert_eq!(credential.assertion(last_reuse).expect("minted"), first);

        let renewed = credential.assertion(last_reuse + 1).expect("minted");
        assert_ne!(renewed, first);
        let renewed_claims = claims(&renewed);
        assert_eq!(renewed_claims["exp"], last_reuse + 1 + MAX_TTL_SECS);
        assert_ne!(renewed_claims["jti"], claims(&first)["jti"]);
    }

    #[test]
    fn an_assertion_capped_by_the_grant_serves_to_the_grant_end_and_none_after() {
        let t0 = 1_800_000_000;
        let end = t0 + 100;
        let credential = credential(Some(end));
        let first = credential.assertion(t0).expect("minted");
        assert_eq!(claims(&first)["exp"], end);
        assert_eq!(credential.assertion(end - 1).expect("minted"), first);
        assert!(credential.assertion(end).is_err());
        assert!(credential.assertion(end + 1).is_err());
    }
}
