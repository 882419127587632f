//! [`Recorder`]: the append-only writer of one recording file (a session's recording or one
//! audit-log segment).
//!
//! Synchronous on purpose: it runs on a dedicated writer thread ([`super::queue`]) so the
//! relay never waits on the disk, and tests and recovery can drive it directly. Durability
//! points are explicit and signed: every `every_records` records, or when `interval` has
//! passed since the last one with records pending, the writer appends a [`Checkpoint`]
//! (an Ed25519 signature over the chain value) and `fdatasync`s (group commit); the seal
//! `fsync`s. A crash loses at most what follows the last checkpoint, and whatever reached the
//! disk still verifies, as an unsealed recording that restart recovery seals.
//!
//! Fail closed: after any write error the recorder is poisoned and refuses further records,
//! because the file's tail is then unknown and later records would not chain.
//!
//! [`Checkpoint`]: super::proto::Checkpoint

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufWriter, IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::format::{self, Hash, MAGIC, MAX_DATA_CHUNK};
use super::proto::{self, record::Body};
use super::{FILE_EXTENSION, RecordingError, RecordingKey, SessionMeta, unix_ms_now};

/// When the writer signs a checkpoint and syncs the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// A checkpoint after this many records (at least 1).
    pub every_records: u64,
    /// ...or once this long has passed since the last one and records are pending.
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 1000,
            interval: Duration::from_secs(1),
        }
    }
}

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

/// Where a writer stands: enough to continue a file (used by crash recovery).
#[derive(Debug, Clone)]
pub(crate) struct Position {
    /// Chain value before the next record.
    pub chain: Hash,
    /// Seq of the next record.
    pub seq: u64,
    pub output_bytes: u64,
    pub input_bytes: u64,
    pub last_time_us: u64,
}

impl Position {
    fn genesis() -> Position {
        Position {
            chain: format::genesis_hash(),
            seq: 0,
            output_bytes: 0,
            input_bytes: 0,
            last_time_us: 0,
        }
    }
}

/// Writer of one recording file. Not `Sync`; one thread owns it.
pub struct Recorder {
    out: BufWriter<File>,
    path: PathBuf,
    key: Arc<RecordingKey>,
    policy: CheckpointPolicy,
    /// `time_us` is measured from here.
    started: Instant,
    pos: Position,
    /// The frame being written, kept to reuse its allocation.
    frame: Vec<u8>,
    /// Records appended since the last checkpoint (or since the file was opened).
    since_checkpoint: u64,
    last_checkpoint: Instant,
    poisoned: bool,
    sealed: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("seq", &self.pos.seq)
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

impl Recorder {
    /// Creates `dir/<session_id>.dbr` (mode 0600; `dir` is created with mode 0700 if
    /// missing), writes the magic line and the `SessionStart` record, and syncs them and the
    /// directory entry. Refuses to overwrite an existing file.
    pub fn create(
        dir: &Path,
        meta: &SessionMeta,
        key: Arc<RecordingKey>,
        policy: CheckpointPolicy,
    ) -> Result<Recorder, RecordingError> {
        if !usable_session_id(&meta.session_id) {
            return Err(RecordingError::InvalidSessionId(meta.session_id.clone()));
        }
        let start = Body::Start(proto::SessionStart {
            session_id: meta.session_id.clone(),
            user: meta.user.clone(),
            target: meta.target.clone(),
            login: meta.login.clone(),
            protocol: meta.protocol.clone(),
            grant_id: meta.grant_id,
            started_at_unix_ms: meta.started_at_unix_ms,
            key_id: key.key_id().to_string(),
        });
        let path = dir.join(format!("{}.{FILE_EXTENSION}", meta.session_id));
        Self::create_file(dir, path, start, key, policy)
    }

    /// Creates a new audit-log segment at `dir/<name>` starting with `start`.
    pub(crate) fn create_log(
        dir: &Path,
        name: &str,
        start: proto::LogStart,
        key: Arc<RecordingKey>,
        policy: CheckpointPolicy,
    ) -> Result<Recorder, RecordingError> {
        Self::create_file(dir, dir.join(name), Body::LogStart(start), key, policy)
    }

