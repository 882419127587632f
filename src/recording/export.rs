//! Exports of a loaded [`Recording`]: asciicast v2 (plays in `asciinema play`) and JSON Lines
//! (one object per record, for SIEM ingestion).
//!
//! asciicast v2 is written by hand: a JSON header line, then one `[time, code, data]` array
//! per event, `"o"` for terminal output and `"r"` (`"COLSxROWS"`) for resizes. asciicast
//! data are strings, so output is decoded as UTF-8 across record boundaries (a character
//! split between two records is joined, never mangled); bytes that are not UTF-8 at all
//! become U+FFFD. JSON Lines keeps every byte: `hex` holds the exact data.

use std::io::Write;

use serde_json::{Value, json};

use super::format::hex;
use super::proto::record::Body;
use super::{Recording, RecordingError};

/// Writes `recording` as asciicast v2: every channel's output in file order, as one stream.
pub fn asciicast(recording: &Recording, out: &mut dyn Write) -> Result<(), RecordingError> {
    let pty = recording.records.iter().find_map(|r| match &r.body {
        Some(Body::Pty(p)) => Some(p),
        _ => None,
    });
    // A client without a real terminal (`ssh -tt` from a script) reports 0x0; players need
    // a size, so the classic 80x24 stands in.
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    let (width, height) = pty.map_or((80, 24), |p| (or(p.cols, 80), or(p.rows, 24)));
    let mut header = json!({ "version": 2, "width": width, "height": height });
    if let Some(start) = recording.start() {
        header["timestamp"] = json!(start.started_at_unix_ms / 1000);
        let title = format!(
            "{} {}@{} ({})",
            start.user, start.login, start.target, start.session_id
        );
        header["title"] = json!(title);
    }
    if let Some(p) = pty {
        header["env"] = json!({ "TERM": p.term });
    }
    writeln!(out, "{header}")?;
    let mut pending: Vec<u8> = Vec::new();
    for record in &recording.records {
        let t = record.time_us as f64 / 1e6;
        match &record.body {
            Some(Body::Output(d)) => {
                pending.extend_from_slice(&d.data);
                let text = take_utf8(&mut pending);
                if !text.is_empty() {
                    writeln!(out, "{}", json!([t, "o", text]))?;
                }
            }
            Some(Body::Resize(r)) => {
                writeln!(out, "{}", json!([t, "r", format!("{}x{}", r.cols, r.rows)]))?;
            }
            _ => {}
        }
    }
    if !pending.is_empty() {
        let t = recording
            .records
            .last()
            .map_or(0.0, |r| r.time_us as f64 / 1e6);
        let rest = String::from_utf8_lossy(&pending);
        writeln!(out, "{}", json!([t, "o", rest]))?;
    }
    Ok(())
}

/// Decodes the longest UTF-8 prefix of `buf` and removes it, keeping an incomplete
/// character at the end for the next chunk; invalid bytes become U+FFFD.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut at = 0;
    loop {
        match std::str::from_utf8(&buf[at..]) {
            Ok(s) => {
                text.push_str(s);
                at = buf.len();
                break;
            }
            Err(e) => {
                let valid = at + e.valid_up_to();
                text.push_str(&String::from_utf8_lossy(&buf[at..valid]));
                match e.error_len() {
                    // Invalid bytes: replace them and go on.
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        at = valid + n;
                    }
                    // A character cut at the end: wait for the rest.
                    None => {
                        at = valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..at);
    text
}

/// Writes every record as one JSON object per line: `seq`, `time_us`, `type` and the
/// body's fields (data as `hex`, plus `text` decoded lossily for search).
pub fn jsonl(recording: &Recording, out: &mut dyn Write) -> Result<(), RecordingError> {
    for record in &recording.records {
        let mut line = json!({ "seq": record.seq, "time_us": record.time_us });
        let (kind, fields) = body_json(record.body.as_ref());
        line["type"] = json!(kind);
        if let (Value::Object(line), Value::Object(fields)) = (&mut line, fields) {
            line.extend(fields);
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn data_json(channel: u32, data: &[u8]) -> Value {
    json!({
        "channel": channel,
        "bytes": data.len(),
        "hex": hex(data),
        "text": String::from_utf8_lossy(data),
    })
}

fn body_json(body: Option<&Body>) -> (&'static str, Value) {
    match body {
        None => ("unknown", json!({})),
        Some(Body::Start(s)) => (
            "start",
            json!({ "session_id": s.session_id, "user": s.user, "target": s.target,
                    "login": s.login, "protocol": s.protocol, "grant_id": s.grant_id,
                    "started_at_unix_ms": s.started_at_unix_ms, "key_id": s.key_id }),
        ),
        Some(Body::Output(d)) => ("output", data_json(d.channel, &d.data)),
        Some(Body::Input(d)) => ("input", data_json(d.channel, &d.data)),
        Some(Body::Resize(r)) => (
            "resize",
            json!({ "channel": r.channel, "cols": r.cols, "rows": r.rows }),
        ),
        Some(Body::Exec(e)) => (
            "exec",
            json!({ "channel": e.channel, "command": e.command }),
        ),
        Some(Body::Pty(p)) => (
            "pty",
            json!({ "channel": p.channel, "term": p.term, "cols": p.cols, "rows": p.rows }),
        ),
        Some(Body::ExitStatus(e)) => (
            "exit_status",
            json!({ "channel": e.channel, "status": e.status }),
        ),
        Some(Body::Note(n)) => ("note", json!({ "text": n.text })),
        Some(Body::Checkpoint(c)) => (
            "checkpoint",
            json!({ "records": c.records, "key_id": c.key_id, "chain_hash": hex(&c.chain_hash) }),
        ),
        Some(Body::Seal(s)) => (
            "seal",
            json!({ "records": s.records, "output_bytes": s.output_bytes,
                    "input_bytes": s.input_bytes, "ended_at_unix_ms": s.ended_at_unix_ms,
                    "end_reason": s.end_reason, "key_id": s.key_id,
                    "final_hash": hex(&s.final_hash) }),
        ),
        Some(Body::LogStart(l)) => (
            "log_start",
            json!({ "segment": l.segment, "previous_final_hash": hex(&l.previous_final_hash),
                    "started_at_unix_ms": l.started_at_unix_ms, "key_id": l.key_id }),
        ),
        Some(Body::Event(e)) => (
            "event",
            json!({ "at_unix_ms": e.at_unix_ms, "kind": e.kind, "actor": e.actor,
                    "subject": e.subject, "details": e.details }),
        ),
        Some(Body::Sealed(s)) => (
            "sealed",
            json!({ "session_id": s.session_id, "file": s.file, "records": s.records,
                    "final_hash": hex(&s.final_hash), "end_reason": s.end_reason,
                    "interrupted": s.interrupted }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_joined() {
        let snowman = "☃".as_bytes();
        let mut buf = b"a".to_vec();
        buf.extend_from_slice(&snowman[..2]);
        assert_eq!(take_utf8(&mut buf), "a");
        assert_eq!(buf, &snowman[..2]);
        buf.extend_from_slice(&snowman[2..]);
        buf.extend_from_slice(b"\xffb");
        assert_eq!(take_utf8(&mut buf), "☃\u{fffd}b");
        assert!(buf.is_empty());
    }
}
