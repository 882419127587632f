//! [`AuditLog`]: the gateway's global, tamper-evident audit log, in the recording format.
//!
//! The log lives in `<recordings>/audit/` as numbered segments `audit-000001.dbr`,
//! `audit-000002.dbr`, ...: each gateway start opens a new segment whose `LogStart` names the
//! previous segment's sealed final hash, so the segments form one chain and a removed or
//! replaced segment is detected. Long-lived by design, a segment relies on periodic signed
//! checkpoints rather than its seal; it is sealed on clean shutdown, and a segment left open
//! by a crash is sealed as interrupted on the next start (like any session recording).
//!
//! Starting a new segment per run, rather than reopening the last one, keeps the writer
//! append-only (never cut and continue a file that has a seal) and bounds restart work to one
//! segment.
//!
//! Entries: [`AuditLog::event`] (logins, requests, decisions, grants, session starts...) and
//! [`AuditLog::session_sealed`], which copies a session's seal hash so `drawbridge verify`
//! can prove that no recording was deleted or replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::proto::{self, record::Body};
use super::queue::Writer;
use super::{
    CheckpointPolicy, KeyRing, Recorder, RecordingError, RecordingKey, SealSummary, read_file,
    unix_ms_now,
};

/// Sub-folder of the recordings folder holding the audit log.
pub const AUDIT_DIR: &str = "audit";

/// The audit log's folder for a recordings folder.
pub fn audit_dir(recordings_dir: &Path) -> PathBuf {
    recordings_dir.join(AUDIT_DIR)
}

fn segment_name(n: u64) -> String {
    format!("audit-{n:06}.{}", super::FILE_EXTENSION)
}

/// Segment number of an audit-log file name, if it is one.
pub fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".dbr")?
        .parse()
        .ok()
}

/// The audit log's segments, sorted by number. A missing folder is an empty log.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RecordingError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(segment_number);
        if let Some(n) = number {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The writer of the current segment. Clones share one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    writer: Writer,
    segment: u64,
}

impl AuditLog {
    /// Seals the previous segment if a crash left it open, then starts the next one.
    /// Refuses to start when the previous segment cannot be sealed (it was tampered with):
    /// the chain of segments would otherwise be broken silently.
    pub fn open(
        dir: &Path,
        key: Arc<RecordingKey>,
        trusted: &KeyRing,
        policy: CheckpointPolicy,
        queue_bytes: usize,
    ) -> Result<AuditLog, RecordingError> {
        let mut recovered = None;
        let (segment, previous_final_hash) = match segments(dir)?.pop() {
            None => (1, Vec::new()),
            Some((n, path)) => {
                let last = read_file(&path)?;
                let hash = match last.seal() {
                    Some(seal) => seal.final_hash.clone(),
                    None => {
                        let reason = "interrupted: the gateway stopped without sealing";
                        let summary =
                            Recorder::seal_interrupted(&path, key.clone(), trusted, reason)?;
                        recovered = Some(summary.records);
                        summary.final_hash.to_vec()
                    }
                };
                (n + 1, hash)
            }
        };
        let start = proto::LogStart {
            segment,
            previous_final_hash,
            started_at_unix_ms: unix_ms_now(),
            key_id: key.key_id().to_string(),
        };
        let name = segment_name(segment);
        let recorder = Recorder::create_log(dir, &name, start, key, policy)?;
        let on_failure = Box::new(|why: &str| {
            tracing::error!(why, "the audit log failed; new sessions are refused");
        });
        let log = AuditLog {
            writer: Writer::spawn(recorder, queue_bytes, on_failure)?,
            segment,
        };
        if let Some(records) = recovered {
            let previous = segment_name(segment - 1);
            let details = format!("{records} records; sealed as interrupted on restart");
            log.event("audit.recovered", "gateway", &previous, &details)?;
        }
        Ok(log)
    }

