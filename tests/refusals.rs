//! Every way to be refused, each proven against the real gateway and sshd.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn an_unknown_key_is_refused_at_authentication() {
    let w = World::new();
    let stranger = w.gateway.path("stranger");
    keygen(&stranger);
    let o = std::process::Command::new("ssh")
        .args(["-p", &w.alice.ssh_port.to_string(), "-i"])
        .arg(&stranger)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg("root@web-1@127.0.0.1")
        .arg("true")
        .output()
        .expect("ssh");
    assert_eq!(o.status.code(), Some(255));
    assert!(
        stderr(&o).contains("Permission denied (publickey)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_pending_request_does_not_open_the_door() {
    let w = World::new();
    w.alice.login();
    let id = w.alice.request("web-1", "root", "30m");
    let o = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("request {id} is pending approval")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_grant_is_for_exactly_one_login_target_and_user() {
    let w = World::new();
    let web2 = Sshd::start(&w.gateway.path("data/keys/ssh_user_ca.pub"));
    w.gateway.add_target("web-2", &web2, &["env=prod"]);
    w.grant_alice("web-1", "root", "30m");
    // Another login on the same target.
    let o = w.alice.ssh_run("nobody@web-1", "true");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("access to nobody@web-1 denied"),
        "{}",
        stderr(&o)
    );
    // Another target.
    let o = w.alice.ssh_run("root@web-2", "true");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("access to root@web-2 denied"),
        "{}",
        stderr(&o)
    );
    // Someone else using alice's grant.
    let o = w.carol.ssh_run("root@web-1", "true");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("access to root@web-1 denied: no active grant"),
        "{}",
        stderr(&o)
    );
    // alice herself gets in.
    assert!(w.alice.ssh_run("root@web-1", "true").status.success());
}

#[test]
fn nobody_approves_their_own_request_and_only_approvers_approve() {
    let w = World::new();
    w.alice.login();
    w.carol.login();
    w.bob.login();
    let id = w.alice.request("web-1", "root", "30m").to_string();
    let own = w.alice.cli(&["approve", &id]);
    assert!(!own.status.success());
    assert!(
        stderr(&own).contains("cannot approve your own request"),
        "{}",
        stderr(&own)
    );
    let outsider = w.carol.cli(&["approve", &id]);
    assert!(!outsider.status.success());
    assert!(
        stderr(&outsider).contains("carol is not allowed to approve"),
        "{}",
        stderr(&outsider)
    );
    // An approver's own request cannot be self-approved either, group or not.
    let bobs = w.bob.request("web-1", "root", "30m").to_string();
    let o = w.bob.cli(&["approve", &bobs]);
    assert!(
        stderr(&o).contains("cannot approve your own request"),
        "{}",
        stderr(&o)
    );
    // Still pending after all of that.
    let o = w.alice.ssh_run("root@web-1", "true");
    assert!(stderr(&o).contains("pending approval"), "{}", stderr(&o));
}

#[test]
fn wrong_password_wrong_totp_and_replayed_totp_are_refused() {
    let w = World::new();
    let code = w.alice.code();
    let wrong_code = if code == "000000" { "000001" } else { "000000" };
    let o = w.alice.login_with("pw-alice", wrong_code);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid credentials"), "{}", stderr(&o));
    let o = w.alice.login_with("not-her-password", &code);
    assert!(stderr(&o).contains("invalid credentials"), "{}", stderr(&o));
    let o = w.alice.login_with("pw-alice", &code);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same code a second time: replay.
    let o = w.alice.login_with("pw-alice", &code);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid credentials"), "{}", stderr(&o));
    // No token was saved with 0644 permissions along the way.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.alice.home.join("cli/login.json"))
        .expect("saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_target_whose_host_key_changed_is_refused() {
    let w = World::new();
    let imposter = Sshd::start(&w.gateway.path("data/keys/ssh_user_ca.pub"));
    // Registered with web-1's key but pointing at a server with another key.
    let address = format!("127.0.0.1:{}", imposter.port);
    w.gateway.admin_ok(&[
        "target",
        "add",
        "web-x",
        "--address",
        &address,
        "--host-key",
        w.sshd.host_key_pub.trim(),
    ]);
    w.alice.login();
    w.bob.login();
    let id = w.alice.request("web-x", "root", "30m");
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    let o = w.alice.ssh_run("root@web-x", "true");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not match its pinned key"),
        "{}",
        stderr(&o)
    );
    assert!(
        !imposter.log().contains("Accepted publickey"),
        "no login on the imposter"
    );
}

