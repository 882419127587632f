//! TLS certificates for the HTTPS listener, minted on demand by the gateway's
//! local CA: one leaf per server name the client asks for (SNI), for the bare
//! host and for every `TARGET.<apps domain>`. Wildcards do not work for
//! `*.localhost` (TLS clients refuse a wildcard directly under a single-label
//! domain), so each app name gets its own certificate. Clients trust the CA
//! certificate, `data/keys/tls.crt`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

const CA_NAME: &str = "Drawbridge local CA";

/// The CA's parameters. Leaves name the CA by these, so they must be the same
/// every time the CA is loaded.
pub fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new CA: (certificate PEM, key PEM).
pub fn new_ca() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    apps_domain: String,
    /// Leaves by server name; bounded by the names this gateway serves.
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// For clients that send no SNI (an IP address): localhost and loopback IPs.
    default: Arc<CertifiedKey>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("apps_domain", &self.apps_domain)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str, apps_domain: &str) -> Result<LocalCa, String> {
        use rustls::pki_types::pem::PemObject;
        let key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("TLS CA key: {e}"))?;
        let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
            .map_err(|e| format!("TLS CA certificate: {e}"))?;
        let issuer = Issuer::new(ca_params().map_err(|e| e.to_string())?, key);
        let mut ca = LocalCa {
            issuer,
            ca_der,
            apps_domain: apps_domain.to_string(),
            leaves: Mutex::new(HashMap::new()),
            default: Arc::new(CertifiedKey::new(vec![], Arc::new(NoKey))),
        };
        ca.default = ca.mint(vec![
            "localhost".into(),
            apps_domain.to_string(),
            "127.0.0.1".into(),
            "::1".into(),
        ])?;
        Ok(ca)
    }

    fn mint(&self, names: Vec<String>) -> Result<Arc<CertifiedKey>, String> {
        let err = |e: rcgen::Error| e.to_string();
        let mut params = CertificateParams::new(names.clone()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signing,
        )))
    }

    /// Names we mint for: the apps domain itself and single labels under it.
    fn serves(&self, name: &str) -> bool {
        name == self.apps_domain
            || name
                .strip_suffix(&self.apps_domain)
                .and_then(|n| n.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    }
}

impl ResolvesServerCert for LocalCa {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        if !self.serves(&name) {
            return Some(self.default.clone());
        }
        // Held for a map lookup, or one key generation on a name's first use.
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(leaf) = leaves.get(&name) {
            return Some(leaf.clone());
        }
        match self.mint(vec![name.clone()]) {
            Ok(leaf) => {
                leaves.insert(name, leaf.clone());
                Some(leaf)
            }
            Err(e) => {
                tracing::error!(name, error = %e, "cannot mint a TLS certificate");
                Some(self.default.clone())
            }
        }
    }
}

/// Placeholder signer while the default certificate is being made.
#[derive(Debug)]
struct NoKey;

impl rustls::sign::SigningKey for NoKey {
    fn choose_scheme(
        &self,
        _: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        None
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}