    fn create_file(
        dir: &Path,
        path: PathBuf,
        first: Body,
        key: Arc<RecordingKey>,
        policy: CheckpointPolicy,
    ) -> Result<Recorder, RecordingError> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut rec = Recorder::resume(file, path, key, policy, Position::genesis());
        rec.write_or_poison(MAGIC, &[])?;
        rec.append_at(0, first)?;
        rec.sync()?;
        // Make the new directory entry durable too, so a crash cannot lose the whole file.
        File::open(dir)?.sync_all()?;
        Ok(rec)
    }

    /// A recorder continuing `file` (opened for appending, cut to its last whole record)
    /// from `pos`.
    pub(crate) fn resume(
        file: File,
        path: PathBuf,
        key: Arc<RecordingKey>,
        policy: CheckpointPolicy,
        pos: Position,
    ) -> Recorder {
        Recorder {
            out: BufWriter::with_capacity(256 * 1024, file),
            path,
            key,
            policy,
            started: Instant::now(),
            pos,
            frame: Vec::new(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            poisoned: false,
            sealed: false,
        }
    }

    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The instant the recording's times count from.
    #[cfg(test)]
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Appends one record that happened at `at`, then a checkpoint if one is due by count.
    /// Only event bodies are accepted: starts, checkpoints and seals are the writer's own.
    pub fn append(&mut self, at: Instant, body: Body) -> Result<(), RecordingError> {
        match &body {
            Body::Start(_) | Body::LogStart(_) | Body::Checkpoint(_) | Body::Seal(_) => {
                return Err(RecordingError::ReservedBody);
            }
            Body::Output(d) if d.data.len() > MAX_DATA_CHUNK => {
                return Err(RecordingError::ReservedBody);
            }
            Body::Input(d) if d.data.len() > MAX_DATA_CHUNK => {
                return Err(RecordingError::ReservedBody);
            }
            _ => {}
        }
        let time_us = u64::try_from(at.saturating_duration_since(self.started).as_micros())
            .unwrap_or(u64::MAX);
        self.append_at(time_us, body)?;
        if self.since_checkpoint >= self.policy.every_records {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Bytes from the upstream towards the engineer, split into chunks of at most
    /// [`MAX_DATA_CHUNK`].
    pub fn output(&mut self, channel: u32, data: &[u8]) -> Result<(), RecordingError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            let data = Bytes::copy_from_slice(chunk);
            self.append(Instant::now(), Body::Output(proto::Data { channel, data }))?;
        }
        Ok(())
    }

    /// Bytes from the engineer towards the upstream.
    pub fn input(&mut self, channel: u32, data: &[u8]) -> Result<(), RecordingError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            let data = Bytes::copy_from_slice(chunk);
            self.append(Instant::now(), Body::Input(proto::Data { channel, data }))?;
        }
        Ok(())
    }

    pub fn note(&mut self, text: &str) -> Result<(), RecordingError> {
        let text = text.to_string();
        self.append(Instant::now(), Body::Note(proto::Note { text }))
    }

    /// When a checkpoint falls due by time, if records are waiting for one.
    pub fn checkpoint_deadline(&self) -> Option<Instant> {
        (self.since_checkpoint > 0).then(|| self.last_checkpoint + self.policy.interval)
    }

    /// Signs the chain value so far into a checkpoint record and syncs the file.
    pub fn checkpoint(&mut self) -> Result<(), RecordingError> {
        let time_us = self.now_us();
        let mut checkpoint = proto::Checkpoint {
            records: self.pos.seq,
            key_id: self.key.key_id().to_string(),
            chain_hash: self.pos.chain.to_vec(),
            signature: Vec::new(),
        };
        let message = format::checkpoint_message(self.pos.seq, time_us, &checkpoint);
        checkpoint.signature = self.key.sign(&message);
        self.append_at(time_us, Body::Checkpoint(checkpoint))?;
        self.sync()?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Writes the signed seal, flushes and `fsync`s. The recording is complete afterwards.
    pub fn seal(mut self, end_reason: &str) -> Result<SealSummary, RecordingError> {
        let time_us = self.now_us();
        self.write_seal(time_us, end_reason)
    }

    /// Seals at the last record's time (crash recovery: the real end is unknown).
    pub(crate) fn seal_at_last_record(
        mut self,
        end_reason: &str,
    ) -> Result<SealSummary, RecordingError> {
        let time_us = self.pos.last_time_us;
        self.write_seal(time_us, end_reason)
    }

    fn write_seal(
        &mut self,
        time_us: u64,
        end_reason: &str,
    ) -> Result<SealSummary, RecordingError> {
        let final_hash = self.pos.chain;
        let seq = self.pos.seq;
        let mut seal = proto::Seal {
            records: seq,
            output_bytes: self.pos.output_bytes,
            input_bytes: self.pos.input_bytes,
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
        release_written_pages(self.out.get_ref());
        self.sealed = true;
        Ok(SealSummary {
            records: self.pos.seq,
            final_hash,
            path: self.path.clone(),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Encodes one record chained to the previous one and buffers it. `time_us` is raised
    /// to the previous record's if need be: events from several relay tasks may reach the
    /// queue slightly out of timestamp order, and the format requires time never to go back.
    fn append_at(&mut self, time_us: u64, body: Body) -> Result<(), RecordingError> {
        if self.poisoned || self.sealed {
            return Err(RecordingError::Poisoned(self.path.clone()));
        }
        let time_us = time_us.max(self.pos.last_time_us);
        let counted = match &body {
            Body::Output(d) => (d.data.len() as u64, 0),
            Body::Input(d) => (0, d.data.len() as u64),
            _ => (0, 0),
        };
        let record = proto::Record {
            seq: self.pos.seq,
            time_us,
            prev_hash: self.pos.chain.to_vec(),
            body: Some(body),
        };
        // One frame buffer for the recorder's life: no allocation per record.
        let mut frame = std::mem::take(&mut self.frame);
        let payload = format::encode_frame_into(&record, &mut frame).map_err(|too_long| {
            RecordingError::Format {
                path: self.path.clone(),
                record: Some(self.pos.seq),
                what: format!("record of {} bytes exceeds the frame limit", too_long.0),
            }
        })?;
        self.write_or_poison(&frame, payload)?;
        self.pos.chain = format::chain_next_parts(&self.pos.chain, &[&frame, payload]);
        self.frame = frame;
        self.pos.seq += 1;
        self.pos.output_bytes += counted.0;
        self.pos.input_bytes += counted.1;
        self.pos.last_time_us = time_us;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// Pushes buffered records to the file and `fdatasync`s it.
    fn sync(&mut self) -> Result<(), RecordingError> {
        let res = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        self.poison_on_err(res)?;
        release_written_pages(self.out.get_ref());
        Ok(())
    }

    /// Writes `head` then `payload`; a payload larger than the buffer goes to the file in one
    /// vectored write with what is buffered, without being copied into the buffer.
    fn write_or_poison(&mut self, head: &[u8], payload: &[u8]) -> Result<(), RecordingError> {
        let mut slices = [IoSlice::new(head), IoSlice::new(payload)];
        let mut rest = slices.as_mut_slice();
        let mut res = Ok(());
        while !rest.is_empty() {
            match self.out.write_vectored(rest) {
                Ok(0) => {
                    res = Err(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        self.poison_on_err(res)
    }

    fn poison_on_err(&mut self, res: std::io::Result<()>) -> Result<(), RecordingError> {
        res.map_err(|e| {
            self.poisoned = true;
            tracing::error!(path = %self.path.display(), error = %e, "recording write failed");
            RecordingError::Io(e)
        })
    }
}

/// Drops the file's pages from the page cache once they are on disk. A recording is
/// written once and read rarely, so keeping it cached would only push out what the
/// machine does use; and the kernel then reuses the same few pages for the next writes.
/// On virtual machines that hand free memory back to the host this matters most: writing
/// into fresh pages measured 5x slower than into reused ones (240 vs 1200 MB/s), and a
/// bulk SSH copy spent 40% of the gateway's CPU there. Advice only, so errors are ignored.
fn release_written_pages(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // BufWriter flushes itself on drop (best effort); the file stays unsealed and
        // verifies as such until recovery seals it.
        if !self.sealed {
            tracing::warn!(
                path = %self.path.display(),
                records = self.pos.seq,
                "recording closed without a seal"
            );
        }
    }
}
