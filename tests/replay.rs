//! End to end: `drawbridge replay` as an auditor runs it — the real binary on a recording
//! written by the real recorder, driven through a real pseudo-terminal (python3's `pty`
//! module) for the keys, and through pipes for plain playback, `--from` and `--timeline`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::recording::proto::{self, record::Body};
use drawbridge::recording::{CheckpointPolicy, Recorder, RecordingKey, SessionMeta};

const HOUR: Duration = Duration::from_secs(3600);

/// A recording of a full-screen "frame N" redrawn every hour, with an exec, an SFTP upload
/// and an exit status along the way. Returns its path.
fn hourly_frames(dir: &Path, frames: u32) -> PathBuf {
    let (key, _) = RecordingKey::generate().expect("key");
    let meta = SessionMeta {
        session_id: "replay-e2e".into(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: Some(3),
        started_at_unix_ms: 1_790_000_000_000,
    };
    let policy = CheckpointPolicy {
        every_records: u64::MAX,
        interval: HOUR,
    };
    let mut events = vec![(
        Duration::ZERO,
        Body::Exec(proto::Exec {
            channel: 1,
            command: "uptime".into(),
        }),
    )];
    for n in 0..frames {
        let data = format!("\x1b[H\x1b[2Jframe {n}\r\n").into_bytes();
        events.push((
            HOUR * n,
            Body::Output(proto::Data {
                channel: 0,
                data: data.into(),
            }),
        ));
    }
    let upload = "channel 2: sftp close /tmp/x wrote 1258291 bytes".to_string();
    events.push((HOUR / 2, Body::Note(proto::Note { text: upload })));
    let exit = proto::ExitStatus {
        channel: 1,
        status: 0,
    };
    events.push((HOUR / 2, Body::ExitStatus(exit)));
    // The recorder keeps time from going backwards: append in time order.
    events.sort_by_key(|(at, _)| *at);
    let mut rec = Recorder::create(dir, &meta, Arc::new(key), policy).expect("create");
    let start = Instant::now();
    for (at, body) in events {
        rec.append(start + at, body).expect("append");
    }
    rec.path().to_path_buf()
}

/// Runs `drawbridge ARGS` with `stdin` piped in; seek indexes are cached under `dir`.
fn drawbridge(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drawbridge");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn timeline_prints_the_events_at_once_with_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hourly_frames(dir.path(), 3);
    let started = Instant::now();
    let out = drawbridge(
        dir.path(),
        &["replay", path.to_str().expect("utf-8"), "--timeline"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30), "no waiting");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("[00:00:00.000] session replay-e2e started: alice as root@web-1"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("[00:00:00.") && lines[1].ends_with("channel 1: exec uptime"));
    assert!(
        lines[2].starts_with("[00:30:00.")
            && lines[2].ends_with("sftp close /tmp/x wrote 1258291 bytes (1.2 MiB)"),
        "{stdout}"
    );
    assert!(lines[3].ends_with("channel 1: exit status 0"), "{stdout}");
    assert!(
        !stdout.contains("frame"),
        "terminal output is not part of the timeline"
    );
}

#[test]
fn from_draws_the_screen_of_that_moment_and_plays_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hourly_frames(dir.path(), 5);
    let path = path.to_str().expect("utf-8");
    let out = drawbridge(
        dir.path(),
        &["replay", path, "--from", "150m", "--speed", "0"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let frames: Vec<&str> = stdout.split("frame ").skip(1).map(|s| &s[..1]).collect();
    assert_eq!(frames, ["2", "3", "4"], "{stdout:?}");
    // Events before the start are not repeated; none come after it here.
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("exec uptime"), "{stderr}");
    // The first seek builds the index; the next run finds it in the cache.
    assert!(
        stderr.contains("indexing the recording for seeking"),
        "{stderr}"
    );
    let again = drawbridge(
        dir.path(),
        &["replay", path, "--from", "150m", "--speed", "0"],
        b"",
    );
    assert_eq!(again.stdout, out.stdout);
    assert!(!text(&again.stderr).contains("indexing"));
    assert!(dir.path().join("cache/drawbridge/replay-index").is_dir());

    let out = drawbridge(dir.path(), &["replay", path, "--from", "10h"], b"");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot start at 10:00:00.000: the recording ends at 04:00:00."),
        "{stderr}"
    );

    let out = drawbridge(
        dir.path(),
        &["replay", path, "--from", "fifty minutes"],
        b"",
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid duration"));
}

#[test]
fn without_a_terminal_keys_are_not_read_and_playback_is_plain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hourly_frames(dir.path(), 3);
    // "q" on a pipe is data, not a key: everything still plays.
    let out = drawbridge(
        dir.path(),
        &["replay", path.to_str().expect("utf-8"), "--speed", "0"],
        b"q q",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("frame ").count(), 3, "{stdout:?}");
    // No terminal: no restoring escape sequences appended to the output.
    assert!(stdout.ends_with("frame 2\r\n"), "{stdout:?}");
    // The events go to stderr, plain.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("] channel 1: exec uptime\n"), "{stderr:?}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");

    let quiet = drawbridge(
        dir.path(),
        &[
            "replay",
            path.to_str().expect("utf-8"),
            "--speed",
            "0",
            "--no-events",
        ],
        b"",
    );
    assert_eq!(text(&quiet.stderr), "");
}

