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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::proto;

    #[test]
    fn stamps_count_hours_past_a_day() {
        assert_eq!(stamp(0), "[00:00:00.000]");
        assert_eq!(stamp(83_456_789), "[00:01:23.456]");
        assert_eq!(stamp(100 * 3_600_000_000 + 1000), "[100:00:00.001]");
    }

    #[test]
    fn each_event_kind_reads_as_a_line() {
        let cases = [
            (
                Body::Exec(proto::Exec {
                    channel: 2,
                    command: "rsync --server .".into(),
                }),
                "channel 2: exec rsync --server .",
            ),
            (
                Body::ExitStatus(proto::ExitStatus {
                    channel: 2,
                    status: 0,
                }),
                "channel 2: exit status 0",
            ),
            (
                Body::Pty(proto::Pty {
                    channel: 0,
                    term: "xterm".into(),
                    cols: 120,
                    rows: 40,
                }),
                "channel 0: pty xterm 120x40",
            ),
            (
                Body::Note(proto::Note {
                    text: "query: SELECT 1".into(),
                }),
                "query: SELECT 1",
            ),
            (
                Body::Seal(proto::Seal {
                    end_reason: "client closed".into(),
                    ..Default::default()
                }),
                "sealed: client closed",
            ),
        ];
        for (body, line) in cases {
            assert_eq!(event_text(&body).as_deref(), Some(line));
        }
        let quiet = [
            Body::Output(proto::Data::default()),
            Body::Input(proto::Data::default()),
            Body::Resize(proto::Resize::default()),
            Body::Checkpoint(proto::Checkpoint::default()),
        ];
        for body in quiet {
            assert_eq!(event_text(&body), None, "{body:?}");
        }
    }

    #[test]
    fn byte_counts_get_a_readable_size() {
        let note =
            |text: &str| event_text(&Body::Note(proto::Note { text: text.into() })).expect("note");
        assert_eq!(
            note("channel 0: sftp close /tmp/x wrote 1258291 bytes"),
            "channel 0: sftp close /tmp/x wrote 1258291 bytes (1.2 MiB)"
        );
        assert_eq!(
            note("forward to db:5432 closed: 2048 bytes sent, 100 bytes received, 1.0s"),
            "forward to db:5432 closed: 2048 bytes (2.0 KiB) sent, 100 bytes received, 1.0s"
        );
        assert_eq!(
            note("http GET / -> 200 (in 5 B, out 7 B, 3 ms)"),
            "http GET / -> 200 (in 5 B, out 7 B, 3 ms)"
        );
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_size(1023), "1023 B");
    }
}
