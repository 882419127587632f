//! Tamper-evident recordings: one append-only file per session, plus the global audit log
//! in the same format.
//!
//! A recording is a magic line followed by length-framed protobuf `Record`s
//! (`proto/recording.proto`), each carrying the SHA-256 chain value of everything before it,
//! with Ed25519-signed checkpoints every N records or T milliseconds, ending with a signed
//! `Seal`. Editing, removing, reordering or truncating anything is detected by
//! [`verify_file`]; a deleted or replaced recording by [`check::verify_all`], against the
//! seal hashes in the audit log. `proto/RECORDING.md` is the normative format specification,
//! precise enough for an independent verifier.
//!
//! Code map:
//! - [`format`]: the byte-level rules (magic, frames, chain, canonical encoding, signature
//!   inputs). No IO.
//! - [`key`]: [`RecordingKey`] (signing) and [`KeyRing`] (trusted public keys, rotation).
//! - [`writer`]: [`Recorder`], the synchronous append-only writer of one file, with
//!   checkpoints.
//! - [`queue`]: [`Writer`], the bounded queue and writer thread in front of a `Recorder`;
//!   [`RecordSink`] is what relays record through.
//! - [`audit`]: [`AuditLog`], the global audit log (segments, events, seal hashes).
//! - [`recovery`]: [`Recorder::seal_interrupted`] and the restart sweep that seals what a
//!   crash left open.
//! - [`reader`]: [`read_file`] for listing, replay and export, and the frame reader shared
//!   with verification.
//! - [`verify`]: [`verify_file`] (and [`verify_bytes`]), which reports every break in one
//!   file.
//! - [`check`]: [`check::verify_all`], the audit log and every recording cross-checked.
//! - [`replay`]: playback of terminal output at recorded speed, with keys, the event
//!   timeline and keyframes for seeking.
//! - [`export`]: asciicast v2 and JSON Lines.
//! - [`fuzz`]: [`fuzz::check_untrusted_bytes`], the entry the fuzz target in `fuzz/` calls.
//!
//! Architecture invariants: the writer never rewrites or seeks (recovery only cuts a torn
//! tail, after checking every whole record); the chain covers every byte of every frame
//! except the seal's, and the seal's bytes are covered by its signature plus the
//! canonical-encoding rule; relays never touch the disk; verification never stops at the
//! first problem.

pub mod audit;
pub mod check;
pub mod export;
pub mod format;
pub mod fuzz;
pub mod key;
pub mod queue;
pub mod reader;
pub mod recovery;
pub mod replay;
pub mod search;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_audit;
#[cfg(test)]
mod tests_tamper;

/// Types generated from `proto/recording.proto` (package `drawbridge.recording.v2`).
#[allow(clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/drawbridge.recording.v2.rs"));
}

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use audit::AuditLog;
pub use key::{KeyRing, RecordingKey, format_public_key, parse_public_key};
pub use queue::{RecordSink, Writer};
pub use reader::{Recording, read_bytes, read_file};
pub use replay::replay;
pub use verify::{Problem, VerifyReport, verify_bytes, verify_file};
pub use writer::{CheckpointPolicy, Recorder, SealSummary};

/// File name extension of recordings: `<session_id>.dbr`.
pub const FILE_EXTENSION: &str = "dbr";

/// What a recording says about its session; written as the `SessionStart` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub session_id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    /// "ssh", "postgres", "http".
    pub protocol: String,
    pub grant_id: Option<i64>,
    pub started_at_unix_ms: i64,
}

impl SessionMeta {
    /// The metadata stored in a `SessionStart` record (its key id aside).
    pub fn from_start(start: &proto::SessionStart) -> SessionMeta {
        SessionMeta {
            session_id: start.session_id.clone(),
            user: start.user.clone(),
            target: start.target.clone(),
            login: start.login.clone(),
            protocol: start.protocol.clone(),
            grant_id: start.grant_id,
            started_at_unix_ms: start.started_at_unix_ms,
        }
    }
}

/// Errors of writing, reading and replaying recordings. Verification does not fail with
/// these: it returns a [`VerifyReport`] listing problems.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a well-formed recording. `record` is the 0-based index where it
    /// breaks, when the break is inside a record.
    #[error(
        "malformed recording {}: {}{what}",
        path.display(),
        record.map(|r| format!("record {r}: ")).unwrap_or_default()
    )]
    Format {
        path: PathBuf,
        record: Option<u64>,
        what: String,
    },
    #[error("recording key: {0}")]
    Key(String),
    /// The session id cannot be used as a file name.
    #[error("session id {0:?} is not usable as a recording file name")]
    InvalidSessionId(String),
    /// An earlier write failed; the file's tail is in an unknown state, so the recorder
    /// refuses to append (fail closed: the caller should end the session).
    #[error("recorder for {0} failed earlier and accepts no more records")]
    Poisoned(PathBuf),
    /// The session's recording was already sealed; nothing more may be appended.
    #[error("the recording is already sealed")]
    Closed,
    #[error("replay speed must be a positive number, got {0}")]
    InvalidSpeed(f64),
    /// Replay was asked to start after the last record.
    #[error(
        "cannot start at {}: the recording ends at {}",
        replay::timeline::clock(*from_us),
        replay::timeline::clock(*end_us)
    )]
    StartPastEnd { from_us: u64, end_us: u64 },
    /// Starts, checkpoints and seals are written by the recorder itself, and data must
    /// come in chunks the frame limit allows.
    #[error("this record body cannot be appended by a caller")]
    ReservedBody,
    /// The writer thread is behind by more than the queue allows (fail closed).
    #[error("recording queue full ({limit} bytes waiting): the disk cannot keep up")]
    Backlog { limit: usize },
    /// The writer thread has stopped: it failed, or the recording was sealed.
    #[error("the recording writer has stopped")]
    WriterGone,
}

/// Wall-clock now in Unix milliseconds.
pub(crate) fn unix_ms_now() -> i64 {
    crate::time::now_ms()
}
