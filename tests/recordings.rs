//! End to end: recordings and the audit log under crashes, key rotation, deletion and a
//! recording that cannot keep up, with the real gateway, sshd, `ssh` and CLI.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drawbridge::recording::audit::{AuditIndex, audit_dir};
use drawbridge::recording::proto::record::Body;
use drawbridge::recording::{KeyRing, Recording, read_file, verify_file};
use support::*;

fn sessions(w: &World) -> Vec<serde_json::Value> {
    let o = w.alice.cli(&["sessions", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

/// Polls until `n` sessions are marked ended (their seal hashes are then in the audit log).
fn wait_until_ended(w: &World, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let list = sessions(w);
        if list.iter().filter(|s| !s["ended_at"].is_null()).count() >= n {
            return list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not ended: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn recordings(w: &World) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(w.gateway.path("recordings"))
        .expect("recordings")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dbr"))
        .collect();
    found.sort();
    found
}

fn key_ring(w: &World) -> KeyRing {
    let text = std::fs::read_to_string(w.gateway.path("data/keys/recording.pub")).expect("pub");
    KeyRing::parse(&text).expect("ring")
}

fn audit_json(w: &World) -> Vec<serde_json::Value> {
    let out = w.gateway.admin_ok(&["audit", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn kill_9_during_a_busy_session_then_restart_seals_it_and_keeps_every_checkpoint() {
    let extra = "[recording]\ncheckpoint_records = 50\ncheckpoint_interval = \"20ms\"\n";
    let mut w = World::with_gateway(Gateway::start_with(extra));
    w.grant_alice("web-1", "root", "30m");
    let mut child = w
        .alice
        .ssh("root@web-1")
        .arg("yes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    while seen < 1 << 20 {
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "ssh ended early: {}", w.gateway.log());
        seen += n;
    }
    // Wait until a signed checkpoint is on disk, and remember how far it reaches.
    let path = recordings(&w).pop().expect("recording");
    let start = Instant::now();
    let durable = loop {
        if let Some(k) = verify_file(&path, &key_ring(&w))
            .last_checkpoint
            .filter(|k| *k > 50)
        {
            break k;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    };

    w.gateway.kill9();
    let _ = child.wait();
    w.gateway.restart();

    let verify = w.gateway.admin(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let rec = read_file(&path).expect("read");
    let seal = rec.seal().expect("sealed on restart");
    assert!(
        seal.end_reason.starts_with("interrupted"),
        "{}",
        seal.end_reason
    );
    // Nothing a checkpoint had covered before the kill is lost...
    assert!(
        rec.records.len() as u64 > durable,
        "{} <= {durable}",
        rec.records.len()
    );
    // ...and checkpoints kept their cadence up to the crash.
    let last = (rec.records.iter())
        .rposition(|r| matches!(r.body, Some(Body::Checkpoint(_))))
        .expect("checkpoint");
    assert!(
        rec.records.len() - 1 - last <= 51,
        "{} records after the last checkpoint",
        rec.records.len() - 1 - last
    );
    let output: Vec<u8> = (rec.records.iter())
        .filter_map(|r| match &r.body {
            Some(Body::Output(d)) => Some(d.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let pattern: &[u8] = b"y\n";
    assert!(output.len() >= 1 << 16, "{} output bytes", output.len());
    assert!(
        output.chunks(2).all(|c| c == &pattern[..c.len()]),
        "not `yes` output"
    );

    // The audit log has the interrupted seal, and the session is ended in the store.
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let index = AuditIndex::load(&audit_dir(&w.gateway.path("recordings"))).expect("index");
    assert!(index.sealed.get(&name).is_some_and(|s| s.interrupted));
    let list = sessions(&w);
    assert!(
        list[0]["end_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("interrupted")),
        "{list:?}"
    );
    // And the restarted gateway records new sessions normally.
    let o = w.alice.ssh_run("root@web-1", "echo after-restart");
    assert!(stdout(&o).contains("after-restart"), "{}", stderr(&o));
}

#[test]
fn after_key_rotation_old_and_new_recordings_verify_and_the_old_key_is_needed() {
    let mut w = World::new();
    w.grant_alice("web-1", "root", "30m");
    assert!(w.alice.ssh_run("root@web-1", "echo one").status.success());
    wait_until_ended(&w, 1);
    let out = w.gateway.admin_ok(&["keys", "rotate-recording"]);
    assert!(out.contains("recording key rotated"), "{out}");
    w.gateway.restart();
    assert!(w.alice.ssh_run("root@web-1", "echo two").status.success());
    wait_until_ended(&w, 2);

    let verify = w.gateway.admin(&["verify", "--all"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let key_ids: Vec<String> = recordings(&w)
        .iter()
        .map(|p| {
            read_file(p)
                .expect("read")
                .seal()
                .expect("sealed")
                .key_id
                .clone()
        })
        .collect();
    assert_eq!(key_ids.len(), 2);
    assert_ne!(key_ids[0], key_ids[1], "both recordings sealed by one key");

    // Drop the old key from the ring: its recording no longer verifies, by key id.
    let pub_path = w.gateway.path("data/keys/recording.pub");
    let text = std::fs::read_to_string(&pub_path).expect("pub");
    assert_eq!(text.lines().count(), 2, "{text}");
    let newest = text.lines().last().expect("line").to_string();
    std::fs::write(&pub_path, format!("{newest}\n")).expect("write");
    let verify = w.gateway.admin(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stdout(&verify).contains("unknown key id"),
        "{}",
        stdout(&verify)
    );
}

#[test]
fn a_deleted_recording_fails_verify_by_name_even_though_every_file_verifies() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    for word in ["first", "second"] {
        assert!(
            w.alice
                .ssh_run("root@web-1", &format!("echo {word}"))
                .status
                .success()
        );
    }
    wait_until_ended(&w, 2);
    assert!(w.gateway.admin(&["verify"]).status.success());
    let gone = recordings(&w).remove(0);
    let name = gone
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::remove_file(&gone).expect("rm");

    let o = w.gateway.admin(&["verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("FAIL\t{name}\trecording of session")),
        "{}",
        stdout(&o)
    );
    let o = w.gateway.admin(&["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["findings"][0]["subject"], name.as_str());
    assert_eq!(report["recordings"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["recordings"][0]["status"], "ok");
}

#[test]
fn a_recording_that_cannot_keep_up_ends_the_session_and_the_audit_log_says_why() {
    let w = World::with_gateway(Gateway::start_with("[recording]\nqueue_bytes = 1000\n"));
    w.grant_alice("web-1", "root", "30m");
    let o = w.alice.ssh_run(
        "root@web-1",
        "head -c 200000 /dev/zero | tr '\\0' x; sleep 30",
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("could not be recorded (fail-closed)"),
        "{}",
        stderr(&o)
    );
    wait_until_ended(&w, 1);
    let entries = audit_json(&w);
    let failed = entries
        .iter()
        .find(|e| e["kind"] == "recording.failed")
        .unwrap_or_else(|| panic!("no recording.failed entry: {entries:?}"));
    assert!(
        failed["details"]
            .as_str()
            .is_some_and(|d| d.contains("queue full")),
        "{failed}"
    );
    assert!(entries.iter().any(|e| e["kind"] == "session.start"));
    assert!(entries.iter().any(|e| e["kind"] == "session.sealed"));
    // What was recorded before the failure is sealed and named in the audit log.
    assert!(w.gateway.admin(&["verify"]).status.success());
}

#[test]
fn export_to_asciicast_plays_in_asciinema_and_jsonl_keeps_every_record() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let mut child = w
        .alice
        .ssh("root@web-1")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        "echo snow-$((6*7))-☃; exit 0\n".as_bytes(),
    )
    .expect("type");
    assert!(child.wait_with_output().expect("wait").status.success());
    let list = wait_until_ended(&w, 1);
    let id = list[0]["id"].as_str().expect("id");

    let cast = w.gateway.path("s.cast");
    let cast_arg = cast.display().to_string();
    w.gateway
        .admin_ok(&["export", id, "--format", "asciicast", "-o", &cast_arg]);
    let text = std::fs::read_to_string(&cast).expect("cast");
    let mut lines = text.lines();
    let header: serde_json::Value =
        serde_json::from_str(lines.next().expect("header")).expect("header json");
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    let mut last = 0.0;
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).expect("event json");
        let t = event[0].as_f64().expect("time");
        assert!(t >= last, "time goes back: {line}");
        last = t;
        assert!(event[1] == "o" || event[1] == "r", "{line}");
        assert!(event[2].is_string(), "{line}");
    }
    // asciinema 2.2 `cat` opens /dev/tty; `script` gives it a pseudo-terminal.
    let played = std::process::Command::new("script")
        .args(["-qec", &format!("asciinema cat {cast_arg}"), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script + asciinema");
    assert!(played.status.success(), "{}", stderr(&played));
    assert!(stdout(&played).contains("snow-42-☃"), "{}", stdout(&played));

    let jsonl = w.gateway.admin_ok(&["export", id, "--format", "jsonl"]);
    let records: Vec<serde_json::Value> = (jsonl.lines())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let on_disk = read_file(&w.gateway.recording(id))
        .expect("read")
        .records
        .len();
    assert_eq!(records.len(), on_disk);
    assert_eq!(records[0]["type"], "start");
    assert_eq!(records[on_disk - 1]["type"], "seal");
    assert!(records.iter().any(|r| r["type"] == "pty"));
}

/// The input (or output) bytes a recording holds, all channels together.
fn recorded_data(rec: &Recording, input: bool) -> Vec<u8> {
    (rec.records.iter())
        .filter_map(|r| match (&r.body, input) {
            (Some(Body::Input(d)), true) | (Some(Body::Output(d)), false) => Some(d.data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn recorded_notes(rec: &Recording) -> Vec<&str> {
    (rec.records.iter())
        .filter_map(|r| match &r.body {
            Some(Body::Note(n)) => Some(n.text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn with_record_input_off_a_commands_input_is_counted_not_kept_and_its_output_still_is() {
    let typed: &[u8] = b"typed-secret-4711\n";
    for record_input in [true, false] {
        let gateway = if record_input {
            Gateway::start()
        } else {
            Gateway::start_with_ssh("record_input = false\n")
        };
        let w = World::with_gateway(gateway);
        w.grant_alice("web-1", "root", "30m");
        let mut ssh = w.alice.ssh("root@web-1");
        ssh.arg("cat > /dev/null; echo out-marker");
        let o = run_with_input(&mut ssh, typed.to_vec());
        assert!(stdout(&o).contains("out-marker"), "{}", stderr(&o));
        wait_until_ended(&w, 1);

        let path = recordings(&w).pop().expect("recording");
        let rec = read_file(&path).expect("read");
        let data = |input: bool| recorded_data(&rec, input);
        let notes = recorded_notes(&rec);
        let file = std::fs::read(&path).expect("file");
        let has_typed = file.windows(typed.len()).any(|w| w == typed);
        assert_eq!(
            data(false),
            b"out-marker\n",
            "record_input = {record_input}"
        );
        if record_input {
            assert_eq!(data(true), typed);
            assert!(has_typed);
            assert!(!notes.iter().any(|n| n.contains("input not recorded")));
        } else {
            assert!(data(true).is_empty());
            assert!(!has_typed, "the typed text is in the recording file");
            let counted = format!("input not recorded ({} bytes)", typed.len());
            assert!(notes.iter().any(|n| n.ends_with(&counted)), "{notes:?}");
            assert!(
                (notes.iter())
                    .any(|n| n.ends_with("input is not recorded ([ssh] record_input = false)")),
                "{notes:?}"
            );
        }
        assert!(w.gateway.admin(&["verify"]).status.success());
    }
}

#[test]
fn a_commands_stdin_is_kept_up_to_the_limit_and_keystrokes_are_kept_whole() {
    const LIMIT: usize = 65536;
    let gateway = Gateway::start_with_ssh(&format!("command_input_limit = {LIMIT}\n"));
    let w = World::with_gateway(gateway);
    w.grant_alice("web-1", "root", "30m");

    // A command's stdin (a file, as with `tar c | ssh … 'tar x'`): the first
    // LIMIT bytes are recorded, the rest counted.
    let sent: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut ssh = w.alice.ssh("root@web-1");
    ssh.arg("cat > /dev/null; echo out-marker");
    let o = run_with_input(&mut ssh, sent.clone());
    assert!(stdout(&o).contains("out-marker"), "{}", stderr(&o));
    wait_until_ended(&w, 1);
    let first = recordings(&w);
    let rec = read_file(&first[0]).expect("read");
    let kept = recorded_data(&rec, true);
    assert!(
        kept == sent[..LIMIT],
        "kept {} bytes of the first {LIMIT}",
        kept.len()
    );
    assert_eq!(recorded_data(&rec, false), b"out-marker\n");
    let notes = recorded_notes(&rec);
    let past = format!("input past the first {LIMIT} bytes is counted, not recorded");
    assert!(notes.iter().any(|n| n.contains(&past)), "{notes:?}");
    let counted = format!(
        "input not recorded past the first {LIMIT} bytes ({} bytes)",
        sent.len() - LIMIT
    );
    assert!(notes.iter().any(|n| n.ends_with(&counted)), "{notes:?}");

    // Keystrokes on a terminal are never cut short, however many there are.
    let typed: Vec<u8> = (0..2560)
        .flat_map(|i| format!("{:079}\n", i).into_bytes())
        .collect();
    let mut ssh = w.alice.ssh("root@web-1");
    ssh.args([
        "-tt",
        &format!("head -c {} > /dev/null; echo pty-done", typed.len()),
    ]);
    let o = run_with_input(&mut ssh, typed.clone());
    assert!(stdout(&o).contains("pty-done"), "{}", stderr(&o));
    wait_until_ended(&w, 2);
    let second = (recordings(&w).into_iter())
        .find(|p| !first.contains(p))
        .expect("second recording");
    let rec = read_file(&second).expect("read");
    let kept = recorded_data(&rec, true);
    assert!(
        kept == typed,
        "kept {} of {} typed bytes",
        kept.len(),
        typed.len()
    );
    assert!(
        !recorded_notes(&rec)
            .iter()
            .any(|n| n.contains("not recorded"))
    );
    assert!(w.gateway.admin(&["verify"]).status.success());
}

#[test]
fn a_legacy_scp_transfer_names_every_file_both_ways_even_past_the_input_limit() {
    let w = World::with_gateway(Gateway::start_with_ssh("command_input_limit = 65536\n"));
    w.grant_alice("web-1", "root", "30m");
    let dir = tempfile::tempdir().expect("tempdir");
    let up = dir.path().join("up");
    std::fs::create_dir_all(up.join("sub")).expect("mkdir");
    // Two files past the limit between them: whichever scp sends second starts
    // beyond it, and must still be named.
    for name in ["one.bin", "two.bin"] {
        std::fs::write(up.join(name), vec![7u8; 200 * 1024]).expect("write");
    }
    std::fs::write(up.join("sub/small.txt"), b"v1\n").expect("write");
    let dest = dir.path().join("dest");
    let o = (w.alice.scp())
        .args(["-O", "-r"])
        .arg(&up)
        .arg(format!("root@web-1@127.0.0.1:{}", dest.display()))
        .output()
        .expect("scp");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dest.join("sub/small.txt")).expect("copied"),
        b"v1\n"
    );
    wait_until_ended(&w, 1);

    let rec = read_file(&recordings(&w)[0]).expect("read");
    let notes = recorded_notes(&rec);
    for line in [
        "scp mkdir up (mode 0",
        "scp upload up/one.bin (204800 bytes, mode 0",
        "scp upload up/two.bin (204800 bytes, mode 0",
        "scp mkdir up/sub (mode 0",
        "scp upload up/sub/small.txt (3 bytes, mode 0",
    ] {
        assert!(notes.iter().any(|n| n.contains(line)), "{line}: {notes:#?}");
    }
    assert!(
        notes
            .iter()
            .any(|n| n.contains("input past the first 65536 bytes"))
    );

    // And back: what leaves the target is named too (its bytes are all kept).
    let back = dir.path().join("back");
    let o = (w.alice.scp())
        .args(["-O", "-r"])
        .arg(format!("root@web-1@127.0.0.1:{}", dest.display()))
        .arg(&back)
        .output()
        .expect("scp");
    assert!(o.status.success(), "{}", stderr(&o));
    wait_until_ended(&w, 2);
    let download = (recordings(&w).iter())
        .map(|p| read_file(p).expect("read"))
        .find(|r| recorded_notes(r).iter().any(|n| n.contains("scp download")))
        .expect("the download's recording");
    let notes = recorded_notes(&download);
    for line in [
        "scp mkdir dest (mode 0",
        "scp download dest/one.bin (204800 bytes, mode 0",
        "scp download dest/sub/small.txt (3 bytes, mode 0",
    ] {
        assert!(notes.iter().any(|n| n.contains(line)), "{line}: {notes:#?}");
    }
    assert!(w.gateway.admin(&["verify"]).status.success());
}
