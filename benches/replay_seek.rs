//! Seeking in a long terminal recording: `drawbridge replay ID --from 50m` must show
//! minute 50 of a 60-minute recording in under 100 ms.
//!
//! Writes a 60-minute recording of a busy `top`-like screen (120×40, fully redrawn with
//! colours every 100 ms: 36,000 output records) with the real recorder, then measures:
//! building the keyframe index (once per recording, cached), seeking to minute 50 with the
//! cached index (load and check the index, restore the keyframe, emulate up to the moment,
//! render the screen) — the figure the target is about — and, for comparison, the same
//! seek without an index (emulating everything from the start).
//!
//! `cargo bench --bench replay_seek`; `REPLAY_SEEK_MINUTES` changes the length. Figures
//! are for a file in the page cache, as right after a session or a first replay.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::recording::proto::{Data, Pty, record::Body};
use drawbridge::recording::replay::index::{Cursor, Index};
use drawbridge::recording::{CheckpointPolicy, Recorder, RecordingKey, SessionMeta};

const ROWS: u32 = 40;
const COLS: u32 = 120;
const FRAME_EVERY: Duration = Duration::from_millis(100);

fn main() {
    let minutes: u64 = std::env::var("REPLAY_SEEK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let path = write_recording(dir.path(), Duration::from_secs(minutes * 60));
    let size = std::fs::metadata(&path).expect("stat").len();
    println!(
        "recording: {minutes} min of a {COLS}x{ROWS} screen redrawn every {} ms, {:.1} MiB, written in {:.2} s",
        FRAME_EVERY.as_millis(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );

    let cache = dir.path().join("cache");
    let started = Instant::now();
    let index = Index::load_or_build(&path, Some(&cache)).expect("index");
    println!(
        "index build (once per recording, then cached): {:.2} s, {} keyframes",
        started.elapsed().as_secs_f64(),
        index.keyframes.len()
    );

    let target = Duration::from_secs(minutes * 60 * 5 / 6);
    let target_us = target.as_micros() as u64;
    let mut times = Vec::new();
    let mut painted = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        let index = Index::load_or_build(&path, Some(&cache)).expect("cached index");
        let mut cursor = Cursor::start(&path).expect("open");
        cursor.seek(&path, &index, target_us).expect("seek");
        painted = cursor.terminal.paint();
        times.push(started.elapsed());
        std::hint::black_box(&painted);
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!(
        "seek to minute {} with the cached index, screen rendered ({} bytes): median {:.1} ms, worst {:.1} ms (target < 100 ms) {}",
        target.as_secs() / 60,
        painted.len(),
        ms(median),
        ms(worst),
        if worst < Duration::from_millis(100) {
            "OK"
        } else {
            "MISSED"
        }
    );

    let started = Instant::now();
    let mut emulated = Cursor::start(&path).expect("open");
    emulated.advance_to(target_us).expect("emulate");
    println!(
        "same seek without an index (emulating from the start): {:.0} ms",
        ms(started.elapsed())
    );
    let mut sought = Cursor::start(&path).expect("open");
    sought.seek(&path, &index, target_us).expect("seek");
    assert_eq!(
        emulated.terminal.parser.screen().contents(),
        sought.terminal.parser.screen().contents(),
        "the keyframe seek shows what playing from the start shows"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `top`-like screen: a summary, a reverse-video header and a process table whose
/// numbers change every frame, redrawn from the top-left corner each time.
fn top_frame(n: u64) -> Vec<u8> {
    let mut s = String::with_capacity((ROWS * (COLS + 16)) as usize);
    let (h, m, sec) = (n / 36_000, n / 600 % 60, n / 10 % 60);
    s.push_str("\x1b[H");
    s.push_str(&format!(
        "top - {h:02}:{m:02}:{sec:02} up 3 days,  2 users,  load average: {}.{:02}, 0.87, 0.91\x1b[K\r\n",
        n % 4,
        n % 100
    ));
    s.push_str(&format!(
        "Tasks: {} total,   {} running, 201 sleeping,   0 stopped,   0 zombie\x1b[K\r\n",
        205 + n % 7,
        1 + n % 4
    ));
    s.push_str(&format!(
        "%Cpu(s): \x1b[1m{:>4.1}\x1b[m us,  2.1 sy,  0.0 ni, {:>4.1} id,  0.3 wa\x1b[K\r\n",
        (n % 500) as f64 / 10.0,
        100.0 - (n % 500) as f64 / 10.0
    ));
    s.push_str("MiB Mem :  15904.2 total,   1203.5 free,   8123.4 used,   6577.3 buff/cache\x1b[K\r\n\x1b[K\r\n");
    s.push_str(&format!(
        "\x1b[7m{:<width$}\x1b[m\r\n",
        "    PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND",
        width = COLS as usize
    ));
    for row in 0..(ROWS - 7) as u64 {
        let cpu = (n * 7 + row * 13) % 1000;
        let colour = if cpu > 800 { "\x1b[1;31m" } else { "" };
        let line = format!(
            "{colour}{:>7} {:<9} 20   0 {:>7} {:>6} {:>6} S {:>3}.{} {:>5.1} {:>6}:{:02}.{:02} {}\x1b[m\x1b[K\r\n",
            1000 + row * 37,
            ["root", "postgres", "www-data", "alice"][(row % 4) as usize],
            2_000_000 + row * 4096,
            100_000 + (n + row) % 9000,
            8_000 + row,
            cpu / 10,
            cpu % 10,
            (row as f64) * 0.3,
            (n / 600 + row) % 1000,
            n / 10 % 60,
            n % 100,
            [
                "postgres: checkpointer",
                "nginx: worker process",
                "java -Xmx4g -jar app.jar",
                "sshd: alice@pts/0"
            ][(row % 4) as usize],
        );
        s.push_str(&line);
    }
    s.push_str("\x1b[K");
    s.into_bytes()
}

fn write_recording(dir: &Path, length: Duration) -> std::path::PathBuf {
    let (key, _) = RecordingKey::generate().expect("key");
    let meta = SessionMeta {
        session_id: "top-60m".into(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: None,
        started_at_unix_ms: 1_790_000_000_000,
    };
    // Checkpoints would carry the writer's real clock into a recording whose clock is
    // simulated; replay does not look at them.
    let policy = CheckpointPolicy {
        every_records: u64::MAX,
        interval: Duration::from_secs(24 * 3600),
    };
    let mut rec = Recorder::create(dir, &meta, Arc::new(key), policy).expect("create");
    let start = Instant::now();
    let pty = Pty {
        channel: 0,
        term: "xterm-256color".into(),
        cols: COLS,
        rows: ROWS,
    };
    rec.append(start, Body::Pty(pty)).expect("pty");
    let frames = length.as_millis() as u64 / FRAME_EVERY.as_millis() as u64;
    for n in 0..frames {
        let at = start + FRAME_EVERY * n as u32;
        let data = Data {
            channel: 0,
            data: top_frame(n).into(),
        };
        rec.append(at, Body::Output(data)).expect("output");
    }
    rec.path().to_path_buf()
}
