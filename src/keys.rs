//! The gateway's own key material, made on first start and loaded afterwards:
//! SSH host key, SSH user CA (trusted by targets), SSH engineer CA (trusted by the
//! gateway's own SSH front only), recording signing key and the TLS certificate.
//! Private key files are written 0600 in a 0700 folder.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use russh::keys::ssh_key::{self, LineEnding, PrivateKey, private::Ed25519Keypair};

use crate::recording::{KeyRing, RecordingKey};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid key: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("random number generator failed")]
    Random,
}

pub struct GatewayKeys {
    pub ssh_host: PrivateKey,
    pub user_ca: PrivateKey,
    /// Signs engineers' certificates (`drawbridge login`). Never the user CA: targets
    /// trust that one, and an engineer's certificate must not open a target directly.
    pub engineer_ca: PrivateKey,
    pub recording: Arc<RecordingKey>,
    /// Ed25519 PKCS#8 for the HTTP identity assertions (JWT, EdDSA).
    pub http_assertion: Secret<Vec<u8>>,
    pub tls_cert_pem: String,
    pub tls_key_pem: Secret<String>,
}

/// Where each file lives under `data_dir`.
pub struct KeyPaths {
    pub dir: PathBuf,
}

impl KeyPaths {
    pub fn new(data_dir: &Path) -> Self {
        KeyPaths {
            dir: data_dir.join("keys"),
        }
    }
    pub fn ssh_host(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519")
    }
    pub fn user_ca(&self) -> PathBuf {
        self.dir.join("ssh_user_ca")
    }
    /// Targets put this file's contents in their `TrustedUserCAKeys`.
    pub fn user_ca_pub(&self) -> PathBuf {
        self.dir.join("ssh_user_ca.pub")
    }
    pub fn engineer_ca(&self) -> PathBuf {
        self.dir.join("ssh_engineer_ca")
    }
    pub fn recording(&self) -> PathBuf {
        self.dir.join("recording.pk8")
    }
    /// Public recording keys, one per line, so verification survives rotation.
    pub fn recording_pub(&self) -> PathBuf {
        self.dir.join("recording.pub")
    }
    pub fn http_assertion(&self) -> PathBuf {
        self.dir.join("http_assertion.pk8")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| KeyError::Random)?;
    Ok(buf)
}

/// A fresh Ed25519 SSH key; used for the gateway's keys and for every upstream
/// session's throwaway key.
pub fn new_ed25519() -> Result<PrivateKey, KeyError> {
    let seed = random_bytes::<32>()?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.into(),
        source,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_public(path: &Path, text: &str) -> Result<(), KeyError> {
    fs::write(path, text).map_err(io(path))
}

fn invalid(path: &Path, e: impl ToString) -> KeyError {
    KeyError::Invalid {
        path: path.into(),
        message: e.to_string(),
    }
}

fn ssh_key_file(path: &Path, created: &mut Vec<PathBuf>) -> Result<PrivateKey, KeyError> {
    if path.exists() {
        let text = fs::read_to_string(path).map_err(io(path))?;
        return PrivateKey::from_openssh(text).map_err(|e| invalid(path, e));
    }
    let key = new_ed25519()?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| invalid(path, e))?;
    write_private(path, pem.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| invalid(path, e))?;
    write_public(&path.with_extension("pub"), &format!("{public}\n"))?;
    created.push(path.into());
    Ok(key)
}

fn recording_key(paths: &KeyPaths, created: &mut Vec<PathBuf>) -> Result<RecordingKey, KeyError> {
    let path = paths.recording();
    if path.exists() {
        let pkcs8 = fs::read(&path).map_err(io(&path))?;
        let key = RecordingKey::from_pkcs8(&pkcs8).map_err(|e| invalid(&path, e))?;
        // A key put in place by hand is trusted from now on too.
        list_public_key(paths, &key)?;
        return Ok(key);
    }
    let (key, pkcs8) = RecordingKey::generate().map_err(|e| invalid(&path, e))?;
    list_public_key(paths, &key)?;
    write_private(&path, &pkcs8)?;
    created.push(path);
    Ok(key)
}

fn ed25519_pkcs8(path: &Path, created: &mut Vec<PathBuf>) -> Result<Vec<u8>, KeyError> {
    if path.exists() {
        return fs::read(path).map_err(io(path));
    }
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Random)?;
    write_private(path, pkcs8.as_ref())?;
    created.push(path.into());
    Ok(pkcs8.as_ref().to_vec())
}

/// Appends `key`'s public line to `recording.pub` unless it is there already. The file is
/// only ever appended to: verifying old recordings needs every key that ever signed.
fn list_public_key(paths: &KeyPaths, key: &RecordingKey) -> Result<(), KeyError> {
    let path = paths.recording_pub();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    let ring = KeyRing::parse(&text).map_err(|e| invalid(&path, e))?;
    if ring.get(key.key_id()).is_some() {
        return Ok(());
    }
    let line = format!(
        "{} added {}\n",
        key.public_key_line(),
        crate::time::format(crate::time::now())
    );
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(line.as_bytes()).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))
}

