//! Crash recovery: [`Recorder::seal_interrupted`] seals one recording (or audit-log segment)
//! whose writer stopped without sealing, and [`recover_sessions`] is the sweep the gateway
//! runs on start over every recording a crash left open.
//!
//! Recovery must never sign over tampering: every whole record is checked first, exactly as
//! the verifier would (decoding, canonical form, seq, chain, time, checkpoint signatures),
//! and recovery is refused when any check fails or the file is already sealed. Only then is a
//! torn tail (a frame the crash cut in half) removed and the seal appended.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use super::audit::AuditIndex;
use super::format::{self, MAGIC};
use super::key::KeyRing;
use super::proto::record::Body;
use super::reader::{FrameReader, Header, NextFrame};
use super::writer::{CheckpointPolicy, Position};
use super::{
    AuditLog, FILE_EXTENSION, Recorder, RecordingError, RecordingKey, SealSummary, read_file,
    verify_file,
};

/// Where an unsealed file stands after its last whole record.
struct Unsealed {
    /// Byte length of the magic line and all whole frames.
    end: u64,
    pos: Position,
    torn: bool,
}

impl Recorder {
    /// Seals the unsealed file at `path` with `key`, at its last record's time. A torn tail
    /// is cut off first. `trusted` is the key ring checkpoint signatures are checked against
    /// (it must hold every key that ever signed this file).
    pub fn seal_interrupted(
        path: &Path,
        key: Arc<RecordingKey>,
        trusted: &KeyRing,
        end_reason: &str,
    ) -> Result<SealSummary, RecordingError> {
        let state = scan_unsealed(path, trusted)?;
        let file = OpenOptions::new().append(true).open(path)?;
        if state.torn {
            tracing::warn!(path = %path.display(), records = state.pos.seq, "cutting off a torn tail");
            file.set_len(state.end)?;
        }
        // The policy is irrelevant: only the seal is written.
        let rec = Recorder::resume(
            file,
            path.to_path_buf(),
            key,
            CheckpointPolicy::default(),
            state.pos,
        );
        rec.seal_at_last_record(end_reason)
    }
}

/// Walks an unsealed file, checking each whole record as the verifier would.
fn scan_unsealed(path: &Path, trusted: &KeyRing) -> Result<Unsealed, RecordingError> {
    let refuse = |record: Option<u64>, what: String| RecordingError::Format {
        path: path.to_path_buf(),
        record,
        what: format!("cannot seal: {what}"),
    };
    let mut frames = FrameReader::new(BufReader::new(File::open(path)?));
    if frames.header()? != Header::Current {
        return Err(refuse(None, "not a v2 recording".into()));
    }
    let mut st = Unsealed {
        end: MAGIC.len() as u64,
        pos: Position {
            chain: format::genesis_hash(),
            seq: 0,
            output_bytes: 0,
            input_bytes: 0,
            last_time_us: 0,
        },
        torn: false,
    };
    loop {
        let frame = match frames.next_frame()? {
            NextFrame::Frame(frame) => frame,
            NextFrame::End => break,
            NextFrame::Torn { .. } => {
                st.torn = true;
                break;
            }
            NextFrame::TooLong(len) => {
                return Err(refuse(Some(st.pos.seq), format!("frame length {len}")));
            }
        };
        let at = Some(st.pos.seq);
        let record = format::decode_record(frame).map_err(|w| refuse(at, w))?;
        let pos = &mut st.pos;
        if record.seq != pos.seq
            || record.prev_hash != pos.chain
            || record.time_us < pos.last_time_us
        {
            return Err(refuse(at, "chain, seq or time broken".into()));
        }
        let first = matches!(record.body, Some(Body::Start(_) | Body::LogStart(_)));
        if first != (pos.seq == 0) || record.body.is_none() {
            return Err(refuse(at, "unexpected record type".into()));
        }
        match &record.body {
            Some(Body::Seal(_)) => return Err(refuse(at, "already sealed".into())),
            Some(Body::Output(d)) => pos.output_bytes += d.data.len() as u64,
            Some(Body::Input(d)) => pos.input_bytes += d.data.len() as u64,
            Some(Body::Checkpoint(c)) => {
                let message = format::checkpoint_message(record.seq, record.time_us, c);
                if c.chain_hash != pos.chain || c.records != pos.seq {
                    return Err(refuse(at, "checkpoint does not match the chain".into()));
                }
                trusted
                    .verify(&c.key_id, &message, &c.signature)
                    .map_err(|w| refuse(at, format!("checkpoint: {w}")))?;
            }
            _ => {}
        }
        pos.chain = format::chain_next(&pos.chain, frame);
        pos.seq += 1;
        pos.last_time_us = record.time_us;
        st.end += frame.len() as u64;
    }
    if st.pos.seq == 0 {
        return Err(refuse(None, "no records".into()));
    }
    Ok(st)
}