#[test]
fn an_unreachable_target_is_reported_without_hanging() {
    let w = World::new();
    let closed = free_port();
    let address = format!("127.0.0.1:{closed}");
    w.gateway.admin_ok(&[
        "target",
        "add",
        "gone",
        "--address",
        &address,
        "--host-key",
        w.sshd.host_key_pub.trim(),
    ]);
    w.alice.login();
    w.bob.login();
    let id = w.alice.request("gone", "root", "30m");
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    let started = Instant::now();
    let o = w.alice.ssh_run("root@gone", "true");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is unreachable"), "{}", stderr(&o));
}

#[test]
fn a_target_that_rejects_the_certificate_is_named_with_the_principal_tried() {
    let w = World::new();
    // A grant for a login the target has no account for: sshd refuses the
    // gateway's certificate, and the engineer learns which principal it was.
    w.grant_alice("web-1", "ghost", "30m");
    let started = Instant::now();
    let o = w.alice.ssh_run("ghost@web-1", "true");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("target web-1 rejected the gateway's certificate for principal \"ghost\""),
        "{}",
        stderr(&o)
    );
    // The gateway goes on serving: a login the target has still works.
    w.grant_alice("web-1", "root", "30m");
    let o = w.alice.ssh_run("root@web-1", "echo still-serving");
    assert_eq!(stdout(&o).trim(), "still-serving", "{}", stderr(&o));
}

#[test]
fn repeated_failed_logins_lock_that_user_out_but_not_others() {
    let w = World::new();
    for _ in 0..5 {
        let o = w.carol.login_with("wrong-password", &w.carol.code());
        assert!(!o.status.success());
        assert!(stderr(&o).contains("invalid credentials"), "{}", stderr(&o));
    }
    // The right password no longer helps carol for a while...
    let o = w.carol.login_with("pw-carol", &w.carol.code());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("too many failed logins; try again in"),
        "{}",
        stderr(&o)
    );
    // ...while bob, from the same address (under its own, higher limit), logs in.
    w.bob.login();
}

#[test]
fn repeated_failed_ssh_attempts_from_one_address_refuse_even_a_good_key() {
    let w = World::with_ssh_config("[access]\nmax_auth_failures_per_address = 3");
    w.grant_alice("web-1", "root", "30m");
    let stranger = w.gateway.path("stranger");
    keygen(&stranger);
    for _ in 0..3 {
        let o = std::process::Command::new("ssh")
            .args(["-p", &w.alice.ssh_port.to_string(), "-i"])
            .arg(&stranger)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                w.alice.known_hosts.display()
            ))
            .arg("root@web-1@127.0.0.1")
            .arg("true")
            .output()
            .expect("ssh");
        assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    }
    let o = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    assert!(
        w.gateway.log().contains("too many failed attempts"),
        "{}",
        w.gateway.log()
    );
}

const MFA_POLICY: &str = r#"
@id("connect-with-grant-and-mfa") @mfa("required")
permit (principal, action == Action::"connect", resource) when { context.grant_active };
@id("anyone-may-request")
permit (principal, action == Action::"request", resource);
@id("approvers")
permit (principal in Group::"approvers", action == Action::"approve", resource);
"#;

/// Stock ssh answering the keyboard-interactive prompt through SSH_ASKPASS.
fn ssh_with_code(user: &User, code: &str) -> std::process::Output {
    let askpass = user.home.join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {code}\n")).expect("askpass");
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::process::Command::new("ssh")
        .args(["-p", &user.ssh_port.to_string(), "-i"])
        .arg(&user.key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=no",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", user.known_hosts.display()))
        .args(["-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR"])
        .arg("root@web-1@127.0.0.1")
        .arg("echo second-factor-ok")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh")
}

