//! The readable timeline: one line per recorded event (session start, pty, exec command,
//! exit status, SFTP operation, SQL statement, HTTP request, port forward, gateway note,
//! seal), stamped with its offset from the session's start:
//!
//! ```text
//! [00:01:23.456] channel 0: sftp close /tmp/x wrote 1258291 bytes (1.2 MiB)
//! ```
//!
//! Terminal bytes are not events, and keystrokes are never shown (they may hold passwords
//! typed at a prompt).

use std::io::Write;
use std::path::Path;

use super::super::RecordingError;
use super::super::proto::record::Body;
use super::stream::RecordStream;

/// `[HH:MM:SS.mmm]` for an offset in microseconds.
pub fn stamp(time_us: u64) -> String {
    format!("[{}]", clock(time_us))
}

/// `HH:MM:SS.mmm` for an offset in microseconds (hours keep counting past 99).
pub fn clock(time_us: u64) -> String {
    let ms = time_us / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The timeline text of a record's `body`, without its stamp; `None` for terminal bytes,
/// keystrokes, resizes and checkpoints.
pub fn event_text(body: &Body) -> Option<String> {
    let text = match body {
        Body::Start(s) => {
            let grant = s
                .grant_id
                .map(|g| format!(", grant {g}"))
                .unwrap_or_default();
            format!(
                "session {} started: {} as {}@{} ({}{grant})",
                s.session_id, s.user, s.login, s.target, s.protocol
            )
        }
        Body::Pty(p) => format!(
            "channel {}: pty {} {}x{}",
            p.channel, p.term, p.cols, p.rows
        ),
        Body::Exec(e) => format!("channel {}: exec {}", e.channel, e.command),
        Body::ExitStatus(e) => format!("channel {}: exit status {}", e.channel, e.status),
        Body::Note(n) => with_sizes(&n.text),
        Body::Seal(s) => format!("sealed: {}", s.end_reason),
        Body::LogStart(l) => format!("audit log segment {} started", l.segment),
        Body::Event(e) => format!("{} {} {} {}", e.kind, e.actor, e.subject, e.details)
            .trim_end()
            .to_string(),
        Body::Sealed(s) => format!("session {} sealed: {}", s.session_id, s.end_reason),
        Body::Output(_) | Body::Input(_) | Body::Resize(_) | Body::Checkpoint(_) => return None,
    };
    Some(text)
}

/// Adds a readable size after every "N bytes" of 1 KiB or more ("wrote 1258291 bytes
/// (1.2 MiB)"), keeping the exact count the gateway recorded.
fn with_sizes(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let unit = words.get(i + 1).copied().unwrap_or_default();
        let punctuation = unit.trim_start_matches("bytes");
        match words[i].parse::<u64>() {
            Ok(n) if n >= 1024 && unit.starts_with("bytes") && punctuation.len() <= 1 => {
                out.push(format!("{n} bytes ({}){punctuation}", human_size(n)));
                i += 2;
            }
            _ => {
                out.push(words[i].to_string());
                i += 1;
            }
        }
    }
    out.join(" ")
}

/// 1.2 MiB, 3.0 KiB, 512 B.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Writes the whole timeline of the recording at `path`, one stamped line per event.
pub fn write_timeline(path: &Path, out: &mut dyn Write) -> Result<(), RecordingError> {
    let mut stream = RecordStream::open(path)?;
    while let Some(located) = stream.next_record()? {
        if let Some(text) = located.record.body.as_ref().and_then(event_text) {
            writeln!(out, "{} {text}", stamp(located.record.time_us))?;
        }
    }
    Ok(())
}
