//! Searching recordings for what people saw and did: terminal screen text (the
//! output run through a terminal emulator, so escape sequences and redraws do
//! not hide or fake matches), commands, and recorded events (SQL statements,
//! HTTP requests, SFTP operations). Keystrokes are not searched: they may hold
//! passwords typed at a prompt.

use super::Recording;
use super::proto::record::Body;

/// One place a recording contains the text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    /// Microseconds from the session's start.
    pub offset_us: u64,
    /// "screen", "command" or "event".
    pub kind: &'static str,
    /// The matching screen line, command or event.
    pub line: String,
}

/// Every place `text` appears (case-insensitive). A screen line is reported
/// when it first shows the text, not again while it stays on screen.
pub fn search(recording: &Recording, text: &str) -> Vec<Hit> {
    let needle = text.to_lowercase();
    let found = |s: &str| s.to_lowercase().contains(&needle);
    let mut hits = Vec::new();
    let mut terminal = vt100::Parser::new(24, 80, 0);
    let mut on_screen: Vec<String> = Vec::new();
    for record in &recording.records {
        let at = record.time_us;
        match &record.body {
            Some(Body::Pty(p)) => terminal.set_size(clamp(p.rows, 24), clamp(p.cols, 80)),
            Some(Body::Resize(r)) => terminal.set_size(clamp(r.rows, 24), clamp(r.cols, 80)),
            Some(Body::Output(data)) => {
                terminal.process(&data.data);
                let lines: Vec<String> = terminal
                    .screen()
                    .contents()
                    .lines()
                    .map(|l| l.trim_end().to_string())
                    .collect();
                for line in lines.iter().filter(|l| found(l) && !on_screen.contains(l)) {
                    hits.push(Hit {
                        offset_us: at,
                        kind: "screen",
                        line: line.clone(),
                    });
                }
                on_screen = lines;
            }
            Some(Body::Exec(e)) if found(&e.command) => hits.push(Hit {
                offset_us: at,
                kind: "command",
                line: e.command.clone(),
            }),
            Some(Body::Note(n)) if found(&n.text) => hits.push(Hit {
                offset_us: at,
                kind: "event",
                line: n.text.clone(),
            }),
            _ => {}
        }
    }
    hits
}

/// Terminal sizes from the client; 0 (no size given) falls back to a default.
fn clamp(value: u32, default: u16) -> u16 {
    match value {
        0 => default,
        v => v.min(1000) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::proto::{Data, Exec, Note, Record};

    fn record(time_us: u64, body: Body) -> Record {
        Record {
            seq: 0,
            time_us,
            prev_hash: vec![],
            body: Some(body),
        }
    }

    fn output(time_us: u64, bytes: &[u8]) -> Record {
        record(
            time_us,
            Body::Output(Data {
                channel: 0,
                data: bytes::Bytes::copy_from_slice(bytes),
            }),
        )
    }

    #[test]
    fn screen_text_is_found_through_escape_sequences_once_per_appearance() {
        let rec = Recording {
            records: vec![
                // "secret" split by a colour change: raw bytes do not contain it.
                output(10, b"cat /etc/\x1b[31msec\x1b[0mret.conf\r\n"),
                output(20, b"more output\r\n"),
                record(
                    30,
                    Body::Exec(Exec {
                        channel: 1,
                        command: "grep SECRET app.log".into(),
                    }),
                ),
                record(
                    40,
                    Body::Note(Note {
                        text: "sql Query: SELECT secret FROM vault".into(),
                    }),
                ),
                record(
                    50,
                    Body::Input(Data {
                        channel: 0,
                        data: b"my secret password".to_vec().into(),
                    }),
                ),
            ],
            path: std::path::PathBuf::new(),
            torn_tail: false,
        };
        let hits = search(&rec, "secret");
        let kinds: Vec<_> = hits.iter().map(|h| (h.offset_us, h.kind)).collect();
        assert_eq!(
            kinds,
            [(10, "screen"), (30, "command"), (40, "event")],
            "{hits:?}"
        );
        assert_eq!(hits[0].line, "cat /etc/secret.conf");
    }
}
