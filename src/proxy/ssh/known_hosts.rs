//! How the gateway knows a target is the target: known_hosts lines (sshd(8)
//! "SSH_KNOWN_HOSTS FILE FORMAT"). A line pins a host key, or with
//! `@cert-authority` trusts a host CA: the target must then present a host
//! certificate signed by it, valid now, naming the target's host name. `@revoked`
//! marks a key (plain, certified or a CA) that is never accepted.
//!
//! `target add` keeps the lines whose host patterns match the target and stores
//! them normalised; at connect time every stored line applies. Pure: no IO.

use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, PublicKey};

use crate::cert_check::{self, CertificateProblem, fingerprint};
use crate::time::UnixTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Pinned,
    CertAuthority,
    Revoked,
}

/// The stored verification of one target.
#[derive(Debug, Default)]
pub struct HostVerification {
    pinned: Vec<KeyData>,
    authorities: Vec<KeyData>,
    revoked: Vec<KeyData>,
}

/// Why a target's host key or certificate is not accepted; worded to follow
/// "target NAME …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyProblem {
    #[error("presented host key {got}, which does not match its pinned key ({expected})")]
    NotPinned { expected: String, got: String },
    #[error(
        "presented a plain host key ({got}) but is trusted only through host certificates signed by {authorities} (@cert-authority)"
    )]
    NotCertified { got: String, authorities: String },
    #[error("presented a host certificate that {0}")]
    Certificate(CertificateProblem),
    #[error("presented key {0}, which is marked @revoked")]
    Revoked(String),
}

/// One parsed line: marker, host patterns (None for a bare key) and key.
struct Line<'a> {
    marker: Marker,
    patterns: Option<&'a str>,
    key: PublicKey,
}

fn parse_key(text: &str) -> Option<PublicKey> {
    PublicKey::from_openssh(text.trim()).ok()
}

/// `[@marker] [patterns] keytype base64 [comment]`; a bare key (the contents of
/// a `.pub` file) is a pinned key for this target.
fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let (marker, rest) = match line.split_once(char::is_whitespace) {
        Some(("@cert-authority", rest)) => (Marker::CertAuthority, rest.trim_start()),
        Some(("@revoked", rest)) => (Marker::Revoked, rest.trim_start()),
        Some((m, _)) if m.starts_with('@') => return Err(format!("unknown marker {m}")),
        _ => (Marker::Pinned, line),
    };
    if let Some(key) = parse_key(rest) {
        return Ok(Line {
            marker,
            patterns: None,
            key,
        });
    }
    let (patterns, key) = rest
        .split_once(char::is_whitespace)
        .ok_or("expected a public key (ssh-ed25519 AAAA…)")?;
    let key = parse_key(key).ok_or("invalid public key")?;
    Ok(Line {
        marker,
        patterns: Some(patterns),
        key,
    })
}

fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The name known_hosts uses for `address`: `host` on port 22, else `[host]:port`.
pub fn known_hosts_name(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, "22")) => host_of(host),
        Some((host, port)) => format!("[{}]:{port}", host_of(host)),
        None => host_of(address),
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed): the name
/// a host certificate must list.
pub fn host_name(address: &str) -> String {
    host_of(address.rsplit_once(':').map_or(address, |(host, _)| host))
}

