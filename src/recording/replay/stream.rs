//! Records read one at a time from a recording file, each with its byte offset, so
//! playback starts without loading the file and can jump to any record boundary a
//! keyframe names.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::super::RecordingError;
use super::super::format::{self, MAGIC};
use super::super::proto::Record;
use super::super::reader::{FrameReader, Header, NextFrame};

/// Large reads: an index build goes through the whole file.
const READ_BUFFER: usize = 256 * 1024;

/// A record and where its frame starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub offset: u64,
    pub record: Record,
}

/// Reads records forward from some offset of a recording file.
pub struct RecordStream {
    path: PathBuf,
    frames: FrameReader<BufReader<File>>,
    /// Offset of the next frame.
    offset: u64,
}

impl RecordStream {
    /// Opens `path` at its first record, after checking the magic line the way
    /// [`super::super::read_file`] does.
    pub fn open(path: &Path) -> Result<RecordStream, RecordingError> {
        let file = File::open(path)?;
        let mut frames = FrameReader::new(BufReader::with_capacity(READ_BUFFER, file));
        let problem = match frames.header()? {
            Header::Current => None,
            Header::Truncated => Some("truncated magic line".to_string()),
            Header::OtherVersion(line) => Some(format!("unsupported format version ({line:?})")),
            Header::NotARecording => Some("not a Drawbridge recording (bad magic)".to_string()),
        };
        if let Some(what) = problem {
            return Err(RecordingError::Format {
                path: path.to_path_buf(),
                record: None,
                what,
            });
        }
        Ok(RecordStream {
            path: path.to_path_buf(),
            frames,
            offset: MAGIC.len() as u64,
        })
    }

    /// Opens `path` at `offset`, which must be a frame boundary (a keyframe's offset); a
    /// wrong offset shows up as an unparsable record or a chain value that does not match.
    pub fn at(path: &Path, offset: u64) -> Result<RecordStream, RecordingError> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(RecordStream {
            path: path.to_path_buf(),
            frames: FrameReader::new(BufReader::with_capacity(READ_BUFFER, file)),
            offset,
        })
    }

    /// Offset of the next frame: after the last whole record once the stream has ended.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next whole record, or `None` at the end. A torn tail (a crash mid-write) ends the
    /// stream like the end of the file, as in [`super::super::read_file`].
    pub fn next_record(&mut self) -> Result<Option<Located>, RecordingError> {
        let bad = |what: String| RecordingError::Format {
            path: self.path.clone(),
            record: None,
            what,
        };
        match self.frames.next_frame()? {
            NextFrame::End | NextFrame::Torn { .. } => Ok(None),
            NextFrame::TooLong(len) => Err(bad(format!(
                "frame at byte {} has length {len}, over the limit",
                self.offset
            ))),
            NextFrame::Frame(frame) => {
                let record = format::decode_record(frame)
                    .map_err(|w| bad(format!("frame at byte {}: {w}", self.offset)))?;
                let offset = self.offset;
                self.offset += frame.len() as u64;
                Ok(Some(Located { offset, record }))
            }
        }
    }
}
