//! The SSH half of `drawbridge login`: has the engineer's own public key signed by
//! the gateway and writes the certificate beside it (`id_ed25519.pub` →
//! `id_ed25519-cert.pub`), where stock `ssh` finds and offers it by itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use hyper::Method;

use super::client::ApiClient;
use crate::api::types::{SshCertificateRequest, SshCertificateResponse};
use crate::time;

/// The key signed when `--ssh-key` is not given, if it exists.
const DEFAULT_KEY: &str = ".ssh/id_ed25519.pub";

/// Which key to sign: the one named, else `~/.ssh/id_ed25519.pub` when present.
pub fn key_to_sign(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let default = Path::new(&home).join(DEFAULT_KEY);
        default.exists().then_some(default)
    })
}

/// `dir/id_ed25519.pub` → `dir/id_ed25519-cert.pub`, OpenSSH's naming.
pub fn certificate_path(public_key: &Path) -> PathBuf {
    let name = public_key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    public_key.with_file_name(format!("{stem}-cert.pub"))
}

/// Signs `public_key` and writes the certificate beside it; returns a line for
/// the user.
pub async fn sign(client: &ApiClient, public_key: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(public_key)
        .with_context(|| format!("cannot read the SSH public key {}", public_key.display()))?;
    let signed: SshCertificateResponse = client
        .call(
            Method::POST,
            "/api/v1/ssh-certificates",
            Some(&SshCertificateRequest { public_key: text }),
        )
        .await
        .map_err(|e| anyhow!("signing {}: {e}", public_key.display()))?;
    let path = certificate_path(public_key);
    write_certificate(&path, &signed.certificate)?;
    Ok(format!(
        "SSH certificate {} (serial {}) valid until {}; ssh offers it with {}",
        path.display(),
        signed.serial,
        time::format(signed.valid_before),
        public_key.with_extension("").display()
    ))
}

/// Replaces any older certificate at once (written aside, then renamed), so `ssh`
/// never reads half a file.
fn write_certificate(path: &Path, certificate: &str) -> anyhow::Result<()> {
    let staged = path.with_extension("pub.new");
    std::fs::write(&staged, format!("{}\n", certificate.trim()))
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_named_as_openssh_looks_for_them() {
        assert_eq!(
            certificate_path(Path::new("/h/.ssh/id_ed25519.pub")),
            PathBuf::from("/h/.ssh/id_ed25519-cert.pub")
        );
        assert_eq!(
            certificate_path(Path::new("work_key")),
            PathBuf::from("work_key-cert.pub")
        );
    }
}
