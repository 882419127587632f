//! End to end over SSH: stock `ssh` → drawbridge → real OpenSSH `sshd`, with
//! grants made through the real CLI and REST API.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn first_start_creates_private_keys_and_says_how_to_add_an_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[ssh]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(BIN)
        .args(["init", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("drawbridge user add"), "{text}");
    assert!(text.contains("TrustedUserCAKeys"), "{text}");
    for key in [
        "ssh_host_ed25519",
        "ssh_user_ca",
        "recording.pk8",
        "tls.key",
    ] {
        let meta = std::fs::metadata(dir.path().join("data/keys").join(key)).expect(key);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key}");
    }
    assert!(dir.path().join("recordings").is_dir());
    // A second start reuses the keys and says nothing about first start.
    let again = std::process::Command::new(BIN)
        .args(["init", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("init");
    assert!(!stdout(&again).contains("first start"));
}

#[test]
fn without_a_grant_ssh_is_refused_with_the_command_to_ask() {
    let w = World::new();
    let o = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("access to root@web-1 denied: no active grant"),
        "{err}"
    );
    assert!(
        err.contains("drawbridge request web-1 --login root"),
        "{err}"
    );
}

#[test]
fn approved_grant_opens_exec_and_pty_shell_with_a_recorded_certificate_login() {
    let w = World::new();
    let grant = w.grant_alice("web-1", "root", "30m");

    // exec: output and exit status come back.
    let o = w
        .alice
        .ssh_run("root@web-1", "uname -s; echo marker-$((40+2)); exit 3");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}\n{}",
        stderr(&o),
        w.gateway.log()
    );
    let out = stdout(&o);
    assert!(out.contains("Linux") && out.contains("marker-42"), "{out}");

    // interactive shell with a pty.
    let mut child = w
        .alice
        .ssh("root@web-1")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    // Type only once the shell answers, as a person would: a shell that is still
    // starting may flush input typed too early (readline resets the terminal).
    let mut stdin = child.stdin.take().expect("stdin");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out_pipe = child.stdout.take().expect("stdout");
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out_pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        })
    };
    let ready =
        |needle: &str| String::from_utf8_lossy(&seen.lock().expect("lock")).contains(needle);
    let start = Instant::now();
    'wait: while !ready("shell-ready-2") {
        // The arithmetic makes the answer differ from the echoed input.
        stdin
            .write_all(b"echo shell-ready-$((1+1))\n")
            .expect("type");
        let poll = Instant::now();
        while poll.elapsed() < Duration::from_millis(500) {
            if ready("shell-ready-2") {
                break 'wait;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the shell never answered"
        );
    }
    stdin
        .write_all(b"tty; echo pty-$((6*7)); exit 0\n")
        .expect("type");
    drop(stdin);
    let o = child.wait_with_output().expect("wait");
    reader.join().expect("reader");
    let o = std::process::Output {
        stdout: seen.lock().expect("lock").clone(),
        ..o
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("/dev/pts/") && out.contains("pty-42"), "{out}");

    // The target authenticated a gateway certificate naming the session and user.
    let log = w.sshd.log();
    let line = log
        .lines()
        .find(|l| l.contains("Accepted publickey for root") && l.contains("ED25519-CERT"))
        .unwrap_or_else(|| panic!("no certificate login in sshd log:\n{log}"));
    assert!(
        line.contains("ID drawbridge session=s-") && line.contains("user=alice"),
        "{line}"
    );

    // Both sessions are listed with the grant, and their recordings verify.
    let sessions = w.alice.cli(&["sessions", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&sessions.stdout).expect("json");
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|s| s["grant_id"] == grant));
    wait_until_ended(&w, 2);
    let verify = w.gateway.admin(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("2 recordings verified, 0 failed"));

    // Replay shows what the engineer saw. Both sessions may start in the same
    // second, so the list's order does not say which is which.
    let replays: Vec<String> = list
        .iter()
        .map(|s| {
            let id = s["id"].as_str().expect("id");
            stdout(&w.gateway.admin(&["replay", id, "--speed", "0"]))
        })
        .collect();
    assert!(
        replays.iter().any(|r| r.contains("marker-42")),
        "{replays:?}"
    );
    assert!(replays.iter().any(|r| r.contains("pty-42")), "{replays:?}");

    // Search finds what the screen showed (after the shell's expansion, so the
    // typed `$((6*7))` is not what matches) and the command line that ran.
    let found = w.gateway.admin(&["search", "pty-42"]);
    assert!(found.status.success(), "{}", stderr(&found));
    assert!(stdout(&found).contains("\tscreen\t"), "{}", stdout(&found));
    let found = w.gateway.admin(&["search", "uname -s", "--json"]);
    assert!(
        stdout(&found).contains("\"kind\":\"command\""),
        "{}",
        stdout(&found)
    );
    let none = w.gateway.admin(&["search", "never-printed-anywhere"]);
    assert_eq!(none.status.code(), Some(1));
}

