//! What the gateway allows, refuses and ends inside an SSH connection: the
//! environment allow-list, remote/agent/X11 forwarding refusals, local
//! forwarding behind the `forward` policy action, `drawbridge kill`, idle
//! timeout and maximum session length. Real sshd, real gateway, stock clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// `ssh` with extra options placed before the destination.
fn ssh_with(user: &User, options: &[&str], dest: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-p", &user.ssh_port.to_string()])
        .args(options)
        .args(user.client_options())
        .arg(format!("{dest}@127.0.0.1"))
        .stdin(Stdio::null());
    cmd
}

#[test]
fn only_allow_listed_environment_variables_reach_the_target() {
    let w = World::with_ssh_config("env_allow = [\"LANG\", \"LC_*\"]");
    w.grant_alice("web-1", "root", "30m");
    // The target accepts all three (AcceptEnv); the gateway must drop the last.
    let o = ssh_with(
        &w.alice,
        &["-o", "SendEnv=LANG LC_PAPER DRAWBRIDGE_TEST_SECRET"],
        "root@web-1",
    )
    .arg("echo \"[$LANG|$LC_PAPER|${DRAWBRIDGE_TEST_SECRET-unset}]\"")
    .env("LANG", "C.UTF-8")
    .env("LC_PAPER", "en_GB.UTF-8")
    .env("DRAWBRIDGE_TEST_SECRET", "leaked")
    .output()
    .expect("ssh");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "[C.UTF-8|en_GB.UTF-8|unset]\n");
}

#[test]
fn remote_forwarding_agent_forwarding_and_x11_are_refused_with_a_message() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let agent_sock = w.gateway.path("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let start = Instant::now();
    while !agent_sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "ssh-agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = ssh_with(
        &w.alice,
        &[
            "-R",
            "0:127.0.0.1:9",
            "-A",
            "-X",
            "-o",
            "XAuthLocation=/bin/false",
        ],
        "root@web-1",
    )
    .arg("echo still-works; echo \"agent=${SSH_AUTH_SOCK-none} display=${DISPLAY-none}\"")
    .env("SSH_AUTH_SOCK", &agent_sock)
    .env("DISPLAY", "127.0.0.1:99")
    .output()
    .expect("ssh");
    let _ = agent.kill();
    let _ = agent.wait();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert!(out.contains("still-works"), "{out}");
    assert!(out.contains("agent=none display=none"), "{out}");
    assert!(err.contains("remote port forwarding (-R"), "{err}");
    assert!(err.contains("agent forwarding is not allowed"), "{err}");
    assert!(err.contains("X11 forwarding is not allowed"), "{err}");
    let notes = w.wait_for_notes(1);
    assert!(
        notes.iter().filter(|n| n.contains("refused:")).count() >= 3,
        "{notes:#?}"
    );
}

/// A TCP echo server on a free loopback port; serves connections until dropped.
fn echo_server() -> (u16, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = tx.send(());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn ssh_w_forwards_through_the_target_when_policy_allows_and_is_recorded() {
    let w = World::new();
    w.gateway.add_target("staging-1", &w.sshd, &["env=staging"]);
    w.grant_alice("staging-1", "root", "30m");
    let (port, connections) = echo_server();
    let mut child = ssh_with(
        &w.alice,
        &["-W", &format!("127.0.0.1:{port}")],
        "root@staging-1",
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("ssh -W");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"ping-through-gateway\n").expect("write");
    let mut stdout_pipe = child.stdout.take().expect("stdout");
    let mut echoed = vec![0u8; 21];
    stdout_pipe
        .read_exact(&mut echoed)
        .expect("echo comes back");
    assert_eq!(echoed, b"ping-through-gateway\n");
    // EOF makes the echo server close, which closes the channel and ends ssh.
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        connections.try_recv().is_ok(),
        "the echo server saw the connection"
    );
    let notes = w.wait_for_notes(1);
    let dest = format!("forward to 127.0.0.1:{port}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("{dest} opened"))
                && n.contains("forward-with-active-grant")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("{dest} closed: 21 bytes sent, 21 bytes received"))),
        "{notes:#?}"
    );
}

#[test]
fn forwarding_into_production_is_refused_even_with_a_grant() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let (port, connections) = echo_server();
    let o = ssh_with(
        &w.alice,
        &["-W", &format!("127.0.0.1:{port}")],
        "root@web-1",
    )
    .output()
    .expect("ssh -W");
    assert_eq!(o.status.code(), Some(255));
    // The stock client says only that the channel was refused; the reason is
    // in the recording and the gateway log.
    assert!(
        stderr(&o).contains("stdio forwarding failed"),
        "{}",
        stderr(&o)
    );
    assert!(
        connections.try_recv().is_err(),
        "nothing may reach the destination"
    );
    let notes = w.wait_for_notes(1);
    assert!(
        notes.iter().any(|n| n.contains(&format!(
            "forward to 127.0.0.1:{port} refused: port forwarding from web-1 to 127.0.0.1:{port} is not allowed (policy: forbid-prod-forward)"
        ))),
        "{notes:#?}"
    );
}