fn host_of(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl HostVerification {
    /// Reads stored lines; every one applies to the target.
    pub fn parse(text: &str) -> Result<HostVerification, String> {
        let mut verification = HostVerification::default();
        for (number, line) in content_lines(text) {
            let line = parse_line(line).map_err(|e| format!("line {number}: {e}"))?;
            verification.add(line.marker, line.key);
        }
        if verification.pinned.is_empty() && verification.authorities.is_empty() {
            return Err("no host key or @cert-authority line".into());
        }
        Ok(verification)
    }

    /// Keeps the lines of `text` that apply to `name` (see [`known_hosts_name`])
    /// and returns them normalised for storage, with the number of lines skipped
    /// because their patterns name other hosts.
    pub fn select(text: &str, name: &str) -> Result<(String, usize), String> {
        let (mut kept, mut skipped) = (Vec::new(), 0);
        for (number, line) in content_lines(text) {
            let parsed = parse_line(line).map_err(|e| format!("line {number}: {e}"))?;
            let applies = match parsed.patterns {
                None => true,
                Some(patterns) => {
                    patterns_match(patterns, name).map_err(|e| format!("line {number}: {e}"))?
                }
            };
            if !applies {
                skipped += 1;
                continue;
            }
            let key = parsed.key.to_openssh().map_err(|e| e.to_string())?;
            kept.push(match parsed.marker {
                Marker::Pinned => key,
                Marker::CertAuthority => format!("@cert-authority * {key}"),
                Marker::Revoked => format!("@revoked * {key}"),
            });
        }
        let text = kept.join("\n");
        HostVerification::parse(&text).map_err(|e| match skipped {
            0 => e,
            n => format!("{e} for {name}; {n} line(s) name other hosts"),
        })?;
        Ok((text, skipped))
    }

    fn add(&mut self, marker: Marker, key: PublicKey) {
        let list = match marker {
            Marker::Pinned => &mut self.pinned,
            Marker::CertAuthority => &mut self.authorities,
            Marker::Revoked => &mut self.revoked,
        };
        list.push(key.key_data().clone());
    }

    /// Whether the target should be asked for a host certificate.
    pub fn wants_certificate(&self) -> bool {
        !self.authorities.is_empty()
    }

    /// One line per key for `target add`'s output.
    pub fn describe(&self) -> String {
        let list = |keys: &[KeyData]| keys.iter().map(fingerprint).collect::<Vec<_>>();
        let mut parts = Vec::new();
        if !self.pinned.is_empty() {
            parts.push(format!("host key {}", list(&self.pinned).join(", ")));
        }
        if !self.authorities.is_empty() {
            parts.push(format!("host CA {}", list(&self.authorities).join(", ")));
        }
        if !self.revoked.is_empty() {
            parts.push(format!("revoked {}", list(&self.revoked).join(", ")));
        }
        parts.join("; ")
    }

    /// Accepts a pinned key, or a host certificate from a trusted CA that names
    /// `host`. As OpenSSH does, a certificate that fails is still accepted when
    /// the key it certifies is pinned.
    pub fn check(
        &self,
        offered: &PublicKeyOrCertificate,
        host: &str,
        now: UnixTime,
    ) -> Result<(), HostKeyProblem> {
        match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check_key(key.key_data()),
            PublicKeyOrCertificate::Certificate(cert) => self.check_certificate(cert, host, now),
        }
    }

    fn check_key(&self, key: &KeyData) -> Result<(), HostKeyProblem> {
        self.not_revoked(key)?;
        if self.pinned.contains(key) {
            return Ok(());
        }
        let list = |keys: &[KeyData]| keys.iter().map(fingerprint).collect::<Vec<_>>();
        if self.pinned.is_empty() {
            return Err(HostKeyProblem::NotCertified {
                got: fingerprint(key),
                authorities: list(&self.authorities).join(", "),
            });
        }
        Err(HostKeyProblem::NotPinned {
            expected: list(&self.pinned).join(", "),
            got: fingerprint(key),
        })
    }

    fn check_certificate(
        &self,
        cert: &Certificate,
        host: &str,
        now: UnixTime,
    ) -> Result<(), HostKeyProblem> {
        self.not_revoked(cert.public_key())?;
        self.not_revoked(cert.signature_key())?;
        let verdict = cert_check::check(cert, CertType::Host, &self.authorities, now)
            .and_then(|()| cert_check::require_principal(cert, host));
        match verdict {
            Ok(()) => Ok(()),
            Err(_) if self.pinned.contains(cert.public_key()) => Ok(()),
            Err(problem) => Err(HostKeyProblem::Certificate(problem)),
        }
    }

    fn not_revoked(&self, key: &KeyData) -> Result<(), HostKeyProblem> {
        match self.revoked.contains(key) {
            true => Err(HostKeyProblem::Revoked(fingerprint(key))),
            false => Ok(()),
        }
    }
}

