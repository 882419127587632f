//! [`Recorder`]: the append-only writer of one session's recording.
//!
//! Synchronous on purpose: each call encodes one record and hands it to a `BufWriter`, so it
//! is cheap enough to call from a relay loop under a `Mutex`. Durability points are explicit:
//! [`Recorder::flush`] (flush + fdatasync) and [`Recorder::seal`] (flush + fsync). A crash
//! loses at most what was written since the last flush; whatever reached the disk still
//! verifies, as an unsealed recording.
//!
//! Fail closed: after any write error the recorder is poisoned and refuses further records,
//! because the file's tail is then unknown and later records would not chain.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::format::{self, Hash, MAGIC, MAX_DATA_CHUNK};
use super::proto::{self, record::Body};
use super::reader::{FrameReader, Header, NextFrame};
use super::{FILE_EXTENSION, RecordingError, RecordingKey, SessionMeta};

/// What [`Recorder::seal`] wrote; the gateway copies `final_hash` into the audit log so a
/// deleted or replaced recording is detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealSummary {
    /// Records in the file, the seal included.
    pub records: u64,
    /// Chain value of everything before the seal (the seal's `final_hash`).
    pub final_hash: [u8; 32],
    pub path: PathBuf,
}

/// Writer of one recording file. Not `Sync`; wrap it in a `Mutex` to share it.
pub struct Recorder {
    out: BufWriter<File>,
    path: PathBuf,
    key: Arc<RecordingKey>,
    started: Instant,
    /// Chain value before the next record.
    chain: Hash,
    /// Seq of the next record.
    seq: u64,
    output_bytes: u64,
    input_bytes: u64,
    poisoned: bool,
    sealed: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("seq", &self.seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// True when `id` is a plain file name: no separators, not `.`/`..`, no NUL, not empty.
fn usable_session_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 200
        && !id.contains(['/', '\\', '\0'])
        && !id.starts_with('.')
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Recorder {
    /// Creates `dir/<session_id>.dbr` (mode 0600; `dir` is created with mode 0700 if
    /// missing), writes the magic line and the `SessionStart` record, and flushes them to
    /// disk. Refuses to overwrite an existing file.
    pub fn create(
        dir: &Path,
        meta: &SessionMeta,
        key: Arc<RecordingKey>,
    ) -> Result<Recorder, RecordingError> {
        if !usable_session_id(&meta.session_id) {
            return Err(RecordingError::InvalidSessionId(meta.session_id.clone()));
        }
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let path = dir.join(format!("{}.{FILE_EXTENSION}", meta.session_id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut rec = Recorder {
            out: BufWriter::with_capacity(64 * 1024, file),
            path,
            started: Instant::now(),
            chain: format::genesis_hash(),
            seq: 0,
            output_bytes: 0,
            input_bytes: 0,
            poisoned: false,
            sealed: false,
            key,
        };
        let start = proto::SessionStart {
            session_id: meta.session_id.clone(),
            user: meta.user.clone(),
            target: meta.target.clone(),
            login: meta.login.clone(),
            protocol: meta.protocol.clone(),
            grant_id: meta.grant_id,
            started_at_unix_ms: meta.started_at_unix_ms,
            key_id: rec.key.key_id().to_string(),
        };
        rec.write_or_poison(MAGIC)?;
        rec.append(Body::Start(start))?;
        rec.flush()?;
        // Make the new directory entry durable too, so a crash cannot lose the whole file.
        File::open(dir)?.sync_all()?;
        Ok(rec)
    }

    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes from the upstream towards the engineer.
    pub fn output(&mut self, channel: u32, data: &[u8]) -> Result<(), RecordingError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            let data = chunk.to_vec();
            self.append(Body::Output(proto::Data { channel, data }))?;
            self.output_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    /// Bytes from the engineer towards the upstream.
    pub fn input(&mut self, channel: u32, data: &[u8]) -> Result<(), RecordingError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            let data = chunk.to_vec();
            self.append(Body::Input(proto::Data { channel, data }))?;
            self.input_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn pty(
        &mut self,
        channel: u32,
        term: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), RecordingError> {
        let term = term.to_string();
        self.append(Body::Pty(proto::Pty {
            channel,
            term,
            cols,
            rows,
        }))
    }

    pub fn resize(&mut self, channel: u32, cols: u32, rows: u32) -> Result<(), RecordingError> {
        self.append(Body::Resize(proto::Resize {
            channel,
            cols,
            rows,
        }))
    }

    pub fn exec(&mut self, channel: u32, command: &str) -> Result<(), RecordingError> {
        let command = command.to_string();
        self.append(Body::Exec(proto::Exec { channel, command }))
    }

    pub fn exit_status(&mut self, channel: u32, status: u32) -> Result<(), RecordingError> {
        self.append(Body::ExitStatus(proto::ExitStatus { channel, status }))
    }

    pub fn note(&mut self, text: &str) -> Result<(), RecordingError> {
        let text = text.to_string();
        self.append(Body::Note(proto::Note { text }))
    }

    /// Pushes buffered records to the file and `fdatasync`s it.
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.check_usable()?;
        let res = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        self.poison_on_err(res)
    }

    /// Writes the signed seal, flushes and `fsync`s. The recording is complete afterwards.
    pub fn seal(mut self, end_reason: &str) -> Result<SealSummary, RecordingError> {
        let time_us = self.now_us();
        self.write_seal(time_us, end_reason)
    }

    /// Seals a recording whose writer stopped without sealing (gateway crash), as done on
    /// restart. The whole records are checked first (chain, seq, start) and the recovery is
    /// refused if any is broken or the file is already sealed: recovery must never sign over
    /// tampering. A torn tail is cut off; the seal gets the last record's time.
    pub fn seal_interrupted(
        path: &Path,
        key: Arc<RecordingKey>,
        end_reason: &str,
    ) -> Result<SealSummary, RecordingError> {
        let state = scan_unsealed(path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        file.set_len(state.end)?;
        let mut rec = Recorder {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            key,
            started: Instant::now(),
            chain: state.chain,
            seq: state.seq,
            output_bytes: state.output_bytes,
            input_bytes: state.input_bytes,
            poisoned: false,
            sealed: false,
        };
        rec.write_seal(state.last_time_us, end_reason)
    }

    fn write_seal(
        &mut self,
        time_us: u64,
        end_reason: &str,
    ) -> Result<SealSummary, RecordingError> {
        let final_hash = self.chain;
        let seq = self.seq;
        let mut seal = proto::Seal {
            records: seq,
            output_bytes: self.output_bytes,
            input_bytes: self.input_bytes,
            ended_at_unix_ms: unix_ms_now(),
            end_reason: end_reason.to_string(),
            key_id: self.key.key_id().to_string(),
            final_hash: final_hash.to_vec(),
            signature: Vec::new(),
        };
        seal.signature = self.key.sign(&format::seal_message(seq, time_us, &seal));
        self.append_at(time_us, Body::Seal(seal))?;
        let res = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all());
        self.poison_on_err(res)?;
        self.sealed = true;
        Ok(SealSummary {
            records: self.seq,
            final_hash,
            path: self.path.clone(),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn append(&mut self, body: Body) -> Result<(), RecordingError> {
        let time_us = self.now_us();
        self.append_at(time_us, body)
    }

    /// Encodes one record chained to the previous one and buffers it.
    fn append_at(&mut self, time_us: u64, body: Body) -> Result<(), RecordingError> {
        self.check_usable()?;
        let record = proto::Record {
            seq: self.seq,
            time_us,
            prev_hash: self.chain.to_vec(),
            body: Some(body),
        };
        let frame = format::encode_frame(&record).map_err(|too_long| RecordingError::Format {
            path: self.path.clone(),
            record: Some(self.seq),
            what: format!("record of {} bytes exceeds the frame limit", too_long.0),
        })?;
        self.write_or_poison(&frame)?;
        self.chain = format::chain_next(&self.chain, &frame);
        self.seq += 1;
        Ok(())
    }

    fn write_or_poison(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        let res = self.out.write_all(bytes);
        self.poison_on_err(res)
    }

    fn poison_on_err(&mut self, res: std::io::Result<()>) -> Result<(), RecordingError> {
        res.map_err(|e| {
            self.poisoned = true;
            tracing::error!(path = %self.path.display(), error = %e, "recording write failed");
            RecordingError::Io(e)
        })
    }

    fn check_usable(&self) -> Result<(), RecordingError> {
        if self.poisoned || self.sealed {
            return Err(RecordingError::Poisoned(self.path.clone()));
        }
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // BufWriter flushes itself on drop (best effort); the file stays unsealed and
        // verifies as such until recovery seals it.
        if !self.sealed {
            tracing::warn!(
                path = %self.path.display(),
                records = self.seq,
                "recording closed without a seal"
            );
        }
    }
}

/// Where an unsealed recording stands after its last whole record.
struct Unsealed {
    /// Byte length of the magic line and all whole frames.
    end: u64,
    chain: Hash,
    seq: u64,
    output_bytes: u64,
    input_bytes: u64,
    last_time_us: u64,
}

/// Walks an unsealed recording, checking each whole record as the verifier would.
fn scan_unsealed(path: &Path) -> Result<Unsealed, RecordingError> {
    let refuse = |record: Option<u64>, what: String| RecordingError::Format {
        path: path.to_path_buf(),
        record,
        what: format!("cannot seal: {what}"),
    };
    let mut frames = FrameReader::new(BufReader::new(File::open(path)?));
    if frames.header()? != Header::V1 {
        return Err(refuse(None, "not a v1 recording".into()));
    }
    let mut st = Unsealed {
        end: MAGIC.len() as u64,
        chain: format::genesis_hash(),
        seq: 0,
        output_bytes: 0,
        input_bytes: 0,
        last_time_us: 0,
    };
    loop {
        let frame = match frames.next_frame()? {
            NextFrame::Frame(frame) => frame,
            NextFrame::End => break,
            NextFrame::Torn { .. } => {
                tracing::warn!(path = %path.display(), record = st.seq, "cutting off a torn tail");
                break;
            }
            NextFrame::TooLong(len) => {
                return Err(refuse(Some(st.seq), format!("frame length {len}")));
            }
        };
        let at = Some(st.seq);
        let record = format::decode_record(&frame).map_err(|w| refuse(at, w))?;
        if record.seq != st.seq || record.prev_hash != st.chain || record.time_us < st.last_time_us
        {
            return Err(refuse(at, "chain, seq or time broken".into()));
        }
        match (&record.body, st.seq) {
            (Some(Body::Start(_)), 0) => {}
            (_, 0) | (Some(Body::Start(_)), _) | (None, _) => {
                return Err(refuse(at, "unexpected record type".into()));
            }
            (Some(Body::Seal(_)), _) => return Err(refuse(at, "already sealed".into())),
            (Some(Body::Output(d)), _) => st.output_bytes += d.data.len() as u64,
            (Some(Body::Input(d)), _) => st.input_bytes += d.data.len() as u64,
            _ => {}
        }
        st.chain = format::chain_next(&st.chain, &frame);
        st.seq += 1;
        st.end += frame.len() as u64;
        st.last_time_us = record.time_us;
    }
    if st.seq == 0 {
        return Err(refuse(None, "no records".into()));
    }
    Ok(st)
}
