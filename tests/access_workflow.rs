//! The just-in-time workflow end to end: thresholds, waiting, release,
//! break-glass, notifications to a real HTTP receiver, policy reload and the
//! policy commands — through the real gateway, CLI and `ssh`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// A real HTTP receiver on loopback. Answers 500 to the first request (to
/// exercise retries) and 200 afterwards; hands each body to the test.
fn webhook_receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/hooks/drawbridge",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if n > 0
                && tx
                    .send(String::from_utf8_lossy(&body).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

/// Accepts connections and never answers: a stuck receiver.
fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

fn next_containing(rx: &mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(body) if body.contains(text) => return body,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no webhook containing {text:?}");
}

#[test]
fn webhooks_report_the_workflow_and_a_stuck_receiver_slows_nothing() {
    let (url, rx) = webhook_receiver();
    let stuck = black_hole();
    let w = World::with_gateway(Gateway::start_with(&format!(
        "[[notify.webhooks]]\nurl = \"{url}\"\n[[notify.webhooks]]\nurl = \"{stuck}\"\nformat = \"json\"\n"
    )));
    w.alice.login();
    let started = Instant::now();
    let id = w.alice.request("web-1", "root", "30m");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "request took {:?}",
        started.elapsed()
    );
    let body = next_containing(&rx, "alice requests root@web-1");
    assert!(body.starts_with("{\"text\":\"[drawbridge]"), "{body}");
    assert!(body.contains("2 approval(s) needed"), "{body}");
    w.bob.login();
    w.dave.login();
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    let o = w.dave.cli(&["approve", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let body = next_containing(&rx, "granted");
    assert!(body.contains("bob, dave"), "{body}");
    assert!(w.bob.cli(&["revoke", &id.to_string()]).status.success());
    next_containing(&rx, "bob revoked root@web-1");
    // No token or password ever reaches a receiver.
    assert!(!body.contains("dbt_"), "{body}");
}

#[test]
fn two_approvals_are_needed_for_prod_root_and_a_repeat_counts_once() {
    let w = World::new();
    w.alice.login();
    w.bob.login();
    w.dave.login();
    let id = w.alice.request("web-1", "root", "30m").to_string();
    let first = w.bob.cli(&["approve", &id]);
    assert!(
        stdout(&first).contains("1/2 approvals"),
        "{}",
        stdout(&first)
    );
    let again = w.bob.cli(&["approve", &id]);
    assert!(
        stdout(&again).contains("1/2 approvals"),
        "{}",
        stdout(&again)
    );
    let o = w.alice.ssh_run("root@web-1", "true");
    assert!(
        stderr(&o).contains("pending approval (1/2 approvals)"),
        "{}",
        stderr(&o)
    );
    assert!(w.dave.cli(&["approve", &id]).status.success());
    assert!(w.alice.ssh_run("root@web-1", "true").status.success());
}

#[test]
fn request_wait_returns_when_approved_and_fails_when_denied() {
    let w = World::new();
    w.alice.login();
    w.bob.login();
    w.dave.login();
    let mut waiting = std::process::Command::new(BIN)
        .args([
            "request", "web-1", "--login", "root", "--for", "10m", "--reason", "INC-9", "--wait",
        ])
        .current_dir(&w.alice.gateway_dir)
        .env("DRAWBRIDGE_HOME", w.alice.home.join("cli"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("request --wait");
    let id = wait_for_pending(&w);
    assert!(
        waiting.try_wait().expect("poll").is_none(),
        "--wait returned before a decision"
    );
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    assert!(w.dave.cli(&["approve", &id.to_string()]).status.success());
    let o = waiting.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("approved"), "{}", stdout(&o));

    let waiting = std::process::Command::new(BIN)
        .args([
            "request", "web-1", "--login", "app", "--for", "10m", "--reason", "INC-9", "--wait",
        ])
        .current_dir(&w.alice.gateway_dir)
        .env("DRAWBRIDGE_HOME", w.alice.home.join("cli"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("request --wait");
    let id = wait_for_pending(&w);
    let o = w.bob.cli(&["deny", &id.to_string()]);
    assert!(!o.status.success(), "deny without a comment must fail");
    assert!(
        w.bob
            .cli(&[
                "deny",
                &id.to_string(),
                "--comment",
                "use the read-only role"
            ])
            .status
            .success()
    );
    let o = waiting.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("denied by bob (use the read-only role)"),
        "{}",
        stdout(&o)
    );
}

fn wait_for_pending(w: &World) -> i64 {
    let start = Instant::now();
    loop {
        let o = w.bob.cli(&["requests", "--pending", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(id) = list.first().and_then(|r| r["id"].as_i64()) {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no pending request"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn releasing_a_grant_ends_its_session_and_the_grant() {
    let w = World::new();
    let id = w.grant_alice("web-1", "root", "30m");
    let child = w.alice_live_session();
    let at = Instant::now();
    let o = w.alice.cli(&["release", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = child.wait_with_output().expect("wait");
    assert!(
        at.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        at.elapsed()
    );
    assert!(
        stderr(&o).contains(&format!("grant {id} was released")),
        "{}",
        stderr(&o)
    );
    let grants = w.alice.cli(&["grants", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&grants.stdout).expect("json");
    assert!(list.is_empty(), "{list:?}");
}

#[test]
fn break_glass_opens_at_once_for_its_group_only_and_is_marked() {
    let w = World::new();
    let erin = w.gateway.add_user("erin", &["breakglass"]);
    erin.login();
    let o = erin.cli(&[
        "break-glass",
        "web-1",
        "--login",
        "root",
        "--for",
        "15m",
        "--reason",
        "site down",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("BREAK-GLASS grant"), "{}", stdout(&o));
    let o = erin.ssh_run("root@web-1", "echo in");
    assert!(o.status.success(), "{}", stderr(&o));
    // Over the 30-minute cap, and outside the group: refused.
    let o = erin.cli(&[
        "break-glass",
        "web-1",
        "--login",
        "root",
        "--for",
        "2h",
        "--reason",
        "x",
    ]);
    assert!(!o.status.success());
    w.alice.login();
    let o = w
        .alice
        .cli(&["break-glass", "web-1", "--login", "root", "--reason", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not let alice break glass"),
        "{}",
        stderr(&o)
    );
    // The recording says so.
    let sessions = erin.cli(&["sessions", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&sessions.stdout).expect("json");
    let id = list[0]["id"].as_str().expect("id");
    let replay = std::fs::read(w.gateway.recording(id)).expect("recording");
    assert!(replay.windows(11).any(|w| w == b"BREAK-GLASS"));
}

const POLICY_ONE_SESSION: &str = r#"
@id("connect-with-grant")
permit (principal, action == Action::"connect", resource) when { context.grant_active };
@id("one-session-grants") @max_sessions("1")
permit (principal, action == Action::"request", resource);
@id("approvers")
permit (principal in Group::"approvers", action == Action::"approve", resource);
"#;

#[test]
fn policies_reload_live_and_a_broken_file_keeps_the_last_good_set() {
    let gateway = Gateway::start_with(
        "policies_dir = \"custom-policies\"\n[access]\npolicy_reload_interval = \"200ms\"\n",
    );
    let dir = gateway.path("custom-policies");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("main.cedar"), POLICY_ONE_SESSION).expect("policy");
    let w = World::with_gateway(gateway);
    let check = w.gateway.admin(&["policy", "check"]);
    assert!(
        stdout(&check).contains("3 policies valid"),
        "{}",
        stdout(&check)
    );
    // The gateway picks the new set up by itself (it started with none in the folder).
    let id = wait_for_grantable(&w);
    // One session per grant: the second is refused.
    assert!(w.alice.ssh_run("root@web-1", "true").status.success());
    let o = w.alice.ssh_run("root@web-1", "true");
    assert!(
        stderr(&o).contains(&format!("grant {id} allows 1 session(s)")),
        "{}",
        stderr(&o)
    );

    // A broken file: check reports file:line, the gateway keeps the last good set.
    std::fs::write(dir.join("broken.cedar"), "@id(\"oops\")\npermit (principal, action == Action::\"connect\", resource) when { nonsense };\n").expect("write");
    let check = w.gateway.admin(&["policy", "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains("broken.cedar:2"),
        "{}",
        stdout(&check)
    );
    let start = Instant::now();
    while !w
        .gateway
        .log()
        .contains("policy reload failed; keeping the last good policies")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no reload failure logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = w.alice.ssh_run("root@web-1", "true");
    assert!(
        stderr(&o).contains("allows 1 session(s)"),
        "still the one-session set: {}",
        stderr(&o)
    );
}

/// Requests and approves until the gateway's reloaded policy applies (the
/// built-in set needs two approvals for prod root; the custom one needs one).
fn wait_for_grantable(w: &World) -> i64 {
    w.alice.login();
    w.bob.login();
    let start = Instant::now();
    loop {
        let id = w.alice.request("web-1", "root", "30m");
        assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
        let o = w.alice.cli(&["grants", "--mine", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if list.iter().any(|g| g["id"] == id) {
            return id;
        }
        let _ = w.alice.cli(&["cancel", &id.to_string()]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "custom policy never applied: {}",
            w.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn policy_explain_names_the_deciding_policies_and_the_way_in() {
    let w = World::new();
    let users: Vec<serde_json::Value> =
        serde_json::from_str(&w.gateway.admin_ok(&["user", "list", "--json"])).expect("users json");
    assert_eq!(users.len(), 4);
    assert!(
        !w.gateway
            .admin_ok(&["user", "list", "--json"])
            .contains("argon2"),
        "no password hashes"
    );
    let targets: Vec<serde_json::Value> =
        serde_json::from_str(&w.gateway.admin_ok(&["target", "list", "--json"]))
            .expect("targets json");
    assert_eq!(targets[0]["labels"]["env"], "prod");
    let o = w.gateway.admin(&[
        "policy", "explain", "--user", "alice", "--target", "web-1", "--login", "root",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("decision: DENY"), "{text}");
    assert!(text.contains("forbid-prod-connect-without-grant"), "{text}");
    assert!(
        text.contains("drawbridge request web-1 --login root"),
        "{text}"
    );
    let o = w.gateway.admin(&[
        "policy", "explain", "--user", "alice", "--target", "web-1", "--login", "root", "--action",
        "request",
    ]);
    let text = stdout(&o);
    assert!(
        text.contains("ALLOW")
            && text.contains("approvals needed: 2")
            && text.contains("longest grant: 4h"),
        "{text}"
    );
    let o = w.gateway.admin(&[
        "policy",
        "explain",
        "--user",
        "bob",
        "--target",
        "web-1",
        "--login",
        "root",
        "--action",
        "approve",
        "--requester",
        "bob",
    ]);
    assert!(
        stdout(&o).contains("nobody may approve their own request"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn logins_and_every_transition_reach_the_audit_log_and_sessions_filter() {
    let w = World::new();
    let o = w.alice.login_with("wrong", &w.alice.code());
    assert!(!o.status.success());
    let grant = w.grant_alice("web-1", "root", "30m");
    assert!(w.alice.ssh_run("root@web-1", "true").status.success());
    assert!(w.bob.cli(&["revoke", &grant.to_string()]).status.success());
    let start = Instant::now();
    let wanted = [
        "login.failed",
        "login.ok",
        "access.request_created",
        "access.approval_counted",
        "access.approved",
        "session.start",
        "access.revoked",
    ];
    loop {
        let o = w.gateway.admin(&["audit", "--json"]);
        let text = stdout(&o);
        if wanted.iter().all(|k| text.contains(&format!("\"{k}\"")))
            && text.contains("policies: connect-with-active-grant")
        {
            assert!(
                !text.contains("pw-alice") && !text.contains("dbt_"),
                "no secret in the audit log"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "missing audit kinds in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let count = |args: &[&str]| {
        let mut all = vec!["sessions", "--json"];
        all.extend_from_slice(args);
        let o = w.bob.cli(&all);
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
            .expect("json")
            .len()
    };
    assert_eq!(count(&[]), 1);
    assert_eq!(
        count(&["--user", "alice", "--protocol", "ssh", "--since", "10m"]),
        1
    );
    assert_eq!(count(&["--user", "bob"]), 0);
    assert_eq!(count(&["--target", "web-2"]), 0);
    assert_eq!(count(&["--until", "1h"]), 0);
    assert_eq!(count(&["--live"]), 0);
}

/// Stock `ssh -tt` with a shell and a pipe for what the engineer types; its
/// output arrives on a channel, line by line as the terminal shows it.
fn interactive(
    user: &User,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    mpsc::Receiver<String>,
) {
    let mut child = user
        .ssh("root@web-1")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    (child, stdin, rx)
}

/// Collects output until it contains `text`.
fn wait_for_output(rx: &mpsc::Receiver<String>, seen: &mut String, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains(text) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no {text:?} in {seen:?}"));
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => panic!("no {text:?} in {seen:?}"),
        }
    }
}

#[test]
fn an_interactive_connection_without_a_grant_asks_waits_and_continues_once_approved() {
    let w = World::new();
    w.bob.login();
    w.dave.login();
    let (mut child, mut stdin, rx) = interactive(&w.alice);
    let mut seen = String::new();
    wait_for_output(&rx, &mut seen, "Reason (empty to cancel): ");
    stdin.write_all(b"INC-77 disk full\r").expect("type reason");
    wait_for_output(&rx, &mut seen, "Duration [1h]: ");
    stdin.write_all(b"20m\r").expect("type duration");
    wait_for_output(
        &rx,
        &mut seen,
        "waiting up to 5m for approval (2 needed); approvers have been notified (bob, dave)",
    );
    let id = wait_for_pending(&w);
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    assert!(w.dave.cli(&["approve", &id.to_string()]).status.success());
    wait_for_output(&rx, &mut seen, "approved by bob, dave; connecting");
    stdin
        .write_all(b"echo asked-$((40+2)); exit 0\n")
        .expect("type command");
    wait_for_output(&rx, &mut seen, "asked-42");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?} {seen}");
    let row: serde_json::Value =
        serde_json::from_slice(&w.bob.cli(&["requests", "--all", "--json"]).stdout).expect("json");
    assert_eq!(row[0]["reason"], "INC-77 disk full");
    assert_eq!(row[0]["duration_secs"], 1200);
}

#[test]
fn an_interactive_request_that_is_denied_or_abandoned_refuses_the_connection() {
    let w = World::new();
    w.bob.login();
    let (child, mut stdin, rx) = interactive(&w.alice);
    let mut seen = String::new();
    wait_for_output(&rx, &mut seen, "Reason (empty to cancel): ");
    stdin.write_all(b"curious\r\r").expect("type");
    wait_for_output(&rx, &mut seen, "approvers have been notified");
    let id = wait_for_pending(&w);
    assert!(
        w.bob
            .cli(&["deny", &id.to_string(), "--comment", "not without a ticket"])
            .status
            .success()
    );
    let o = child.wait_with_output().expect("wait");
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "request {id} was denied by bob (not without a ticket)"
        )),
        "{err}"
    );

    // Ctrl-C while waiting withdraws the request.
    let (child, mut stdin, rx) = interactive(&w.alice);
    let mut seen = String::new();
    wait_for_output(&rx, &mut seen, "Reason (empty to cancel): ");
    stdin.write_all(b"again\r\r").expect("type");
    wait_for_output(&rx, &mut seen, "approvers have been notified");
    let id = wait_for_pending(&w);
    stdin.write_all(b"\x03").expect("ctrl-c");
    let o = child.wait_with_output().expect("wait");
    assert!(
        stderr(&o).contains(&format!("request {id} cancelled")),
        "{}",
        stderr(&o)
    );
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&w.bob.cli(&["requests", "--all", "--json"]).stdout).expect("json");
    assert!(
        all.iter()
            .any(|r| r["id"] == id && r["state"] == "cancelled"),
        "{all:?}"
    );
}
