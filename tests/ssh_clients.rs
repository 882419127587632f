//! Every stock client an engineer uses over SSH, end to end through the gateway
//! to a real sshd: sftp, scp (SFTP and legacy modes), rsync, exec with large
//! stdin, compression (`ssh -C`), stdout/stderr separation, exit signals, `ssh -t`,
//! window changes.
//! The target is on this machine, so files "on the target" are local paths.

mod support;

use std::process::{Command, Stdio};

use support::*;

/// Bytes that are easy to find in a recording if they were written there.
fn marked_content(size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    let mut i: u32 = 0;
    while v.len() < size {
        v.extend_from_slice(format!("secret-file-content-{i:08}\n").as_bytes());
        i += 1;
    }
    v.truncate(size);
    v
}

#[test]
fn sftp_put_get_ls_rename_mkdir_rm_work_and_are_recorded_without_contents() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("local.bin");
    let content = marked_content(300_000);
    std::fs::write(&local, &content).expect("write");
    let remote = dir.path().join("remote");
    let back = dir.path().join("back.bin");
    let batch = dir.path().join("batch");
    let r = remote.display();
    std::fs::write(
        &batch,
        format!(
            "mkdir {r}\nput {l} {r}/a.bin\nls {r}\nrename {r}/a.bin {r}/b.bin\nget {r}/b.bin {b}\nrm {r}/b.bin\nrmdir {r}\n",
            l = local.display(),
            b = back.display(),
        ),
    )
    .expect("batch");
    let o = w.alice.sftp("root@web-1", &batch).output().expect("sftp");
    assert!(
        o.status.success(),
        "sftp: {}\n{}",
        stderr(&o),
        w.gateway.log()
    );
    assert!(stdout(&o).contains("a.bin"), "ls output: {}", stdout(&o));
    assert_eq!(std::fs::read(&back).expect("got file back"), content);
    assert!(!remote.exists(), "rmdir ran on the target");

    let notes = w.wait_for_notes(1);
    let has = |needle: &str| notes.iter().any(|n| n.contains(needle));
    assert!(has(&format!("sftp mkdir {r}")), "{notes:#?}");
    assert!(has(&format!("sftp open {r}/a.bin write")), "{notes:#?}");
    assert!(
        has(&format!("sftp close {r}/a.bin wrote 300000 bytes")),
        "{notes:#?}"
    );
    assert!(
        has(&format!("sftp rename {r}/a.bin {r}/b.bin")),
        "{notes:#?}"
    );
    assert!(has(&format!("sftp open {r}/b.bin read")), "{notes:#?}");
    assert!(
        has(&format!("sftp close {r}/b.bin read 300000 bytes")),
        "{notes:#?}"
    );
    assert!(has(&format!("sftp remove {r}/b.bin")), "{notes:#?}");
    assert!(has(&format!("sftp rmdir {r}")), "{notes:#?}");
    let raw = std::fs::read(only_recording(&w)).expect("recording");
    assert!(
        !raw.windows(20).any(|x| x == b"secret-file-content-"),
        "file contents must not be recorded"
    );
    assert!(w.gateway.admin(&["verify"]).status.success());
}

#[test]
fn scp_in_sftp_mode_and_legacy_mode_copies_both_ways() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("up.bin");
    // Large enough that thousands of SFTP replies queue up while uploads wait
    // for window: a relay that serves both directions in one loop deadlocks.
    let content = marked_content(8 << 20);
    std::fs::write(&local, &content).expect("write");
    for (mode, flags) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        let remote = dir.path().join(format!("remote-{mode}.bin"));
        let target = format!("root@web-1@127.0.0.1:{}", remote.display());
        let o = w
            .alice
            .scp()
            .args(flags)
            .arg(&local)
            .arg(&target)
            .output()
            .expect("scp");
        assert!(o.status.success(), "scp {mode} up: {}", stderr(&o));
        assert_eq!(std::fs::read(&remote).expect("uploaded"), content, "{mode}");
        let down = dir.path().join(format!("down-{mode}.bin"));
        let o = w
            .alice
            .scp()
            .args(flags)
            .arg(&target)
            .arg(&down)
            .output()
            .expect("scp");
        assert!(o.status.success(), "scp {mode} down: {}", stderr(&o));
        assert_eq!(std::fs::read(&down).expect("downloaded"), content, "{mode}");
    }
}

