//! Password hashing with Argon2id (PHC string format, parameters stored in the hash).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::secret::Secret;

pub fn hash_password(password: &Secret<String>) -> Result<String, String> {
    let salt_bytes = crate::keys::random_bytes::<16>().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify(hash: &str, password: &Secret<String>) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spends the time of one verification, so unknown users are not faster to refuse.
pub fn verify_dummy(password: &Secret<String>) {
    let _ = hash_password(password);
}
