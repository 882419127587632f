//! Recording keys: the Ed25519 key the gateway seals recordings with, and the [`KeyRing`] of
//! public keys a verifier trusts.
//!
//! Keys rotate: every seal names its key by id (first 8 bytes of SHA-256 of the 32-byte
//! public key, lowercase hex), and a verifier keeps every public key that was ever in use.
//! Public keys travel as one text line each: `drawbridge-rec-ed25519 <64 hex digits>`,
//! optionally followed by a space and a comment.

use std::collections::BTreeMap;
use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::RecordingError;
use super::format::{hex, sha256, unhex};

/// The first word of a public key line.
pub const PUBLIC_KEY_TAG: &str = "drawbridge-rec-ed25519";

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Key id of a public key: the first 8 bytes of its SHA-256, as 16 lowercase hex digits.
pub fn key_id_of(public_key: &[u8]) -> String {
    hex(&sha256(public_key)[..8])
}

/// The gateway's signing key for recording seals.
pub struct RecordingKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for RecordingKey {
    // Never print private key material; the id is enough to tell keys apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl RecordingKey {
    /// Generates a new key. Returns the key and its PKCS#8 (v2) document, which the caller
    /// stores (mode 0600) to load the key again with [`RecordingKey::from_pkcs8`].
    pub fn generate() -> Result<(RecordingKey, Vec<u8>), RecordingError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| RecordingError::Key("random generator failed".into()))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Loads a key from a PKCS#8 document (v1 or v2, as written by `generate` or by
    /// `openssl genpkey -algorithm ed25519 -outform DER`).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<RecordingKey, RecordingError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| RecordingError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(RecordingKey { pair, key_id })
    }

    /// 16 lowercase hex digits naming this key in seals and key rings.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a key-ring line (`drawbridge-rec-ed25519 <hex>`).
    pub fn public_key_line(&self) -> String {
        format_public_key(self.public_key_bytes())
    }

    /// Signs `message` (the seal's signature input); 64 bytes.
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Formats a public key as one line (no newline): `drawbridge-rec-ed25519 <64 hex digits>`.
pub fn format_public_key(public_key: &[u8]) -> String {
    format!("{PUBLIC_KEY_TAG} {}", hex(public_key))
}

/// Parses one public key line; a trailing comment after the key is allowed.
pub fn parse_public_key(line: &str) -> Result<[u8; PUBLIC_KEY_LEN], RecordingError> {
    let mut words = line.split_whitespace();
    let bad = |why: &str| RecordingError::Key(format!("bad public key line: {why}"));
    if words.next() != Some(PUBLIC_KEY_TAG) {
        return Err(bad(&format!(
            "expected it to start with `{PUBLIC_KEY_TAG}`"
        )));
    }
    let hex_key = words.next().ok_or_else(|| bad("missing key"))?;
    let bytes = unhex(hex_key).ok_or_else(|| bad("key is not hex"))?;
    <[u8; PUBLIC_KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| bad("key is not 32 bytes (64 hex digits)"))
}

/// Public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, [u8; PUBLIC_KEY_LEN]>,
}

impl KeyRing {
    /// An empty key ring (verifies nothing).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds a 32-byte Ed25519 public key; returns its key id.
    pub fn insert(&mut self, public_key: &[u8]) -> Result<String, RecordingError> {
        let key = <[u8; PUBLIC_KEY_LEN]>::try_from(public_key).map_err(|_| {
            RecordingError::Key(format!(
                "Ed25519 public key must be 32 bytes, got {}",
                public_key.len()
            ))
        })?;
        let id = key_id_of(&key);
        self.keys.insert(id.clone(), key);
        Ok(id)
    }

    /// The public key with this id, if trusted.
    pub fn get(&self, key_id: &str) -> Option<&[u8]> {
        self.keys.get(key_id).map(|k| k.as_slice())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Parses a key-ring file: one public key line each; blank lines and lines starting
    /// with `#` are ignored. Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<KeyRing, RecordingError> {
        let mut ring = KeyRing::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_public_key(line)
                .map_err(|e| RecordingError::Key(format!("line {}: {e}", n + 1)))?;
            ring.insert(&key)?;
        }
        Ok(ring)
    }

    /// The key-ring file text: one line per key, sorted by id, each ending in a newline.
    pub fn to_text(&self) -> String {
        self.keys
            .values()
            .map(|k| format_public_key(k) + "\n")
            .collect()
    }

    /// Checks an Ed25519 `signature` over `message` by the key `key_id`.
    pub fn verify(&self, key_id: &str, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let key = self
            .get(key_id)
            .ok_or_else(|| format!("unknown key id {key_id} (not in the key ring)"))?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(message, signature)
            .map_err(|_| format!("invalid signature by key {key_id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_reload_sign_verify() {
        let (key, pkcs8) = RecordingKey::generate().expect("generate");
        let again = RecordingKey::from_pkcs8(&pkcs8).expect("reload");
        assert_eq!(key.key_id(), again.key_id());
        assert_eq!(key.key_id().len(), 16);
        assert_eq!(key.public_key_bytes().len(), 32);
        assert!(!format!("{key:?}").contains(&hex(&pkcs8)));

        let mut ring = KeyRing::new();
        assert_eq!(
            ring.insert(key.public_key_bytes()).expect("insert"),
            key.key_id()
        );
        let sig = key.sign(b"msg");
        assert!(ring.verify(key.key_id(), b"msg", &sig).is_ok());
        assert!(ring.verify(key.key_id(), b"msh", &sig).is_err());
        assert!(ring.verify("0000000000000000", b"msg", &sig).is_err());
    }

    #[test]
    fn text_form_round_trip() {
        let (a, _) = RecordingKey::generate().expect("generate");
        let (b, _) = RecordingKey::generate().expect("generate");
        let text = format!(
            "# gateway keys\n\n{} old key\n{}\n",
            a.public_key_line(),
            b.public_key_line()
        );
        let ring = KeyRing::parse(&text).expect("parse");
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.get(a.key_id()), Some(a.public_key_bytes()));
        assert_eq!(KeyRing::parse(&ring.to_text()).expect("reparse"), ring);
    }

    #[test]
    fn bad_lines_rejected() {
        for line in [
            "ssh-ed25519 00",
            "drawbridge-rec-ed25519",
            "drawbridge-rec-ed25519 xyz",
            "drawbridge-rec-ed25519 0011",
        ] {
            assert!(parse_public_key(line).is_err(), "{line}");
        }
        let err = KeyRing::parse("\nbogus\n").expect_err("bad ring");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(RecordingKey::from_pkcs8(b"not a key").is_err());
        assert!(KeyRing::new().insert(&[0u8; 31]).is_err());
    }
}
