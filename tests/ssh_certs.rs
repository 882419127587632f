//! Certificates, both ways, with stock OpenSSH: engineers log in to the gateway
//! with the user certificate `drawbridge login` had signed for their own key, and
//! the gateway verifies targets by host certificates from a host CA.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// Failures per user name are raised: the refusal tests below fail several
/// times as the same `LOGIN@TARGET` on purpose.
const LENIENT: &str =
    "[access]\nmax_auth_failures_per_user = 100\nmax_auth_failures_per_address = 100";

/// A fresh key pair at `dir/name` (not registered with the gateway).
fn new_key(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let key = dir.join(name);
    keygen(&key);
    key
}

/// `ssh-keygen -s CA -I ID [-h] -n PRINCIPALS -V VALIDITY KEY.pub`.
fn sign(ca: &Path, key: &Path, host: bool, principals: &str, validity: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-s"]).arg(ca).args(["-I", "test-cert"]);
    if host {
        cmd.arg("-h");
    }
    // No -n: a certificate without principals.
    if !principals.is_empty() {
        cmd.args(["-n", principals]);
    }
    let status = cmd
        .args(["-V", validity])
        .arg(key.with_extension("pub"))
        .status()
        .expect("ssh-keygen -s");
    assert!(status.success());
}

/// Stock ssh as `user` would run it with `key` (and, as OpenSSH does by itself,
/// `key-cert.pub` beside it). Verbose, so a test can see what was offered.
fn ssh_with(user: &User, key: &Path, user_at_target: &str, command: &str) -> Output {
    Command::new("ssh")
        .args(["-v", "-p", &user.ssh_port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", user.known_hosts.display()))
        .args(["-o", "ConnectTimeout=10"])
        .arg(format!("{user_at_target}@127.0.0.1"))
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh")
}

fn assert_refused_at_login(o: &Output) {
    assert_eq!(o.status.code(), Some(255), "{}", stderr(o));
    assert!(stderr(o).contains("Permission denied"), "{}", stderr(o));
}

fn audit_text(w: &World) -> String {
    stdout(&w.gateway.admin(&["audit", "--json"]))
}

#[test]
fn login_signs_the_default_key_and_stock_ssh_logs_in_with_its_certificate() {
    let w = World::new();
    // alice's everyday key, never registered with the gateway.
    let key = new_key(&w.alice.home.join(".ssh"), "id_ed25519");
    let grant = w.grant_alice("web-1", "root", "30m");
    let cert = w.alice.home.join(".ssh/id_ed25519-cert.pub");
    assert!(cert.exists(), "login wrote no certificate");
    let listing = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .expect("ssh-keygen -L");
    let listing = stdout(&listing);
    assert!(listing.contains("user certificate"), "{listing}");
    assert!(
        listing.contains("drawbridge user=alice serial="),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l.trim() == "alice"), "{listing}");

    let o = ssh_with(&w.alice, &key, "root@web-1", "echo via-certificate");
    assert!(o.status.success(), "{}{}", stderr(&o), w.gateway.log());
    assert_eq!(stdout(&o).trim(), "via-certificate");

    let serial = listing
        .split("serial=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("serial in the key id");
    let audit = audit_text(&w);
    assert!(audit.contains("ssh_cert.issued"), "{audit}");
    assert!(
        audit.contains(&format!("grant {grant}; policies"))
            && audit.contains(&format!("auth: certificate serial={serial}")),
        "the session's audit entry names the certificate: {audit}"
    );

    // The certificate opens the gateway, not the target: sshd trusts only the
    // upstream user CA.
    let direct = Command::new("ssh")
        .args(["-p", &w.sshd.port.to_string(), "-i"])
        .arg(&key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg("root@127.0.0.1")
        .arg("true")
        .output()
        .expect("ssh");
    assert_refused_at_login(&direct);
}

/// How a test certificate is made: `ssh-keygen -s CA [-h] -n PRINCIPALS -V VALIDITY`.
struct Signing<'a> {
    ca: &'a Path,
    host: bool,
    principals: &'a str,
    validity: &'a str,
}

/// alice offers a key with a certificate made as `signing` says; the gateway
/// refuses it at login, and its log says `why` (when the gateway itself decided).
fn assert_certificate_refused(w: &World, name: &str, signing: Signing<'_>, why: &str) {
    let key = new_key(&w.gateway.path("certs"), name);
    let Signing {
        ca,
        host,
        principals,
        validity,
    } = signing;
    sign(ca, &key, host, principals, validity);
    let o = ssh_with(&w.alice, &key, "root@web-1", "true");
    assert_refused_at_login(&o);
    assert!(
        stderr(&o).contains("ED25519-CERT"),
        "{name}: the certificate was not even offered: {}",
        stderr(&o)
    );
    assert!(
        w.gateway.log().contains(why),
        "{name}: {why:?} not in the gateway log: {}",
        w.gateway.log()
    );
}

#[test]
fn certificates_that_are_expired_foreign_misnamed_or_for_anyone_are_refused() {
    let w = World::with_ssh_config(LENIENT);
    w.grant_alice("web-1", "root", "30m");
    let engineer_ca = w.gateway.path("data/keys/ssh_engineer_ca");
    let other_ca = new_key(&w.gateway.path("certs"), "other_ca");
    let signing = |ca, host, principals, validity| Signing {
        ca,
        host,
        principals,
        validity,
    };
    let valid = "-5m:+1h";
    // russh refuses an expired certificate before the gateway is asked.
    let expired = signing(&engineer_ca, false, "alice", "20200101:20200102");
    assert_certificate_refused(&w, "expired", expired, "");
    let foreign = signing(&other_ca, false, "alice", valid);
    assert_certificate_refused(&w, "foreign", foreign, "not by a trusted CA");
    let misnamed = signing(&engineer_ca, false, "root", valid);
    let why = "names root, who is not a Drawbridge user";
    assert_certificate_refused(&w, "misnamed", misnamed, why);
    let anyone = signing(&engineer_ca, false, "", valid);
    assert_certificate_refused(&w, "anyone", anyone, "lists no principals");
    // Stock ssh never offers a host certificate as a user's: see below.
    // A key signed properly by the engineer CA gets in: the refusals above were
    // about the certificates, not the grant.
    let key = new_key(&w.gateway.path("certs"), "good");
    sign(&engineer_ca, &key, false, "alice", valid);
    let o = ssh_with(&w.alice, &key, "root@web-1", "true");
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Pins the gateway's host key for the russh client below.
struct GatewayHostKey(russh::keys::PublicKey);

impl russh::client::Handler for GatewayHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(offered, russh::keys::PublicKeyOrCertificate::PublicKey { key, .. }
            if key.key_data() == self.0.key_data()),
        )
    }
}