/// sshd(8) PATTERNS: comma-separated, `*` and `?` wildcards, `!` negates (a
/// negated match wins), or one hashed name (`|1|salt|hash`, HashKnownHosts).
fn patterns_match(patterns: &str, name: &str) -> Result<bool, String> {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(&pattern.to_ascii_lowercase(), name) {
            if negated {
                return Ok(false);
            }
            matched = true;
        }
    }
    Ok(matched)
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut rest = pattern.chars();
    let mut chars = name.chars();
    match rest.next() {
        None => name.is_empty(),
        Some('*') => name
            .char_indices()
            .map(|(i, _)| i)
            .chain([name.len()])
            .any(|i| wildcard_match(rest.as_str(), &name[i..])),
        Some('?') => chars.next().is_some() && wildcard_match(rest.as_str(), chars.as_str()),
        Some(c) => chars.next() == Some(c) && wildcard_match(rest.as_str(), chars.as_str()),
    }
}

/// `salt|hash`, both base64: HMAC-SHA1 of the host name keyed with the salt.
fn hashed_match(hashed: &str, name: &str) -> Result<bool, String> {
    use base64ct::{Base64, Encoding};
    let (salt, hash) = hashed.split_once('|').ok_or("malformed hashed host name")?;
    let salt = Base64::decode_vec(salt).map_err(|_| "malformed hashed host name")?;
    let hash = Base64::decode_vec(hash).map_err(|_| "malformed hashed host name")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    Ok(ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn bare_keys_and_known_hosts_lines_are_accepted() {
        assert!(HostVerification::parse(KEY).is_ok());
        let (stored, skipped) =
            HostVerification::select(&format!("[127.0.0.1]:2200 {KEY}"), "[127.0.0.1]:2200")
                .expect("select");
        assert_eq!((stored.as_str(), skipped), (KEY, 0));
        let (stored, _) = HostVerification::select(
            &format!("@cert-authority *.example.com {KEY}"),
            "db.example.com",
        )
        .expect("select");
        assert_eq!(stored, format!("@cert-authority * {KEY}"));
        let v = HostVerification::parse(&stored).expect("parse");
        assert!(v.wants_certificate());
        assert!(HostVerification::parse("ssh-ed25519 garbage").is_err());
        assert!(HostVerification::parse(&format!("@bogus * {KEY}")).is_err());
        assert!(HostVerification::parse(&format!("@revoked * {KEY}")).is_err());
    }

    #[test]
    fn lines_for_other_hosts_are_skipped_and_none_left_is_an_error() {
        let text = format!("10.0.0.9 {KEY}\n# comment\n\n[127.0.0.1]:2200 {KEY}\n");
        let (_, skipped) = HostVerification::select(&text, "[127.0.0.1]:2200").expect("select");
        assert_eq!(skipped, 1);
        let e = HostVerification::select(&format!("10.0.0.9 {KEY}"), "web-1").expect_err("none");
        assert!(e.contains("1 line(s) name other hosts"), "{e}");
    }

    #[test]
    fn patterns_follow_sshd() {
        let m = |p, n| patterns_match(p, n).expect("pattern");
        assert!(m("*", "[127.0.0.1]:2200"));
        assert!(m("web-?,db-*", "db-17"));
        assert!(!m("*.example.com,!bad.example.com", "bad.example.com"));
        assert!(m("WEB-1", "web-1"));
        assert!(!m("web-1", "web-10"));
        // `ssh-keygen -H` of a line for "web-1".
        let hashed = "|1|meO6irc5oq/AdcigdeGHj5wYzoY=|semPQqPuwKE/Sg6zfed0Qnig+zg=";
        assert!(m(hashed, "web-1"));
        assert!(!m(hashed, "web-2"));
        assert!(patterns_match("|1|nonsense", "web-1").is_err());
    }

    #[test]
    fn names_come_from_the_address() {
        assert_eq!(known_hosts_name("10.0.0.5:22"), "10.0.0.5");
        assert_eq!(known_hosts_name("Web-1:2200"), "[web-1]:2200");
        assert_eq!(host_name("[::1]:22"), "::1");
        assert_eq!(host_name("db.example.com:2222"), "db.example.com");
    }

    fn key() -> russh::keys::ssh_key::PrivateKey {
        crate::keys::new_ed25519().expect("key")
    }

    fn line(marker: &str, key: &russh::keys::ssh_key::PrivateKey) -> String {
        let public = key.public_key().to_openssh().expect("openssh");
        format!("{marker} {public}").trim().to_string()
    }

    const NOW: UnixTime = 1_800_000_000;

    fn host_cert(
        ca: &russh::keys::ssh_key::PrivateKey,
        host: &russh::keys::ssh_key::PrivateKey,
        principal: &str,
    ) -> PublicKeyOrCertificate {
        use russh::keys::ssh_key::certificate::Builder;
        let (from, to) = (NOW as u64 - 60, NOW as u64 + 60);
        let data = host.public_key().key_data().clone();
        let mut b = Builder::new(vec![0u8; 16], data, from, to).expect("builder");
        b.cert_type(CertType::Host).expect("type");
        b.valid_principal(principal).expect("principal");
        PublicKeyOrCertificate::Certificate(b.sign(ca).expect("sign"))
    }

    fn plain(key: &russh::keys::ssh_key::PrivateKey) -> PublicKeyOrCertificate {
        PublicKeyOrCertificate::from(key.public_key().clone())
    }

    #[test]
    fn pinned_keys_host_cas_and_revoked_keys_decide_as_sshd_would() {
        let (ca, host, stranger) = (key(), key(), key());
        let by_ca = HostVerification::parse(&line("@cert-authority *", &ca)).expect("parse");
        assert_eq!(
            by_ca.check(&host_cert(&ca, &host, "db-1"), "db-1", NOW),
            Ok(())
        );
        assert!(matches!(
            by_ca.check(&host_cert(&ca, &host, "db-2"), "db-1", NOW),
            Err(HostKeyProblem::Certificate(
                CertificateProblem::WrongPrincipal { .. }
            ))
        ));
        assert!(matches!(
            by_ca.check(&host_cert(&stranger, &host, "db-1"), "db-1", NOW),
            Err(HostKeyProblem::Certificate(
                CertificateProblem::UnknownAuthority { .. }
            ))
        ));
        assert!(matches!(
            by_ca.check(&plain(&host), "db-1", NOW),
            Err(HostKeyProblem::NotCertified { .. })
        ));

        // Pinned too: a failing certificate still passes on its pinned key.
        let both = format!("{}\n{}", line("@cert-authority *", &ca), line("", &host));
        let both = HostVerification::parse(&both).expect("parse");
        assert_eq!(
            both.check(&host_cert(&stranger, &host, "x"), "db-1", NOW),
            Ok(())
        );
        assert_eq!(both.check(&plain(&host), "db-1", NOW), Ok(()));
        assert!(matches!(
            both.check(&plain(&stranger), "db-1", NOW),
            Err(HostKeyProblem::NotPinned { .. })
        ));

        // @revoked wins over everything, the CA included.
        let revoked = format!(
            "{}\n{}",
            line("@cert-authority *", &ca),
            line("@revoked *", &ca)
        );
        let revoked = HostVerification::parse(&revoked).expect("parse");
        assert!(matches!(
            revoked.check(&host_cert(&ca, &host, "db-1"), "db-1", NOW),
            Err(HostKeyProblem::Revoked(_))
        ));
    }
}