#[test]
fn rsync_over_the_gateway_copies_and_then_sends_only_the_changes() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("big.bin"), marked_content(2 << 20)).expect("write");
    std::fs::write(src.join("small.txt"), b"v1\n").expect("write");
    let dest = dir.path().join("dest");
    let target = format!("root@web-1@127.0.0.1:{}/", dest.display());
    let run = || {
        let o = w
            .alice
            .rsync()
            .args(["-a", "--stats"])
            .arg(format!("{}/", src.display()))
            .arg(&target)
            .output()
            .expect("rsync");
        assert!(o.status.success(), "rsync: {}", stderr(&o));
        stdout(&o)
    };
    run();
    assert_eq!(
        std::fs::read(dest.join("big.bin")).expect("copied"),
        marked_content(2 << 20)
    );
    std::fs::write(src.join("small.txt"), b"version 2\n").expect("write");
    let stats = run();
    assert_eq!(
        std::fs::read(dest.join("small.txt")).expect("v2"),
        b"version 2\n"
    );
    assert!(
        stats.contains("Number of regular files transferred: 1"),
        "{stats}"
    );
}

#[test]
fn tar_through_exec_stdin_arrives_intact() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    let big = marked_content(8 << 20);
    std::fs::write(src.join("sub/big.bin"), &big).expect("write");
    let dest = dir.path().join("unpacked");
    std::fs::create_dir(&dest).expect("mkdir");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .expect("tar c");
    assert!(tar.status.success());
    let o = run_with_input(
        w.alice
            .ssh("root@web-1")
            .arg(format!("tar -C {} -xf -", dest.display())),
        tar.stdout,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dest.join("sub/big.bin")).expect("untarred"),
        big
    );
}

/// `ssh -C` negotiates zlib with the gateway: compressed packets take their own
/// path through the decoder (decompressed into a new buffer, where plain ones are
/// handed on without copies).
#[test]
fn a_compressed_session_carries_data_both_ways_intact() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let sent = marked_content(4 << 20);
    let o = run_with_input(
        w.alice.ssh("root@web-1").args(["-C", "-v", "cat"]),
        sent.clone(),
    );
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("compression: zlib@openssh.com"),
        "compression not negotiated:\n{log}"
    );
    assert!(o.stdout == sent, "{} bytes came back", o.stdout.len());
}

#[test]
fn stdout_and_stderr_stay_separate_and_the_exit_status_passes() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let o = w
        .alice
        .ssh_run("root@web-1", "echo to-out; echo to-err >&2; exit 7");
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "to-out\n");
    assert_eq!(stderr(&o), "to-err\n");
}

#[test]
fn a_command_killed_by_a_signal_is_reported_as_such() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    // `-v` makes the stock client log each channel request it receives; it has
    // no exit status to return for a signal, so it exits 255.
    let o = Command::new("ssh")
        .arg("-v")
        .args(["-p", &w.alice.ssh_port.to_string()])
        .args(w.alice.client_options())
        .arg("root@web-1@127.0.0.1")
        .arg("kill -TERM $$")
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rtype exit-signal"),
        "the exit-signal request did not reach the client: {}",
        stderr(&o)
    );
    let notes = w.wait_for_notes(1);
    assert!(
        notes.iter().any(|n| n.contains("killed by signal TERM")),
        "{notes:#?}"
    );
}

#[test]
fn ssh_t_runs_a_command_on_a_pty() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let o = w
        .alice
        .ssh("root@web-1")
        .arg("-tt")
        .arg("tty; echo err-on-pty >&2")
        .output()
        .expect("ssh -tt");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // On a pty, stderr is merged into the terminal's output.
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("err-on-pty"), "{out}");
}

/// `ssh -tt` on a real pseudo-terminal (Python's `pty`, which the stock client
/// needs to read its window size); resizing that terminal and sending SIGWINCH
/// makes ssh send window-change, which must reach the target's pty.
#[test]
fn window_changes_reach_the_target_pty() {
    let w = World::new();
    w.grant_alice("web-1", "root", "30m");
    let mut ssh: Vec<String> = vec![
        "ssh".into(),
        "-tt".into(),
        "-p".into(),
        w.alice.ssh_port.to_string(),
    ];
    ssh.extend(w.alice.client_options());
    ssh.push("root@web-1@127.0.0.1".into());
    // The remote side polls its own size, so nothing here waits a fixed time.
    ssh.push(
        "stty size; while [ \"$(stty size)\" = \"24 80\" ]; do sleep 0.05; done; stty size".into(),
    );
    let script = r#"
import fcntl, json, os, pty, select, signal, struct, sys, termios, time
argv = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
def winsize(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
winsize(24, 80)
out = b""
def read_until(needle, limit=20):
    global out
    end = time.time() + limit
    while needle not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
read_until(b"24 80")
winsize(50, 132)
os.kill(pid, signal.SIGWINCH)
read_until(b"50 132")
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(serde_json::to_string(&ssh).expect("json"))
        .output()
        .expect("python3");
    let out = stdout(&o);
    assert!(out.contains("24 80"), "{out}\n{}", stderr(&o));
    assert!(out.contains("50 132"), "{out}\n{}", stderr(&o));
}

fn only_recording(w: &World) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(w.gateway.path("recordings"))
        .expect("recordings")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dbr"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}