/// Whether the gateway accepts `key` with the certificate at `cert` for
/// `root@web-1`, asked with russh's client: OpenSSH's refuses to offer a host
/// certificate as a user identity, so it cannot send the one case below.
fn russh_certificate_login(w: &World, key: &Path, cert: &Path) -> bool {
    use std::sync::Arc;
    let host_key = std::fs::read_to_string(w.gateway.path("data/keys/ssh_host_ed25519.pub"))
        .expect("gateway host key");
    let host_key = russh::keys::PublicKey::from_openssh(host_key.trim()).expect("parse");
    let key = Arc::new(russh::keys::load_secret_key(key, None).expect("key"));
    let cert = russh::keys::Certificate::read_file(cert).expect("certificate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = Arc::new(russh::client::Config::default());
        let address = ("127.0.0.1", w.gateway.ssh_port);
        let mut handle = russh::client::connect(config, address, GatewayHostKey(host_key))
            .await
            .expect("connect");
        let result = handle
            .authenticate_openssh_cert("root@web-1", key, cert)
            .await;
        result.expect("authentication exchange").success()
    })
}

#[test]
fn a_host_certificate_is_refused_as_a_user_certificate() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let engineer_ca = w.gateway.path("data/keys/ssh_engineer_ca");
    let key = new_key(&w.gateway.path("certs"), "host");
    let cert = key.with_file_name("host-cert.pub");
    sign(&engineer_ca, &key, true, "alice", "-5m:+1h");
    assert!(!russh_certificate_login(&w, &key, &cert));
    let why = "is a host certificate, not a user certificate";
    assert!(w.gateway.log().contains(why), "{}", w.gateway.log());
    // The same client and key with a user certificate get in.
    sign(&engineer_ca, &key, false, "alice", "-5m:+1h");
    assert!(russh_certificate_login(&w, &key, &cert));
}