#[test]
fn policy_required_mfa_asks_for_a_single_use_totp_code_at_connect() {
    let gateway = Gateway::start_with("policies_dir = \"mfa-policies\"\n");
    // Moved into place whole: the gateway polls the folder, and an empty folder
    // or a half-written file read in between would be a policy set that permits
    // nothing.
    std::fs::create_dir_all(gateway.path("mfa-policies.new")).expect("dir");
    std::fs::write(gateway.path("mfa-policies.new/main.cedar"), MFA_POLICY).expect("policy");
    std::fs::rename(
        gateway.path("mfa-policies.new"),
        gateway.path("mfa-policies"),
    )
    .expect("move the policies into place");
    let w = World::with_gateway(gateway);
    // The gateway reloads the folder within its polling interval; a grant
    // needing one approval proves the new set is in force.
    w.alice.login();
    w.bob.login();
    let start = Instant::now();
    loop {
        let id = w.alice.request("web-1", "root", "30m");
        let o = w.bob.cli(&["approve", &id.to_string()]);
        if o.status.success() && !stdout(&o).contains("approval counted") {
            break;
        }
        let _ = w.alice.cli(&["cancel", &id.to_string()]);
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "policy not reloaded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without the prompt (BatchMode) the key alone is not enough.
    let o = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    // A wrong code is refused.
    let code = drawbridge::identity::totp_code(w.alice.totp.bytes(), unix_now() + 30);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let o = ssh_with_code(&w.alice, wrong);
    assert_ne!(o.status.code(), Some(0));
    assert!(!stdout(&o).contains("second-factor-ok"));
    // The right code opens the session, once.
    let o = ssh_with_code(&w.alice, &code);
    assert!(stdout(&o).contains("second-factor-ok"), "{}", stderr(&o));
    let o = ssh_with_code(&w.alice, &code);
    assert!(
        !stdout(&o).contains("second-factor-ok"),
        "a replayed code must be refused"
    );
}

/// Connects and sends nothing; returns how long until the gateway hung up.
fn silent_client(addr: &str) -> Duration {
    use std::io::Read;
    let started = Instant::now();
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(tcp.read(&mut byte).expect("hung up, not timed out"), 0);
    started.elapsed()
}

/// `openssl s_client` with `args`, sends `input` and then stalls with stdin
/// open; returns what it printed and how long until the gateway hung up.
fn stalled_tls_client(args: &[&str], input: &[u8]) -> (String, Duration) {
    use std::io::Write;
    let started = Instant::now();
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-quiet"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("send");
    stdin.flush().expect("flush");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the gateway kept a stalled client for 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    drop(stdin);
    let out = child.wait_with_output().expect("output");
    (String::from_utf8_lossy(&out.stdout).into_owned(), elapsed)
}

/// A PostgreSQL startup message (protocol 3.0) for `user`.
fn startup_message(user: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "app"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

#[test]
fn clients_that_stall_before_logging_in_are_let_go_and_others_are_served() {
    let gw = Gateway::start_with_listeners("login_timeout = \"1s\"\n", "header_timeout = \"1s\"\n");
    let pg = format!("127.0.0.1:{}", gw.pg_port);
    let within = |d: Duration| d >= Duration::from_millis(900) && d < Duration::from_secs(10);

    // Silent TCP clients, on the PostgreSQL and HTTPS listeners.
    let waited = silent_client(&pg);
    assert!(within(waited), "postgres, silent: {waited:?}");
    let waited = silent_client(&gw.api_addr);
    assert!(within(waited), "https, silent: {waited:?}");

    // TLS up and the startup sent, then no password: told why, then closed.
    let (said, waited) = stalled_tls_client(
        &["-starttls", "postgres", "-connect", &pg],
        &startup_message("app_rw@orders-db"),
    );
    assert!(within(waited), "postgres, no password: {waited:?}");
    assert!(
        said.contains("no password within the login timeout"),
        "{said:?}"
    );

    // Half a request's headers, then nothing.
    let (_, waited) = stalled_tls_client(
        &["-connect", &gw.api_addr],
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\n",
    );
    assert!(within(waited), "https, half the headers: {waited:?}");

    // A stalled client does not hold up anyone else.
    let _stalled = std::net::TcpStream::connect(&gw.api_addr).expect("connect");
    let o = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("https://{}/.well-known/jwks.json", gw.api_addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
}
