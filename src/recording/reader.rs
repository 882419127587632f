//! Reading recordings: the streaming frame reader shared with verification, and
//! [`read_file`], which loads a whole recording for listing, replay and export.
//!
//! `read_file` checks structure (magic, framing, parsing) but not integrity; use
//! [`super::verify_file`] for that. A torn tail (the writer crashed mid-frame) is tolerated so
//! that interrupted sessions can still be replayed; [`Recording::torn_tail`] says so.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::format::{self, LEN_PREFIX, MAGIC, MAGIC_PREFIX};
use super::proto::{self, record::Body};
use super::{RecordingError, SessionMeta};

/// A recording loaded in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub path: PathBuf,
    /// Every whole record, in file order.
    pub records: Vec<proto::Record>,
    /// The file ends in an incomplete frame, which was ignored.
    pub torn_tail: bool,
}

impl Recording {
    /// The `SessionStart` record's contents, if record 0 is one.
    pub fn start(&self) -> Option<&proto::SessionStart> {
        match self.records.first()?.body.as_ref()? {
            Body::Start(start) => Some(start),
            _ => None,
        }
    }

    /// Session metadata from the `SessionStart` record.
    pub fn meta(&self) -> Option<SessionMeta> {
        self.start().map(SessionMeta::from_start)
    }

    /// The seal, if the last record is one.
    pub fn seal(&self) -> Option<&proto::Seal> {
        match self.records.last()?.body.as_ref()? {
            Body::Seal(seal) => Some(seal),
            _ => None,
        }
    }
}

/// What the frame reader found next.
#[derive(Debug)]
pub(crate) enum NextFrame<'a> {
    /// A whole frame, length prefix included (valid until the next read).
    Frame(&'a [u8]),
    /// Clean end of file on a frame boundary.
    End,
    /// The file ends inside a frame: `have` of `need` bytes present.
    Torn { have: usize, need: usize },
    /// The length prefix exceeds [`format::MAX_FRAME_LEN`].
    TooLong(u64),
}

/// Reads frames one by one from any byte source, without trusting the lengths: a frame is
/// only allocated as its bytes actually arrive. One buffer serves every frame.
pub(crate) struct FrameReader<R> {
    inner: R,
    frame: Vec<u8>,
}

/// How the magic line compared.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// The version this build reads and writes (v2).
    Current,
    /// The file ends inside the magic line (or is empty).
    Truncated,
    /// A Drawbridge recording of another version (the line as found, lossily).
    OtherVersion(String),
    NotARecording,
}

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            frame: Vec::new(),
        }
    }

    /// Reads and classifies the magic line.
    pub(crate) fn header(&mut self) -> io::Result<Header> {
        let mut buf = vec![0u8; MAGIC.len()];
        let n = read_full(&mut self.inner, &mut buf)?;
        if buf[..n] == *MAGIC {
            return Ok(Header::Current);
        }
        if MAGIC.starts_with(&buf[..n]) {
            return Ok(Header::Truncated);
        }
        if buf[..n].starts_with(MAGIC_PREFIX) {
            let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
            return Ok(Header::OtherVersion(
                String::from_utf8_lossy(line).into_owned(),
            ));
        }
        Ok(Header::NotARecording)
    }

    /// Reads the next frame.
    pub(crate) fn next_frame(&mut self) -> io::Result<NextFrame<'_>> {
        let mut prefix = [0u8; LEN_PREFIX];
        let n = read_full(&mut self.inner, &mut prefix)?;
        if n == 0 {
            return Ok(NextFrame::End);
        }
        if n < LEN_PREFIX {
            return Ok(NextFrame::Torn {
                have: n,
                need: LEN_PREFIX,
            });
        }
        let len = match format::decode_len(prefix) {
            Ok(len) => len,
            Err(format::TooLong(len)) => return Ok(NextFrame::TooLong(len)),
        };
        let frame = &mut self.frame;
        frame.clear();
        frame.reserve(LEN_PREFIX + len.min(64 * 1024));
        frame.extend_from_slice(&prefix);
        (&mut self.inner).take(len as u64).read_to_end(frame)?;
        if frame.len() < LEN_PREFIX + len {
            return Ok(NextFrame::Torn {
                have: frame.len(),
                need: LEN_PREFIX + len,
            });
        }
        Ok(NextFrame::Frame(frame))
    }
}

/// Fills `buf` as far as the source allows; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Loads a recording: header and every whole record. Fails on a bad magic line, an oversized
/// frame or an unparsable record; tolerates a torn tail.
pub fn read_file(path: &Path) -> Result<Recording, RecordingError> {
    read_from(path, BufReader::new(File::open(path)?))
}

/// [`read_file`] for a recording already in memory; `name` is what errors and
/// [`Recording::path`] call it.
pub fn read_bytes(name: &Path, bytes: &[u8]) -> Result<Recording, RecordingError> {
    read_from(name, bytes)
}

fn read_from(path: &Path, source: impl Read) -> Result<Recording, RecordingError> {
    let bad = |record: Option<u64>, what: String| RecordingError::Format {
        path: path.to_path_buf(),
        record,
        what,
    };
    let mut frames = FrameReader::new(source);
    match frames.header()? {
        Header::Current => {}
        Header::Truncated => return Err(bad(None, "truncated magic line".into())),
        Header::OtherVersion(line) => {
            return Err(bad(None, format!("unsupported format version ({line:?})")));
        }
        Header::NotARecording => {
            return Err(bad(None, "not a Drawbridge recording (bad magic)".into()));
        }
    }
    let mut records = Vec::new();
    let mut torn_tail = false;
    let mut scratch = Vec::new();
    loop {
        let index = records.len() as u64;
        match frames.next_frame()? {
            NextFrame::End => break,
            NextFrame::Frame(frame) => {
                let record = format::decode_record_with(frame, &mut scratch);
                records.push(record.map_err(|w| bad(Some(index), w))?);
            }
            NextFrame::Torn { have, need } => {
                tracing::warn!(path = %path.display(), record = index, have, need,
                    "recording ends in an incomplete frame; ignoring it");
                torn_tail = true;
                break;
            }
            NextFrame::TooLong(len) => {
                return Err(bad(
                    Some(index),
                    format!("frame length {len} exceeds the limit"),
                ));
            }
        }
    }
    Ok(Recording {
        path: path.to_path_buf(),
        records,
        torn_tail,
    })
}
