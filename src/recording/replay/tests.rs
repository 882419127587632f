//! Playback, seeking and the index on real recording files written by the real recorder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::controls::Key;
use super::index::{Cursor, Index, KEYFRAME_BYTES};
use super::*;
use crate::recording::proto::{self, record::Body};
use crate::recording::{CheckpointPolicy, Recorder, RecordingKey, SessionMeta};

const SECOND: u64 = 1_000_000;

/// Writes a recording whose records happen at the given offsets from its start.
fn write(dir: &Path, events: &[(Duration, Body)]) -> PathBuf {
    let (key, _) = RecordingKey::generate().expect("key");
    let meta = SessionMeta {
        session_id: "s1".into(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: Some(7),
        started_at_unix_ms: 1_790_000_000_000,
    };
    let policy = CheckpointPolicy {
        every_records: u64::MAX,
        interval: Duration::from_secs(3600),
    };
    let mut rec = Recorder::create(dir, &meta, Arc::new(key), policy).expect("create");
    // The recorder's own start, not a later `Instant::now()`: creating the file syncs it,
    // which can take a noticeable part of a second on a busy disk.
    let start = rec.started();
    for (at, body) in events {
        rec.append(start + *at, body.clone()).expect("append");
    }
    rec.path().to_path_buf()
}

fn output(text: &str) -> Body {
    Body::Output(proto::Data {
        channel: 0,
        data: text.as_bytes().to_vec().into(),
    })
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Full-screen redraws "frame N" every 10 s, N = 0..count.
fn frames(count: u64) -> Vec<(Duration, Body)> {
    (0..count)
        .map(|n| (secs(10 * n), output(&format!("\x1b[H\x1b[2Jframe {n}"))))
        .collect()
}

fn play_with_keys(path: &Path, options: &Options, keys: &[Key]) -> String {
    let (tx, rx) = mpsc::channel();
    for key in keys {
        tx.send(*key).expect("send");
    }
    let mut out = Vec::new();
    play(path, options, Some(rx), &mut out, None).expect("play");
    String::from_utf8_lossy(&out).into_owned()
}

fn at_speed(speed: f64) -> Options {
    Options {
        speed,
        ..Options::default()
    }
}

#[test]
fn pause_and_step_show_frames_without_waiting_for_their_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = secs(3600);
    let path = write(
        dir.path(),
        &[
            (Duration::ZERO, output("one ")),
            (hour, output("two ")),
            (hour * 2, output("three ")),
            (hour * 3, output("four ")),
        ],
    );
    // Keys are queued before playback: each is read while the player waits an hour.
    let keys = [Key::TogglePause, Key::Step, Key::Step, Key::Quit];
    let started = Instant::now();
    let out = play_with_keys(&path, &at_speed(1.0), &keys);
    assert_eq!(out, "one two three ");
    assert!(started.elapsed() < secs(60), "played at recorded speed");
}

#[test]
fn keys_that_do_nothing_while_playing_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        &[(Duration::ZERO, output("a")), (secs(3600), output("b"))],
    );
    // Step while playing is ignored; speed changes rescale the wait; q still quits.
    let out = play_with_keys(
        &path,
        &at_speed(1.0),
        &[Key::Step, Key::Faster, Key::Slower, Key::Quit],
    );
    assert_eq!(out, "a");
}

#[test]
fn seek_keys_paint_the_screen_of_the_moment_forward_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &frames(6));
    let out = play_with_keys(
        &path,
        &at_speed(1.0),
        &[Key::Forward, Key::Forward, Key::Back, Key::Quit],
    );
    // Raw frame 0, then painted screens for 10 s, 20 s and (back) 10 s again.
    let painted: Vec<&str> = out.split("frame ").skip(1).map(|s| &s[..1]).collect();
    assert_eq!(painted, ["0", "1", "2", "1"], "{out:?}");
    assert!(!out.contains("frame 3"));
}

#[test]
fn from_paints_the_screen_then_plays_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &frames(6));
    let options = Options {
        from: Some(secs(25)),
        ..at_speed(f64::INFINITY)
    };
    let mut out = Vec::new();
    play(&path, &options, None, &mut out, None).expect("play");
    let out = String::from_utf8_lossy(&out);
    let shown: Vec<&str> = out.split("frame ").skip(1).map(|s| &s[..1]).collect();
    assert_eq!(shown, ["2", "3", "4", "5"], "{out:?}");
}

#[test]
fn from_past_the_end_is_refused_with_the_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &frames(3));
    let options = Options {
        from: Some(secs(3600)),
        ..at_speed(1.0)
    };
    let err = play(&path, &options, None, &mut Vec::new(), None).expect_err("past the end");
    assert!(matches!(err, RecordingError::StartPastEnd { .. }));
    let text = err.to_string();
    assert!(
        text.contains("01:00:00.000") && text.contains("00:00:20."),
        "{text}"
    );
}

#[test]
fn events_are_shown_between_output_in_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        &[
            (
                Duration::ZERO,
                Body::Exec(proto::Exec {
                    channel: 1,
                    command: "tar cf - /etc".into(),
                }),
            ),
            (secs(1), output("partial line")),
            (
                secs(2),
                Body::ExitStatus(proto::ExitStatus {
                    channel: 1,
                    status: 2,
                }),
            ),
            (
                secs(3),
                Body::Input(proto::Data {
                    channel: 0,
                    data: b"hunter2".to_vec().into(),
                }),
            ),
        ],
    );
    let mut out = Vec::new();
    let mut events = Vec::new();
    let sink = Events {
        out: &mut events,
        terminal: true,
    };
    play(&path, &at_speed(f64::INFINITY), None, &mut out, Some(sink)).expect("play");
    assert_eq!(out, b"partial line");
    let events = String::from_utf8(events).expect("utf-8");
    assert!(
        events.starts_with("\x1b[2m[00:00:00.000] session s1 started"),
        "{events:?}"
    );
    assert!(events.contains("channel 1: exec tar cf - /etc\x1b[22m\r\n"));
    // The exit status follows an unfinished output line: it starts a line of its own.
    assert!(events.contains("\r\n\x1b[2m[00:00:02.0"), "{events:?}");
    assert!(events.contains("channel 1: exit status 2"));
    assert!(!events.contains("hunter2"), "keystrokes are never shown");
}