#[test]
fn the_certificate_of_a_disabled_user_is_refused_within_its_validity() {
    let w = World::new();
    let key = new_key(&w.carol.home.join("keys"), "work_key");
    let o = w.carol.cli_stdin(
        &[
            "login",
            "--user",
            "carol",
            "--server",
            &w.carol.api,
            "--ca-cert",
            "data/keys/tls.crt",
            "--password-stdin",
            "--totp",
            &w.carol.code(),
            "--ssh-key",
            &key.with_extension("pub").display().to_string(),
        ],
        "pw-carol\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("SSH certificate"), "{}", stdout(&o));
    assert!(key.with_file_name("work_key-cert.pub").exists());
    // Authenticated, then refused for want of a grant: the certificate counted.
    let o = ssh_with(&w.carol, &key, "root@web-1", "true");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no active grant"), "{}", stderr(&o));

    w.gateway.admin_ok(&["user", "disable", "carol"]);
    let o = ssh_with(&w.carol, &key, "root@web-1", "true");
    assert_refused_at_login(&o);
    assert!(
        w.gateway.log().contains("user carol is disabled"),
        "{}",
        w.gateway.log()
    );
}

#[test]
fn login_with_a_named_key_that_is_not_a_key_fails_clearly() {
    let w = World::new();
    let bogus = w.carol.home.join("not-a-key.pub");
    std::fs::write(&bogus, "hello\n").expect("write");
    let o = w.carol.cli_stdin(
        &[
            "login",
            "--user",
            "carol",
            "--server",
            &w.carol.api,
            "--ca-cert",
            "data/keys/tls.crt",
            "--password-stdin",
            "--totp",
            &w.carol.code(),
            "--ssh-key",
            &bogus.display().to_string(),
        ],
        "pw-carol\n",
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid public key"), "{}", stderr(&o));
}

/// A host CA (private key file and its `.pub`) in `dir`.
fn host_ca(dir: &Path, name: &str) -> PathBuf {
    new_key(dir, name)
}

/// Registers `name` at `sshd`, verified by `ca` (`--host-ca-file`), and grants
/// alice root there.
fn add_ca_target(w: &World, name: &str, sshd: &Sshd, ca: &Path) {
    let address = format!("127.0.0.1:{}", sshd.port);
    let ca_pub = ca.with_extension("pub").display().to_string();
    let out = w.gateway.admin_ok(&[
        "target",
        "add",
        name,
        "--address",
        &address,
        "--host-ca-file",
        &ca_pub,
    ]);
    assert!(out.contains("host CA SHA256:"), "{out}");
    grant(w, name);
}

fn grant(w: &World, target: &str) {
    w.alice.login_once();
    w.bob.login_once();
    let id = w.alice.request(target, "root", "30m");
    let o = w.bob.cli(&["approve", &id.to_string()]);
    assert!(o.status.success(), "approve: {}", stderr(&o));
}

#[test]
fn a_target_with_a_host_ca_is_verified_by_its_host_certificate() {
    let w = World::new();
    let dir = w.gateway.path("host-cas");
    let ca = host_ca(&dir, "host_ca");
    let user_ca = w.gateway.path("data/keys/ssh_user_ca.pub");
    let sshd = Sshd::start_with_host_cert(&user_ca, &ca, "127.0.0.1,db-1", "-5m:+1h");
    add_ca_target(&w, "db-1", &sshd, &ca);
    let o = w.alice.ssh_run("root@db-1", "echo verified");
    assert!(o.status.success(), "{}{}", stderr(&o), w.gateway.log());
    assert_eq!(stdout(&o).trim(), "verified");
}

#[test]
fn host_certificates_from_another_ca_expired_or_for_another_host_are_refused() {
    let w = World::new();
    let dir = w.gateway.path("host-cas");
    let (ca, other) = (host_ca(&dir, "host_ca"), host_ca(&dir, "other_ca"));
    let user_ca = w.gateway.path("data/keys/ssh_user_ca.pub");
    let cases = [
        (
            "foreign",
            &other,
            "127.0.0.1",
            "-5m:+1h",
            "not by a trusted CA",
        ),
        (
            "expired",
            &ca,
            "127.0.0.1",
            "20200101:20200102",
            "expired at",
        ),
        (
            "misnamed",
            &ca,
            "127.0.0.2,web-9",
            "-5m:+1h",
            "is for 127.0.0.2, web-9, not 127.0.0.1",
        ),
    ];
    for (name, signer, principals, validity, why) in cases {
        let sshd = Sshd::start_with_host_cert(&user_ca, signer, principals, validity);
        add_ca_target(&w, name, &sshd, &ca);
        let o = w.alice.ssh_run(&format!("root@{name}"), "true");
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        let message = stderr(&o);
        assert!(
            message.contains(&format!(
                "cannot verify target {name}: it presented a host certificate that"
            )) && message.contains(why),
            "{name}: {message}"
        );
        assert!(
            !sshd.log().contains("Accepted"),
            "{name}: no login on the target"
        );
    }
}

#[test]
fn a_plain_host_key_is_refused_when_the_target_has_a_host_ca() {
    let w = World::new();
    let ca = host_ca(&w.gateway.path("host-cas"), "host_ca");
    let ca_pub = std::fs::read_to_string(ca.with_extension("pub")).expect("ca pub");
    // The known_hosts form, in --host-key; web-1's sshd has no certificate.
    let address = format!("127.0.0.1:{}", w.sshd.port);
    let line = format!("@cert-authority * {}", ca_pub.trim());
    w.gateway.admin_ok(&[
        "target",
        "add",
        "web-ca",
        "--address",
        &address,
        "--host-key",
        &line,
    ]);
    grant(&w, "web-ca");
    let o = w.alice.ssh_run("root@web-ca", "true");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot verify target web-ca: it presented a plain host key"),
        "{}",
        stderr(&o)
    );
    // A known_hosts file whose lines all name other hosts is refused at `target add`.
    let file = w.gateway.path("known_hosts_elsewhere");
    std::fs::write(&file, format!("10.9.9.9 {}", w.sshd.host_key_pub)).expect("write");
    let o = w.gateway.admin(&[
        "target",
        "add",
        "web-x",
        "--address",
        &address,
        "--host-key-file",
        &file.display().to_string(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line(s) name other hosts"),
        "{}",
        stderr(&o)
    );
}