/// A session recording the restart sweep closed.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub session_id: String,
    pub end_reason: String,
}

/// The end reason written into recordings sealed on restart.
pub const INTERRUPTED: &str = "interrupted: the gateway stopped during the session";

/// Closes every session recording a crash left open, and writes each seal hash into the
/// audit log. Candidates are the sessions the audit log saw start but never saw sealed, and
/// recording files it does not name at all (a crash between creating the file and the
/// start event reaching the disk). A recording that is already sealed (the crash came after
/// its seal but before the audit entry was durable) only gets its audit entry, once it
/// verifies. A recording that cannot be sealed is reported in the audit log and left as is.
pub fn recover_sessions(
    recordings_dir: &Path,
    audit: &AuditLog,
    index: &AuditIndex,
    key: &Arc<RecordingKey>,
    trusted: &KeyRing,
) -> Result<Vec<Recovered>, RecordingError> {
    let mut candidates: Vec<String> = index.open_sessions().map(str::to_string).collect();
    for entry in std::fs::read_dir(recordings_dir)? {
        let path = entry?.path();
        let (Some(stem), Some(name)) = (path.file_stem(), path.file_name()) else {
            continue;
        };
        let (stem, name) = (stem.to_string_lossy(), name.to_string_lossy());
        let is_recording = path.extension().is_some_and(|x| x == FILE_EXTENSION);
        if is_recording && !index.started.contains_key(&*stem) && !index.sealed.contains_key(&*name)
        {
            candidates.push(stem.into_owned());
        }
    }
    let mut recovered = Vec::new();
    for id in candidates {
        let path = recordings_dir.join(format!("{id}.{FILE_EXTENSION}"));
        if !path.exists() {
            audit.event(
                "recording.missing",
                "gateway",
                &id,
                "the session started but its recording is gone",
            )?;
            continue;
        }
        match recover_one(&path, key, trusted) {
            Ok((seal, reason, interrupted)) => {
                audit.session_sealed(&id, &seal, &reason, interrupted)?;
                recovered.push(Recovered {
                    session_id: id,
                    end_reason: reason,
                });
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "cannot recover a recording");
                audit.event("recording.recovery_failed", "gateway", &id, &e.to_string())?;
            }
        }
    }
    Ok(recovered)
}

/// Seals one recording, or reads the seal it already has; returns the seal, its end reason
/// and whether it was sealed now.
fn recover_one(
    path: &Path,
    key: &Arc<RecordingKey>,
    trusted: &KeyRing,
) -> Result<(SealSummary, String, bool), RecordingError> {
    let recording = read_file(path)?;
    let Some(seal) = recording.seal() else {
        let summary = Recorder::seal_interrupted(path, key.clone(), trusted, INTERRUPTED)?;
        return Ok((summary, INTERRUPTED.to_string(), true));
    };
    let report = verify_file(path, trusted);
    let final_hash =
        report
            .final_hash
            .filter(|_| report.ok())
            .ok_or_else(|| RecordingError::Format {
                path: path.to_path_buf(),
                record: None,
                what: format!("sealed but does not verify: {report}"),
            })?;
    let summary = SealSummary {
        records: report.records,
        final_hash,
        path: path.to_path_buf(),
    };
    Ok((summary, seal.end_reason.clone(), false))
}