#[test]
fn a_seek_through_the_index_shows_what_playing_from_the_start_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut events = vec![(
        Duration::ZERO,
        Body::Pty(proto::Pty {
            channel: 0,
            term: "xterm".into(),
            cols: 100,
            rows: 30,
        }),
    )];
    for n in 0..300u64 {
        let at = Duration::from_millis(700 * n);
        let text = match n {
            // A full-screen program in the alternate screen for a while.
            100 => "\x1b[?1049h\x1b[Hin the editor".to_string(),
            150 => "\x1b[?1049l".to_string(),
            _ => format!("line {n} \x1b[1;3{}mbold\x1b[m\r\n", n % 8),
        };
        events.push((at, output(&text)));
        if n == 200 {
            let resize = proto::Resize {
                channel: 0,
                cols: 60,
                rows: 20,
            };
            events.push((at, Body::Resize(resize)));
        }
    }
    let path = write(dir.path(), &events);
    let index = Index::build(&path).expect("index");
    assert!(
        index.keyframes.len() > 20,
        "{} keyframes",
        index.keyframes.len()
    );
    for t in [0, 3, 33, 70, 71, 72, 105, 106, 107, 110, 140, 141, 150, 209] {
        let target = t * SECOND;
        let mut played = Cursor::start(&path).expect("start");
        played.advance_to(target).expect("play");
        let mut sought = Cursor::start(&path).expect("start");
        sought.seek(&path, &index, target).expect("seek");
        let (a, b) = (
            played.terminal.parser.screen(),
            sought.terminal.parser.screen(),
        );
        assert_eq!(a.contents(), b.contents(), "at {t}s");
        assert_eq!(a.size(), b.size(), "at {t}s");
        assert_eq!(a.cursor_position(), b.cursor_position(), "at {t}s");
        assert_eq!(a.alternate_screen(), b.alternate_screen(), "at {t}s");
        assert_eq!(
            played.next.as_ref().map(|n| n.offset),
            sought.next.as_ref().map(|n| n.offset)
        );
    }
}

#[test]
fn lots_of_output_at_once_still_gets_keyframes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = "x".repeat(64 * 1024);
    let events: Vec<_> = (0..40).map(|_| (Duration::ZERO, output(&chunk))).collect();
    let path = write(dir.path(), &events);
    let index = Index::build(&path).expect("index");
    // 2.5 MiB at the same moment: the empty screen, then one after each whole MiB.
    assert_eq!(KEYFRAME_BYTES, 1024 * 1024);
    assert_eq!(index.keyframes.len(), 3);
}

#[test]
fn the_index_is_cached_and_rebuilt_when_the_recording_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let path = write(dir.path(), &frames(5));
    let built = Index::load_or_build(&path, Some(cache.as_path())).expect("build");
    let files: Vec<_> = std::fs::read_dir(&cache).expect("cache").collect();
    assert_eq!(files.len(), 1);
    let cached = files[0].as_ref().expect("entry").path();
    assert_eq!(
        Index::load_or_build(&path, Some(cache.as_path())).expect("load"),
        built
    );

    // A corrupt cache entry is ignored and replaced.
    std::fs::write(&cached, b"DRAWBRIDGE-REPLAY-INDEX 1\ngarbage").expect("corrupt");
    assert_eq!(
        Index::load_or_build(&path, Some(cache.as_path())).expect("rebuild"),
        built
    );

    // The recording grows (a live session): the cached index no longer matches.
    let more = write(dir.path().join("other").as_path(), &frames(8));
    std::fs::copy(&more, &path).expect("replace");
    let rebuilt = Index::load_or_build(&path, Some(cache.as_path())).expect("rebuild");
    assert_ne!(rebuilt, built);
    assert_eq!(rebuilt.end_us / SECOND, 70);

    // An unwritable cache is no error.
    let file_as_dir = dir.path().join("not-a-dir");
    std::fs::write(&file_as_dir, b"").expect("file");
    assert_eq!(
        Index::load_or_build(&path, Some(file_as_dir.as_path())).expect("no cache"),
        rebuilt
    );
}

#[test]
fn a_keyframe_that_does_not_match_the_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &frames(5));
    let index = Index::build(&path).expect("index");
    let mut keyframe = index.keyframes.last().expect("keyframe").clone();
    keyframe.chain[0] ^= 1;
    let err = Cursor::at_keyframe(&path, &keyframe)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("changed since its replay index was built"),
        "{err}"
    );
}

#[test]
fn invalid_speeds_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &frames(1));
    for bad in [0.0, -1.0, f64::NAN] {
        let err = play(&path, &at_speed(bad), None, &mut Vec::new(), None).expect_err("bad");
        assert!(matches!(err, RecordingError::InvalidSpeed(_)));
    }
}

#[test]
fn pause_scaling() {
    let s = Duration::from_secs;
    assert_eq!(scaled_pause(s(4), 2.0), s(2));
    assert_eq!(scaled_pause(s(4), 0.5), s(8));
    assert_eq!(scaled_pause(s(40), f64::INFINITY), Duration::ZERO);
    assert_eq!(scaled_pause(s(1), 1e-300), Duration::MAX);
}