/// Replaces the recording signing key with a new one; returns the old and new key ids.
/// The new public key is listed in `recording.pub` before the private key is swapped, so a
/// crash in between leaves a key ring that still verifies everything. A running gateway
/// keeps signing with the old key until it restarts.
pub fn rotate_recording_key(data_dir: &Path) -> Result<(String, String), KeyError> {
    let paths = KeyPaths::new(data_dir);
    let path = paths.recording();
    let old = fs::read(&path).map_err(io(&path))?;
    let old = RecordingKey::from_pkcs8(&old).map_err(|e| invalid(&path, e))?;
    list_public_key(&paths, &old)?;
    let (new, pkcs8) = RecordingKey::generate().map_err(|e| invalid(&path, e))?;
    list_public_key(&paths, &new)?;
    let staged = path.with_extension("pk8.new");
    // A leftover from an interrupted rotation was never in use; its public key is listed.
    if staged.exists() {
        fs::remove_file(&staged).map_err(io(&staged))?;
    }
    write_private(&staged, &pkcs8)?;
    fs::rename(&staged, &path).map_err(io(&path))?;
    fs::File::open(&paths.dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&paths.dir))?;
    Ok((old.key_id().to_string(), new.key_id().to_string()))
}

fn tls(paths: &KeyPaths, created: &mut Vec<PathBuf>) -> Result<(String, String), KeyError> {
    let (cert_path, key_path) = (paths.tls_cert(), paths.tls_key());
    if cert_path.exists() && key_path.exists() {
        let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        return Ok((cert, key));
    }
    // A local CA, not a leaf: the HTTPS listener mints a leaf per server name
    // (each app's host name) signed by it, and clients trust this certificate.
    let (cert, key) = crate::api::new_ca().map_err(|e| invalid(&cert_path, e))?;
    write_private(&key_path, key.as_bytes())?;
    write_public(&cert_path, &cert)?;
    created.push(cert_path);
    Ok((cert, key))
}

/// Loads every key under `data_dir/keys`, creating the missing ones. Returns the
/// keys and the files it created (empty on every start after the first).
pub fn load_or_create(data_dir: &Path) -> Result<(GatewayKeys, Vec<PathBuf>), KeyError> {
    let paths = KeyPaths::new(data_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
        .map_err(io(&paths.dir))?;
    let mut created = Vec::new();
    let ssh_host = ssh_key_file(&paths.ssh_host(), &mut created)?;
    let user_ca = ssh_key_file(&paths.user_ca(), &mut created)?;
    let engineer_ca = ssh_key_file(&paths.engineer_ca(), &mut created)?;
    let recording = Arc::new(recording_key(&paths, &mut created)?);
    let http_assertion = Secret::new(ed25519_pkcs8(&paths.http_assertion(), &mut created)?);
    let (tls_cert_pem, tls_key_pem) = tls(&paths, &mut created)?;
    Ok((
        GatewayKeys {
            ssh_host,
            user_ca,
            engineer_ca,
            recording,
            http_assertion,
            tls_cert_pem,
            tls_key_pem: Secret::new(tls_key_pem),
        },
        created,
    ))
}

/// The public recording keys that `drawbridge verify` trusts.
pub fn load_key_ring(data_dir: &Path) -> Result<KeyRing, KeyError> {
    let path = KeyPaths::new(data_dir).recording_pub();
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    KeyRing::parse(&text).map_err(|e| invalid(&path, e))
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public_key(line: &str) -> Result<ssh_key::PublicKey, String> {
    ssh_key::PublicKey::from_openssh(line.trim()).map_err(|e| format!("invalid public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_private_files_0600_then_reloads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, created) = load_or_create(dir.path()).expect("create");
        assert_eq!(created.len(), 6);
        let paths = KeyPaths::new(dir.path());
        for p in [
            paths.ssh_host(),
            paths.user_ca(),
            paths.engineer_ca(),
            paths.recording(),
            paths.http_assertion(),
            paths.tls_key(),
        ] {
            let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let (again, created) = load_or_create(dir.path()).expect("reload");
        assert!(created.is_empty());
        assert_eq!(keys.user_ca.public_key(), again.user_ca.public_key());
        assert_eq!(
            keys.engineer_ca.public_key(),
            again.engineer_ca.public_key()
        );
        assert_ne!(keys.engineer_ca.public_key(), keys.user_ca.public_key());
        assert_eq!(keys.recording.key_id(), again.recording.key_id());
    }

    #[test]
    fn rotation_keeps_every_old_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, _) = load_or_create(dir.path()).expect("create");
        let (old, new) = rotate_recording_key(dir.path()).expect("rotate");
        assert_eq!(old, keys.recording.key_id());
        let (_, newer) = rotate_recording_key(dir.path()).expect("rotate again");
        let ring = load_key_ring(dir.path()).expect("ring");
        let ids: Vec<&str> = ring.key_ids().collect();
        assert_eq!(ring.len(), 3, "{ids:?}");
        for id in [&old, &new, &newer] {
            assert!(ring.get(id).is_some(), "{id} missing from {ids:?}");
        }
        let (reloaded, created) = load_or_create(dir.path()).expect("reload");
        assert!(created.is_empty());
        assert_eq!(reloaded.recording.key_id(), newer);
        let mode = fs::metadata(KeyPaths::new(dir.path()).recording())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