    /// The current segment's number.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Queues one event: `kind` is a dotted name ("login.failed", "request.approved",
    /// "session.start"), `actor` who did it, `subject` what to. Fails once the log failed;
    /// callers that act on behalf of someone should then refuse (fail closed).
    pub fn event(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        details: &str,
    ) -> Result<(), RecordingError> {
        let event = proto::AuditEvent {
            at_unix_ms: unix_ms_now(),
            kind: kind.to_string(),
            actor: actor.to_string(),
            subject: subject.to_string(),
            details: details.to_string(),
        };
        let len = kind.len() + actor.len() + subject.len() + details.len();
        self.writer.sink().body(Body::Event(event), len)
    }

    /// Records a session recording's seal, so verification can find the file and compare
    /// its final hash.
    pub fn session_sealed(
        &self,
        session_id: &str,
        seal: &SealSummary,
        end_reason: &str,
        interrupted: bool,
    ) -> Result<(), RecordingError> {
        let file = seal
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sealed = proto::SessionSealed {
            at_unix_ms: unix_ms_now(),
            session_id: session_id.to_string(),
            file,
            records: seal.records,
            final_hash: seal.final_hash.to_vec(),
            end_reason: end_reason.to_string(),
            interrupted,
        };
        let len = session_id.len() + end_reason.len() + 64;
        self.writer.sink().body(Body::Sealed(sealed), len)
    }

    /// Resolves once every entry queued so far is on disk under a signed checkpoint.
    pub async fn sync(&self) -> Result<(), RecordingError> {
        self.writer.sync().await
    }

    /// Seals the current segment (clean shutdown).
    pub async fn close(self, reason: &str) -> Result<SealSummary, RecordingError> {
        self.writer.seal(reason).await
    }
}

/// What the audit log says about sessions, for verification and restart recovery.
#[derive(Debug, Default)]
pub struct AuditIndex {
    /// Session ids with a `session.start` event.
    pub started: BTreeMap<String, u64>,
    /// Seal entries by recording file name (the last one wins if a file appears twice).
    pub sealed: BTreeMap<String, proto::SessionSealed>,
}

impl AuditIndex {
    /// Reads every segment (whole records only; integrity is [`super::check`]'s job).
    pub fn load(dir: &Path) -> Result<AuditIndex, RecordingError> {
        let mut index = AuditIndex::default();
        for (n, path) in segments(dir)? {
            for record in read_file(&path)?.records {
                match record.body {
                    Some(Body::Event(e)) if e.kind == "session.start" => {
                        index.started.insert(e.subject, n);
                    }
                    Some(Body::Sealed(s)) => {
                        index.sealed.insert(s.file.clone(), s);
                    }
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// Session ids that started and whose recording was never sealed.
    pub fn open_sessions(&self) -> impl Iterator<Item = &str> {
        self.started
            .keys()
            .filter(|id| {
                !self
                    .sealed
                    .contains_key(&format!("{id}.{}", super::FILE_EXTENSION))
            })
            .map(String::as_str)
    }
}

/// One audit-log entry, flattened for listing and JSON (`drawbridge audit`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub segment: u64,
    /// Position in its segment.
    pub seq: u64,
    pub at_unix_ms: i64,
    /// The event's kind; `session.sealed` for seal entries.
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub details: String,
}

/// Every event and seal entry of segments from number `from` on, in order (whole records
/// only: run `drawbridge verify` for integrity).
pub fn entries(dir: &Path, from: u64) -> Result<Vec<Entry>, RecordingError> {
    let mut out = Vec::new();
    for (segment, path) in segments(dir)?.into_iter().filter(|(n, _)| *n >= from) {
        for record in read_file(&path)?.records {
            let (at_unix_ms, kind, actor, subject, details) = match record.body {
                Some(Body::Event(e)) => (e.at_unix_ms, e.kind, e.actor, e.subject, e.details),
                Some(Body::Sealed(s)) => {
                    let details = format!(
                        "{}; {} records; final hash {}{}",
                        s.end_reason,
                        s.records,
                        super::format::hex(&s.final_hash),
                        if s.interrupted { "; interrupted" } else { "" }
                    );
                    let kind = "session.sealed".to_string();
                    (s.at_unix_ms, kind, "gateway".into(), s.session_id, details)
                }
                _ => continue,
            };
            out.push(Entry {
                segment,
                seq: record.seq,
                at_unix_ms,
                kind,
                actor,
                subject,
                details,
            });
        }
    }
    Ok(out)
}