/// Waits until `n` sessions are recorded as ended (sealing happens just after
/// the client sees its channel close).
fn wait_until_ended(w: &World, n: usize) {
    let start = Instant::now();
    loop {
        let o = w.alice.cli(&["sessions", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if list.iter().filter(|s| !s["ended_at"].is_null()).count() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sessions did not end: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn changing_any_byte_of_a_recording_fails_verify_naming_the_record() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let o = w.alice.ssh_run("root@web-1", "echo hello-recording");
    assert!(o.status.success(), "{}", stderr(&o));
    wait_until_ended(&w, 1);
    let entries: Vec<_> = std::fs::read_dir(w.gateway.path("recordings"))
        .expect("recordings")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dbr"))
        .collect();
    assert_eq!(entries.len(), 1);
    let path = &entries[0];
    assert!(w.gateway.admin(&["verify"]).status.success());
    let original = std::fs::read(path).expect("read");
    // Flip a byte in the middle of the recording (inside the recorded output).
    let at = original
        .windows(5)
        .position(|w| w == b"hello")
        .expect("output recorded");
    let mut tampered = original.clone();
    tampered[at] ^= 0x20;
    std::fs::write(path, &tampered).expect("write");
    let o = w.gateway.admin(&["verify"]);
    assert_eq!(o.status.code(), Some(1));
    let report = stdout(&o);
    assert!(
        report.contains("FAIL") && report.contains("record "),
        "{report}"
    );
}

#[test]
fn revoking_a_grant_closes_the_live_session_within_a_second() {
    let w = World::new();
    let grant = w.grant_alice("web-1", "root", "30m");
    let child = w.alice_live_session();
    let revoked_at = Instant::now();
    let o = w
        .bob
        .cli(&["revoke", &grant.to_string(), "--comment", "incident over"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = child.wait_with_output().expect("wait");
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "session closed after {took:?}"
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains(&format!("grant {grant} was revoked")),
        "{}",
        stderr(&o)
    );
    // And the grant no longer opens new sessions.
    let again = w.alice.ssh_run("root@web-1", "true");
    assert!(stderr(&again).contains("was revoked"), "{}", stderr(&again));
}

#[test]
fn grant_expiry_closes_the_live_session_and_refuses_new_ones() {
    let w = World::new();
    let grant = w.grant_alice("web-1", "root", "3s");
    let started = Instant::now();
    let o = w.alice.ssh_run("root@web-1", "sleep 60");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "session lasted {took:?}");
    assert!(
        stderr(&o).contains(&format!("grant {grant} expired")),
        "{}",
        stderr(&o)
    );
    let again = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("expired at"), "{}", stderr(&again));
}

#[test]
fn disabling_a_user_ends_their_live_session_and_refuses_their_key() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let child = w.alice_live_session();
    let at = Instant::now();
    w.gateway.admin_ok(&["user", "disable", "alice"]);
    let o = child.wait_with_output().expect("wait");
    assert!(
        at.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        at.elapsed()
    );
    assert!(
        stderr(&o).contains("your account was disabled"),
        "{}",
        stderr(&o)
    );
    let again = w.alice.ssh_run("root@web-1", "true");
    assert_eq!(again.status.code(), Some(255));
    assert!(
        stderr(&again).contains("Permission denied"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn interactive_sessions_are_warned_before_the_grant_ends() {
    let w = World::with_ssh_config("grant_end_warning = \"2s\"");
    let grant = w.grant_alice("web-1", "root", "4s");
    let started = Instant::now();
    let o = w
        .alice
        .ssh("root@web-1")
        .args(["-tt", "sleep 30"])
        .output()
        .expect("ssh -tt");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let err = stderr(&o);
    let warned = err
        .find(&format!("drawbridge: grant {grant} ends in 0m0"))
        .unwrap_or_else(|| panic!("no warning in {err:?}"));
    let closed = err
        .find(&format!("grant {grant} expired"))
        .unwrap_or_else(|| panic!("no closing message in {err:?}"));
    assert!(warned < closed, "{err}");
    // Commands without a terminal are not interrupted by a warning.
    let w2 = World::with_ssh_config("grant_end_warning = \"1h\"");
    w2.grant_alice("web-1", "root", "30m");
    let o = w2.alice.ssh_run("root@web-1", "echo quiet");
    assert!(!stderr(&o).contains("ends in"), "{}", stderr(&o));
}

/// The cipher `ssh -v` says it negotiated with the gateway, and the output.
fn negotiated_cipher(w: &World, extra: &[&str]) -> (Option<String>, std::process::Output) {
    let o = w
        .alice
        .ssh("root@web-1")
        .arg("-v")
        .args(extra)
        .arg("echo ok")
        .output()
        .expect("ssh");
    let cipher = stderr(&o)
        .lines()
        .find_map(|l| l.split("server->client cipher: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    (cipher, o)
}

#[test]
fn the_front_offers_aes_gcm_only_when_configured_so() {
    // Default: stock OpenSSH picks its first choice, ChaCha20-Poly1305.
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let (cipher, o) = negotiated_cipher(&w, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(cipher.as_deref(), Some("chacha20-poly1305@openssh.com"));

    let w = World::with_ssh_config("ciphers = \"aes-gcm\"");
    w.grant_alice("web-1", "root", "30m");
    let (cipher, o) = negotiated_cipher(&w, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok");
    assert!(
        cipher
            .as_deref()
            .is_some_and(|c| c.starts_with("aes") && c.ends_with("-gcm@openssh.com")),
        "{cipher:?}"
    );
    // A client that insists on ChaCha20-Poly1305 finds nothing in common.
    let (_, o) = negotiated_cipher(&w, &["-o", "Ciphers=chacha20-poly1305@openssh.com"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no matching cipher"), "{}", stderr(&o));
}

/// Bytes that do not compress or repeat (xorshift), so a dropped or reordered
/// packet cannot go unnoticed.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A loopback proxy for one connection to `port` that flips the lowest bit of the
/// client's byte number `flip_at`, as a faulty path or an attacker on it would.
fn bit_flipping_proxy(port: u16, flip_at: usize) -> u16 {
    use std::io::Read;
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy_port = listener.local_addr().expect("proxy addr").port();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("accept");
        let server = TcpStream::connect(("127.0.0.1", port)).expect("connect gateway");
        let (mut from_client, mut to_server) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let (mut from_server, mut to_client) = (server, client);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_server, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Both);
        });
        let (mut seen, mut buf) = (0, [0u8; 16384]);
        while let Ok(n @ 1..) = from_client.read(&mut buf) {
            if (seen..seen + n).contains(&flip_at) {
                buf[flip_at - seen] ^= 1;
            }
            seen += n;
            if to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(Shutdown::Both);
    });
    proxy_port
}

#[test]
fn chacha20_poly1305_carries_megabytes_both_ways_and_refuses_a_flipped_bit() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let data = noise(4 << 20);

    // Upload (the gateway opens ChaCha20-Poly1305 packets) and download (it seals them).
    let o = run_with_input(w.alice.ssh("root@web-1").arg("sha256sum"), data.clone());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).split_whitespace().next(),
        Some(sha256_hex(&data).as_str())
    );
    let file = w.gateway.dir.path().join("noise.bin");
    std::fs::write(&file, &data).expect("write noise");
    let o = w
        .alice
        .ssh_run("root@web-1", &format!("cat {}", file.display()));
    assert!(
        o.status.success(),
        "{:?} {} ({} bytes) gateway log: {}",
        o.status,
        stderr(&o),
        o.stdout.len(),
        w.gateway.log()
    );
    assert!(
        o.stdout == data,
        "download differs ({} bytes)",
        o.stdout.len()
    );

    // One bit flipped on the way in, a megabyte into the upload: the packet fails
    // its tag, the connection ends, and nothing after the bad packet reaches the target.
    let copy = w.gateway.dir.path().join("copy.bin");
    let proxy = bit_flipping_proxy(w.alice.ssh_port, 1 << 20);
    let o = run_with_input(
        w.alice
            .ssh_via(proxy, "root@web-1")
            .arg(format!("cat > {}", copy.display())),
        data.clone(),
    );
    assert!(!o.status.success(), "a corrupted upload succeeded");
    // It failed after logging in (ssh may say nothing more than its exit status):
    // the upload's and the download's sessions, and this one, all ended.
    assert!(!stderr(&o).contains("host key"), "{}", stderr(&o));
    wait_until_ended(&w, 3);
    let written = std::fs::read(&copy).unwrap_or_default();
    assert!(
        written.len() < data.len(),
        "all {} bytes arrived",
        written.len()
    );
    assert!(
        written == data[..written.len()],
        "corrupted bytes reached the target"
    );

    // The gateway goes on serving.
    let o = w.alice.ssh_run("root@web-1", "echo still-serving");
    assert_eq!(stdout(&o).trim(), "still-serving", "{}", stderr(&o));
}