#[test]
fn an_approver_kills_a_live_session_within_a_second_and_an_engineer_cannot() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let child = w.alice_live_session();
    let live = w.wait_for_live(1);
    let id = live[0]["id"].as_str().expect("id").to_string();

    let refused = w.alice.cli(&["kill", &id]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("may not kill sessions"),
        "{}",
        stderr(&refused)
    );
    let unknown = w.bob.cli(&["kill", "s-0000000000000000"]);
    assert!(
        stderr(&unknown).contains("no live session"),
        "{}",
        stderr(&unknown)
    );

    let at = Instant::now();
    let o = w.bob.cli(&["kill", &id, "--comment", "INC-9 containment"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = child.wait_with_output().expect("wait");
    assert!(
        at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        at.elapsed()
    );
    assert!(
        stderr(&o).contains("session terminated by bob (INC-9 containment)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_idle_session_is_ended_after_the_idle_timeout() {
    let w = World::with_ssh_config("idle_timeout = \"2s\"");
    w.grant_alice("web-1", "root", "30m");
    let at = Instant::now();
    let o = w.alice.ssh_run("root@web-1", "sleep 30");
    let took = at.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(stderr(&o).contains("session idle for 2s"), "{}", stderr(&o));
}

#[test]
fn a_busy_session_is_ended_at_the_maximum_length() {
    let w = World::with_ssh_config("idle_timeout = \"1s\"\nmax_session = \"3s\"");
    w.grant_alice("web-1", "root", "30m");
    let at = Instant::now();
    // Output every 0.2 s keeps it from ever being idle for 1 s.
    let o = w
        .alice
        .ssh_run("root@web-1", "while true; do echo tick; sleep 0.2; done");
    let took = at.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(
        stderr(&o).contains("maximum length of 3s"),
        "{}",
        stderr(&o)
    );
}

/// A server whose connections are accepted and then never read: what is sent
/// to it piles up until every window on the way is full.
fn stuck_reader_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the test is over long before this.
        let until = Instant::now() + Duration::from_secs(120);
        listener.set_nonblocking(true).expect("nonblocking");
        while Instant::now() < until {
            if let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    port
}

/// A server that sends zeroes to each connection as fast as it can take them,
/// for at most 120 s.
fn firehose_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let chunk = vec![0u8; 64 * 1024];
                let until = Instant::now() + Duration::from_secs(120);
                while Instant::now() < until && stream.write_all(&chunk).is_ok() {}
            });
        }
    });
    port
}

/// A multiplexing master connection (`ssh -M`) with one local forward, so
/// that later `ssh -S` commands share its SSH connection with the forward.
struct Master {
    child: std::process::Child,
    control: std::path::PathBuf,
    local_port: u16,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start(w: &World, remote_port: u16) -> Master {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = dir.path().join("control");
        let local_port = free_port();
        let forward = format!("{local_port}:127.0.0.1:{remote_port}");
        let child = ssh_with(
            &w.alice,
            &[
                "-M",
                "-S",
                &control.display().to_string(),
                "-N",
                "-L",
                &forward,
            ],
            "root@staging-1",
        )
        .spawn()
        .expect("ssh -M");
        assert!(
            wait_for_port(local_port, Duration::from_secs(15)),
            "the master's forward never listened"
        );
        Master {
            child,
            control,
            local_port,
            _dir: dir,
        }
    }

    /// Runs `command` on a new channel of the master's connection; `None`
    /// when it has not finished within 20 s (the connection is stalled).
    fn run(&self, w: &World, command: &str) -> Option<String> {
        let mut child = ssh_with(
            &w.alice,
            &["-S", &self.control.display().to_string()],
            "root@staging-1",
        )
        .arg(command)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh -S");
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if child.try_wait().expect("try_wait").is_some() {
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .expect("stdout")
                    .read_to_string(&mut out)
                    .expect("read");
                return Some(out);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_forward_whose_target_stops_reading_stalls_neither_the_connection_nor_the_gateway() {
    let w = World::new();
    w.gateway.add_target("staging-1", &w.sshd, &["env=staging"]);
    w.grant_alice("staging-1", "root", "30m");
    let master = Master::start(&w, stuck_reader_server());
    let rss_before = w.gateway.rss_kib();
    // 96 MiB into a destination that never reads: far more than every window
    // and queue between here and there can hold.
    let mut into_forward =
        std::net::TcpStream::connect(("127.0.0.1", master.local_port)).expect("connect");
    into_forward
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < 96 && into_forward.write_all(&chunk).is_ok() {
        written += 1;
    }
    assert!(written < 96, "the destination was meant to stop reading");
    // The same connection still runs commands.
    assert_eq!(master.run(&w, "echo alive").as_deref(), Some("alive\n"));
    // Backpressure, not buffering: the gateway holds at most a few windows.
    let grown = w.gateway.rss_kib().saturating_sub(rss_before);
    assert!(grown < 48 * 1024, "gateway grew by {grown} KiB");
}

#[test]
fn a_forward_whose_client_stops_reading_stalls_neither_the_connection_nor_the_gateway() {
    let w = World::new();
    w.gateway.add_target("staging-1", &w.sshd, &["env=staging"]);
    w.grant_alice("staging-1", "root", "30m");
    let master = Master::start(&w, firehose_server());
    let rss_before = w.gateway.rss_kib();
    // Connect and never read: the firehose fills every window on the way back.
    let _not_reading =
        std::net::TcpStream::connect(("127.0.0.1", master.local_port)).expect("connect");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(master.run(&w, "echo alive").as_deref(), Some("alive\n"));
    let grown = w.gateway.rss_kib().saturating_sub(rss_before);
    assert!(grown < 48 * 1024, "gateway grew by {grown} KiB");
}
