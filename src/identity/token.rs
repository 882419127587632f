//! Login tokens: 32 random bytes shown once to the client; the store keeps only
//! their SHA-256, so a stolen database does not yield usable tokens.

use crate::secret::Secret;
use crate::time::UnixTime;

const PREFIX: &str = "dbt_";

pub struct LoginToken {
    value: Secret<String>,
    expires_at: UnixTime,
}

impl LoginToken {
    pub(super) fn generate() -> Result<Self, crate::keys::KeyError> {
        let bytes = crate::keys::random_bytes::<32>()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(LoginToken {
            value: Secret::new(format!("{PREFIX}{hex}")),
            expires_at: 0,
        })
    }

    pub(super) fn with_expiry(mut self, expires_at: UnixTime) -> Self {
        self.expires_at = expires_at;
        self
    }

    pub fn value(&self) -> &Secret<String> {
        &self.value
    }

    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
}

pub(super) fn hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}
