//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps), as authenticator apps expect.

use totp_rs::{Algorithm, TOTP};

use crate::time::UnixTime;

const STEP: u64 = 30;
const DIGITS: usize = 6;

/// 20 random bytes, shown to the user once as base32 for their authenticator.
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    pub fn generate() -> Result<Self, String> {
        Ok(TotpSecret(
            crate::keys::random_bytes::<20>()
                .map_err(|e| e.to_string())?
                .to_vec(),
        ))
    }

    /// The secret as shown at enrolment (base32), e.g. for an authenticator or a test.
    pub fn from_base32(text: &str) -> Result<Self, String> {
        totp_rs::Secret::Encoded(text.trim().to_string())
            .to_bytes()
            .map(TotpSecret)
            .map_err(|e| format!("invalid TOTP secret: {e:?}"))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn base32(&self) -> String {
        totp(&self.0).get_secret_base32()
    }

    /// The `otpauth://` URI authenticator apps import (usually as a QR code).
    pub fn uri(&self, account: &str) -> String {
        format!(
            "otpauth://totp/Drawbridge:{account}?secret={}&issuer=Drawbridge&algorithm=SHA1&digits={DIGITS}&period={STEP}",
            self.base32()
        )
    }
}

fn totp(secret: &[u8]) -> TOTP {
    // `new_unchecked` because the 128-bit minimum check of `new` would reject
    // nothing we generate, and a store row is trusted input.
    TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 1, STEP, secret.to_vec())
}

/// The code for time `t`; used by tests and by `drawbridge user totp` helpers.
pub fn totp_code(secret: &[u8], t: UnixTime) -> String {
    totp(secret).generate(t.max(0) as u64)
}

/// The step (t / 30) whose code equals `code`, allowing one step of clock skew
/// either way; `None` when no step matches.
pub fn matching_step(secret: &[u8], code: &str, now: UnixTime) -> Option<i64> {
    let current = now.max(0) / STEP as i64;
    [current, current - 1, current + 1]
        .into_iter()
        .find(|step| constant_time_eq(&totp_code(secret, step * STEP as i64), code))
}

/// Compares without an early exit, so timing does not reveal how many leading
/// digits were right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s → 94287082 (8 digits); last 6 digits.
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59), "287082");
    }

    #[test]
    fn skew_of_one_step_is_accepted_two_is_not() {
        let secret = b"12345678901234567890";
        let now = 1_000_000_020;
        let previous = totp_code(secret, now - 30);
        assert_eq!(matching_step(secret, &previous, now), Some(now / 30 - 1));
        let old = totp_code(secret, now - 60);
        assert_eq!(matching_step(secret, &old, now), None);
    }
}