#[test]
fn replay_of_something_that_is_not_a_recording_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("bogus.dbr");
    std::fs::write(&bogus, b"hello, world\n").expect("write");
    for extra in [&[][..], &["--timeline"][..], &["--from", "1s"][..]] {
        let mut args = vec!["replay", bogus.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let out = drawbridge(dir.path(), &args, b"");
        assert!(!out.status.success(), "{extra:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("not a Drawbridge recording"),
            "{extra:?}: {stderr}"
        );
    }
}

/// Runs `drawbridge ARGS` on a fresh pseudo-terminal, following `steps` (each waits for a
/// text on screen, then optionally checks the terminal mode and sends keys), then waits for
/// it to exit. Prints a JSON report.
const PTY_DRIVER: &str = r#"
import fcntl, json, os, select, sys, termios, time
binary, args, steps = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(master)
    os.execv(binary, [binary] + args)
seen = b""
def pump(timeout):
    global seen
    ready, _, _ = select.select([master], [], [], timeout)
    if not ready:
        return False
    try:
        chunk = os.read(master, 65536)
    except OSError:
        chunk = b""
    seen += chunk
    return bool(chunk)
def fail(why):
    os.kill(pid, 9)
    sys.exit(f"{why}; screen so far: {seen!r}")
report = {"modes": []}
for step in steps:
    deadline = time.monotonic() + 20
    while step["expect"].encode() not in seen:
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {step['expect']!r}")
        pump(0.1)
    lflag = termios.tcgetattr(slave)[3]
    report["modes"].append({"canonical": bool(lflag & termios.ICANON), "echo": bool(lflag & termios.ECHO)})
    os.write(master, step["send"].encode())
deadline = time.monotonic() + 20
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        fail("did not exit")
    pump(0.1)
while pump(0):
    pass
lflag = termios.tcgetattr(slave)[3]
report["exit"] = os.waitstatus_to_exitcode(status)
report["after"] = {"canonical": bool(lflag & termios.ICANON), "echo": bool(lflag & termios.ECHO)}
report["screen"] = seen.decode(errors="replace")
print(json.dumps(report))
"#;

fn on_pty(dir: &Path, args: &[&str], steps: &[(&str, &str)]) -> serde_json::Value {
    let steps: Vec<_> = steps
        .iter()
        .map(|(expect, send)| serde_json::json!({"expect": expect, "send": send}))
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg(env!("CARGO_BIN_EXE_drawbridge"))
        .arg(serde_json::to_string(args).expect("json"))
        .arg(serde_json::to_string(&steps).expect("json"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "pty driver: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("report")
}

#[test]
fn on_a_terminal_space_pauses_dot_steps_and_q_quits_restoring_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hourly_frames(dir.path(), 4);
    // Frames are an hour apart: only the keys can bring the next one within the test. Each
    // step shows one frame or event: the upload and the exit status come before frame 1.
    let report = on_pty(
        dir.path(),
        &["replay", path.to_str().expect("utf-8")],
        &[("frame 0", " ..."), ("frame 1", "."), ("frame 2", "q")],
    );
    assert_eq!(report["exit"], 0, "{report}");
    let screen = report["screen"].as_str().expect("screen");
    assert!(!screen.contains("frame 3"), "{screen:?}");
    // The events show on the same terminal, dimmed, in time order.
    let upload = screen.find("\x1b[2m[00:30:00.").expect("upload event");
    let exit = screen.find("channel 1: exit status 0").expect("exit event");
    let frame_1 = screen.find("frame 1").expect("frame 1");
    assert!(upload < exit && exit < frame_1, "{screen:?}");
    // Keys were read one at a time without echo, and the terminal is back as it was.
    let unbuffered = serde_json::json!({"canonical": false, "echo": false});
    assert_eq!(report["modes"][0], unbuffered, "{report}");
    assert_eq!(
        report["after"],
        serde_json::json!({"canonical": true, "echo": true})
    );
}

#[test]
fn on_a_terminal_seek_keys_jump_and_ctrl_c_quits_restoring_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hourly_frames(dir.path(), 4);
    // `--from` lands just before frame 1; `>` (+10 s) crosses it, the left arrow goes back.
    let report = on_pty(
        dir.path(),
        &["replay", path.to_str().expect("utf-8"), "--from", "59m55s"],
        &[("frame 0", ">"), ("frame 1", "\x1b[D\x03")],
    );
    assert_eq!(report["exit"], 0, "{report}");
    let screen = report["screen"].as_str().expect("screen");
    let frames: Vec<&str> = screen.split("frame ").skip(1).map(|s| &s[..1]).collect();
    assert_eq!(frames, ["0", "1", "0"], "{screen:?}");
    assert_eq!(
        report["after"],
        serde_json::json!({"canonical": true, "echo": true})
    );
}
