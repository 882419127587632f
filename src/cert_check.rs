//! Checks an OpenSSH certificate against the authorities a verifier trusts. Shared
//! by the SSH front (engineers' user certificates, `identity::certificate`) and the
//! upstream side (targets' host certificates, `proxy::ssh::known_hosts`); each
//! checks the principals itself, because they mean different things there.
//!
//! Pure: callers pass the time in.

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, HashAlg};

use crate::time::{self, UnixTime};

/// Why a certificate is not accepted; worded to follow "the certificate …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateProblem {
    #[error("is signed by {got}, not by a trusted CA ({trusted})")]
    UnknownAuthority { got: String, trusted: String },
    #[error("has a signature that does not verify")]
    BadSignature,
    #[error("is a {got} certificate, not a {wanted} certificate")]
    WrongType {
        got: &'static str,
        wanted: &'static str,
    },
    #[error("is not valid before {0}")]
    NotYetValid(String),
    #[error("expired at {0}")]
    Expired(String),
    #[error("carries the critical option {0:?}, which the gateway does not honour")]
    CriticalOption(String),
    #[error("lists no principals (it would be valid for anyone)")]
    NoPrincipals,
    #[error("is for {listed}, not {wanted}")]
    WrongPrincipal { listed: String, wanted: String },
}

pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn type_name(t: CertType) -> &'static str {
    match t {
        CertType::User => "user",
        CertType::Host => "host",
    }
}

/// Signed by one of `trusted`, of type `wanted`, valid at `now`, with no critical
/// option (the gateway issues none and honours none, and OpenSSH's rule is to
/// refuse a certificate whose critical options are not understood). Principals
/// are the caller's to check.
pub fn check(
    cert: &Certificate,
    wanted: CertType,
    trusted: &[KeyData],
    now: UnixTime,
) -> Result<(), CertificateProblem> {
    if !trusted.contains(cert.signature_key()) {
        let trusted: Vec<String> = trusted.iter().map(fingerprint).collect();
        return Err(CertificateProblem::UnknownAuthority {
            got: fingerprint(cert.signature_key()),
            trusted: trusted.join(", "),
        });
    }
    cert.verify_signature()
        .map_err(|_| CertificateProblem::BadSignature)?;
    if cert.cert_type() != wanted {
        return Err(CertificateProblem::WrongType {
            got: type_name(cert.cert_type()),
            wanted: type_name(wanted),
        });
    }
    // PROTOCOL.certkeys: valid after <= now < valid before.
    let now = now.max(0) as u64;
    if now < cert.valid_after() {
        return Err(CertificateProblem::NotYetValid(format_time(
            cert.valid_after(),
        )));
    }
    if now >= cert.valid_before() {
        return Err(CertificateProblem::Expired(format_time(
            cert.valid_before(),
        )));
    }
    if let Some(option) = cert.critical_options().keys().next() {
        return Err(CertificateProblem::CriticalOption(option.clone()));
    }
    Ok(())
}

/// `principal` must be listed; an empty list (OpenSSH: "any principal") is refused.
pub fn require_principal(cert: &Certificate, principal: &str) -> Result<(), CertificateProblem> {
    let listed = cert.valid_principals();
    if listed.is_empty() {
        return Err(CertificateProblem::NoPrincipals);
    }
    if listed.iter().any(|p| p == principal) {
        return Ok(());
    }
    Err(CertificateProblem::WrongPrincipal {
        listed: listed.join(", "),
        wanted: principal.to_string(),
    })
}

fn format_time(unix: u64) -> String {
    time::format(i64::try_from(unix).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::certificate::Builder;

    fn key() -> russh::keys::ssh_key::PrivateKey {
        crate::keys::new_ed25519().expect("key")
    }

    fn cert(
        ca: &russh::keys::ssh_key::PrivateKey,
        cert_type: CertType,
        (from, to): (u64, u64),
        principals: &[&str],
    ) -> Certificate {
        let subject = key();
        let mut b = Builder::new(
            vec![0u8; 16],
            subject.public_key().key_data().clone(),
            from,
            to,
        )
        .expect("builder");
        b.cert_type(cert_type).expect("type");
        for p in principals {
            b.valid_principal(*p).expect("principal");
        }
        if principals.is_empty() {
            b.all_principals_valid().expect("any");
        }
        b.sign(ca).expect("sign")
    }

    const NOW: i64 = 1_800_000_000;
    const VALID: (u64, u64) = (NOW as u64 - 60, NOW as u64 + 60);

    #[test]
    fn a_certificate_from_the_trusted_ca_in_its_window_passes() {
        let ca = key();
        let trusted = [ca.public_key().key_data().clone()];
        let c = cert(&ca, CertType::Host, VALID, &["db-1"]);
        assert_eq!(check(&c, CertType::Host, &trusted, NOW), Ok(()));
        assert_eq!(require_principal(&c, "db-1"), Ok(()));
        assert!(matches!(
            require_principal(&c, "db-2"),
            Err(CertificateProblem::WrongPrincipal { .. })
        ));
    }

    #[test]
    fn other_ca_wrong_type_outside_window_and_no_principals_are_refused() {
        let (ca, other) = (key(), key());
        let trusted = [ca.public_key().key_data().clone()];
        let foreign = cert(&other, CertType::User, VALID, &["alice"]);
        assert!(matches!(
            check(&foreign, CertType::User, &trusted, NOW),
            Err(CertificateProblem::UnknownAuthority { .. })
        ));
        let host = cert(&ca, CertType::Host, VALID, &["alice"]);
        assert!(matches!(
            check(&host, CertType::User, &trusted, NOW),
            Err(CertificateProblem::WrongType { got: "host", .. })
        ));
        let old = cert(&ca, CertType::User, (1, NOW as u64), &["alice"]);
        assert!(matches!(
            check(&old, CertType::User, &trusted, NOW),
            Err(CertificateProblem::Expired(_))
        ));
        let later = cert(&ca, CertType::User, (NOW as u64 + 1, u64::MAX), &["alice"]);
        assert!(matches!(
            check(&later, CertType::User, &trusted, NOW),
            Err(CertificateProblem::NotYetValid(_))
        ));
        let mut forced = Builder::new(
            vec![0u8; 16],
            key().public_key().key_data().clone(),
            VALID.0,
            VALID.1,
        )
        .expect("builder");
        forced
            .valid_principal("alice")
            .and_then(|b| b.critical_option("force-command", "/bin/true"))
            .expect("options");
        let forced = forced.sign(&ca).expect("sign");
        assert_eq!(
            check(&forced, CertType::User, &trusted, NOW),
            Err(CertificateProblem::CriticalOption("force-command".into()))
        );
        let anyone = cert(&ca, CertType::User, VALID, &[]);
        assert_eq!(
            require_principal(&anyone, "alice"),
            Err(CertificateProblem::NoPrincipals)
        );
    }
}
