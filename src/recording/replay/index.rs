//! Keyframes for seeking: the terminal screen (through the `vt100` emulator) every
//! [`KEYFRAME_INTERVAL`] of recording time or [`KEYFRAME_BYTES`] of output, with the offset
//! of the record that follows it. Reaching any moment then costs loading the index,
//! restoring the nearest keyframe before it and emulating at most one interval of output,
//! instead of emulating the whole recording up to there.
//!
//! The index is derived data, never part of the recording: it is built in one pass over the
//! file and cached beside the user's other caches (see [`Index::load_or_build`]). A cached
//! index is used only while the file still has the length it had and the records the
//! keyframes point at still carry the chain values the index saw; anything else rebuilds
//! it. It is a cache, not evidence: `drawbridge verify` is what proves a recording intact.
//!
//! Limits of a restored screen: `vt100` keeps no scrollback here, and while a full-screen
//! program runs, the normal screen underneath is kept as it was just before the output
//! chunk that switched to the alternate screen.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::RecordingError;
use super::super::format::{self, Hash, MAGIC};
use super::super::proto::record::Body;
use super::stream::{Located, RecordStream};

/// Recording time between keyframes (when there was output in between).
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(5);

/// Output between keyframes, whatever the time: bounds the emulation a seek needs when a
/// lot is printed quickly (`cat` of a large file).
pub const KEYFRAME_BYTES: u64 = 1024 * 1024;

/// Terminal size before the session's pty request says otherwise.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// The first line of an index file; the version changes with the layout.
const INDEX_MAGIC: &[u8] = b"DRAWBRIDGE-REPLAY-INDEX 1\n";

/// The screen at one moment, and where to continue reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyframe {
    /// Recording time of the last output included in `screen`.
    pub time_us: u64,
    /// Offset of the first record not included (a frame boundary).
    pub offset: u64,
    /// That record's `prev_hash`: the chain value over everything before it.
    pub chain: Hash,
    pub rows: u16,
    pub cols: u16,
    /// While a full-screen program runs: the normal screen underneath, as it was when the
    /// program switched to the alternate screen. Empty otherwise.
    pub primary: Vec<u8>,
    /// Escape sequences that redraw the screen on an empty terminal of `rows` × `cols`
    /// (after `primary`).
    pub screen: Vec<u8>,
}

/// The keyframes of one recording, in time order; never empty: the first is the empty
/// screen before record 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    pub keyframes: Vec<Keyframe>,
    /// Length of the file when it was indexed.
    pub file_len: u64,
    /// Time of the last record.
    pub end_us: u64,
}

/// A terminal emulator following a recording, sized by its pty and resize records.
pub struct Terminal {
    pub parser: vt100::Parser,
    /// The normal screen as it was before the alternate screen was entered; `vt100` does not
    /// show it while the alternate screen is active, and a keyframe needs it.
    primary: Vec<u8>,
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal {
            parser: vt100::Parser::new(DEFAULT_SIZE.0, DEFAULT_SIZE.1, 0),
            primary: Vec::new(),
        }
    }
}

/// The ways programs switch to the alternate screen (xterm private modes 1049, 1047, 47).
const ALTERNATE_SCREEN_ON: [&[u8]; 3] = [b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h"];

impl Terminal {
    /// A terminal showing `keyframe`'s screen.
    pub fn restore(keyframe: &Keyframe) -> Terminal {
        let mut parser = vt100::Parser::new(keyframe.rows, keyframe.cols, 0);
        parser.process(&keyframe.primary);
        parser.process(&keyframe.screen);
        Terminal {
            parser,
            primary: keyframe.primary.clone(),
        }
    }

    /// Applies what `body` does to a terminal (output, pty size, resizes).
    pub fn apply(&mut self, body: Option<&Body>) {
        match body {
            Some(Body::Output(data)) => {
                // Scanning for the switch is cheap; snapshotting before every chunk is not.
                if !self.parser.screen().alternate_screen()
                    && ALTERNATE_SCREEN_ON
                        .iter()
                        .any(|on| data.data.windows(on.len()).any(|w| w == *on))
                {
                    self.primary = self.parser.screen().state_formatted();
                }
                self.parser.process(&data.data);
            }
            Some(Body::Pty(p)) => self.resize(p.rows, p.cols),
            Some(Body::Resize(r)) => self.resize(r.rows, r.cols),
            _ => {}
        }
    }

    fn resize(&mut self, rows: u32, cols: u32) {
        // A client without a real terminal reports 0x0: keep the size we have.
        if rows > 0 && cols > 0 {
            let clamp = |v: u32| v.min(1000) as u16;
            self.parser.set_size(clamp(rows), clamp(cols));
        }
    }

    /// The normal screen beneath a full-screen program (empty when none runs).
    fn primary(&self) -> &[u8] {
        if self.parser.screen().alternate_screen() {
            &self.primary
        } else {
            &[]
        }
    }

    /// Escape sequences that redraw the visible screen on an empty terminal, switching to
    /// the alternate screen first when a full-screen program is running.
    fn screen(&self) -> Vec<u8> {
        let screen = self.parser.screen();
        let mut out = Vec::with_capacity(4096);
        if screen.alternate_screen() {
            out.extend_from_slice(b"\x1b[?1049h");
        }
        out.extend_from_slice(&screen.state_formatted());
        out
    }

    /// What to write to a real terminal to show this screen, whatever it showed before:
    /// leave any alternate screen, draw the normal screen, then the program's if one runs.
    pub fn paint(&self) -> Vec<u8> {
        let mut out = b"\x1b[?1049l".to_vec();
        out.extend_from_slice(self.primary());
        out.extend_from_slice(&self.screen());
        out
    }

    fn keyframe(&self, time_us: u64, next: &Located) -> Keyframe {
        let (rows, cols) = self.parser.screen().size();
        Keyframe {
            time_us,
            offset: next.offset,
            chain: chain_of(next),
            rows,
            cols,
            primary: self.primary().to_vec(),
            screen: self.screen(),
        }
    }
}

fn chain_of(located: &Located) -> Hash {
    let mut chain = [0u8; 32];
    if located.record.prev_hash.len() == 32 {
        chain.copy_from_slice(&located.record.prev_hash);
    }
    chain
}

impl Index {
    /// Builds the index in one pass over the file.
    pub fn build(path: &Path) -> Result<Index, RecordingError> {
        let file_len = fs::metadata(path)?.len();
        let mut stream = RecordStream::open(path)?;
        let mut terminal = Terminal::default();
        let (rows, cols) = DEFAULT_SIZE;
        let mut keyframes = vec![Keyframe {
            time_us: 0,
            offset: stream.offset(),
            chain: format::genesis_hash(),
            rows,
            cols,
            primary: Vec::new(),
            screen: Vec::new(),
        }];
        let interval = KEYFRAME_INTERVAL.as_micros() as u64;
        // Time of the last record applied, and of the last keyframe.
        let (mut last_us, mut keyframe_us) = (0, 0);
        let mut output_since = 0u64;
        while let Some(located) = stream.next_record()? {
            let time_us = located.record.time_us;
            if output_since >= KEYFRAME_BYTES
                || (output_since > 0 && time_us.saturating_sub(keyframe_us) >= interval)
            {
                keyframes.push(terminal.keyframe(last_us, &located));
                keyframe_us = last_us;
                output_since = 0;
            }
            if let Some(Body::Output(data)) = &located.record.body {
                output_since += data.data.len() as u64;
            }
            terminal.apply(located.record.body.as_ref());
            last_us = time_us;
        }
        Ok(Index {
            keyframes,
            file_len,
            end_us: last_us,
        })
    }

    /// The last keyframe at or before `time_us`.
    pub fn keyframe_before(&self, time_us: u64) -> &Keyframe {
        // The first keyframe is at time 0, so at least one qualifies.
        let after = self.keyframes.partition_point(|k| k.time_us <= time_us);
        &self.keyframes[after.saturating_sub(1)]
    }

    /// The cached index of `path` from `cache_dir` if it still matches the file, otherwise
    /// a freshly built one (see [`Index::cached`] and [`Index::build_and_cache`]).
    pub fn load_or_build(path: &Path, cache_dir: Option<&Path>) -> Result<Index, RecordingError> {
        match Index::cached(path, cache_dir) {
            Some(index) => Ok(index),
            None => Index::build_and_cache(path, cache_dir),
        }
    }

    /// The index of `path` cached in `cache_dir`, if there is one and it still matches.
    pub fn cached(path: &Path, cache_dir: Option<&Path>) -> Option<Index> {
        let index = Index::load(&cache_file(cache_dir?, path)).ok()?;
        index.matches(path).then_some(index)
    }

    /// Builds the index of `path` and caches it in `cache_dir` when that is writable (a
    /// cache that cannot be written is not an error: seeking still works, only the next
    /// run builds again).
    pub fn build_and_cache(path: &Path, cache_dir: Option<&Path>) -> Result<Index, RecordingError> {
        let index = Index::build(path)?;
        if let Some(cache) = cache_dir.map(|dir| cache_file(dir, path))
            && let Err(e) = index.save(&cache)
        {
            tracing::debug!(cache = %cache.display(), error = %e, "replay index not cached");
        }
        Ok(index)
    }

    /// True when `path` still looks like the file this index was built from: same length,
    /// and the last keyframe's record carries the chain value the index saw (which, the
    /// chain being what it is, vouches for every record before it too).
    fn matches(&self, path: &Path) -> bool {
        if fs::metadata(path).map(|m| m.len()).ok() != Some(self.file_len) {
            return false;
        }
        let Some(last) = self.keyframes.last() else {
            return false;
        };
        RecordStream::at(path, last.offset)
            .and_then(|mut s| s.next_record())
            .is_ok_and(|r| r.is_some_and(|r| chain_of(&r) == last.chain))
            || last.offset == MAGIC.len() as u64
    }
}

/// Where playback stands: the terminal after every record before `next`, and the stream
/// that `next` came from.
pub struct Cursor {
    pub terminal: Terminal,
    stream: RecordStream,
    /// The next record to show; `None` at the end of the recording.
    pub next: Option<Located>,
    /// Time of the last record applied to `terminal`.
    pub applied_us: u64,
}

impl Cursor {
    /// At the start of the recording at `path`.
    pub fn start(path: &Path) -> Result<Cursor, RecordingError> {
        let mut stream = RecordStream::open(path)?;
        let next = stream.next_record()?;
        Ok(Cursor {
            terminal: Terminal::default(),
            stream,
            next,
            applied_us: 0,
        })
    }

    /// At `keyframe`, after checking that the record it points at is the one it saw.
    pub fn at_keyframe(path: &Path, keyframe: &Keyframe) -> Result<Cursor, RecordingError> {
        let mut stream = RecordStream::at(path, keyframe.offset)?;
        let next = stream.next_record()?;
        if next.as_ref().is_some_and(|n| chain_of(n) != keyframe.chain) {
            return Err(RecordingError::Format {
                path: path.to_path_buf(),
                record: None,
                what: format!(
                    "changed since its replay index was built (byte {})",
                    keyframe.offset
                ),
            });
        }
        Ok(Cursor {
            terminal: Terminal::restore(keyframe),
            stream,
            next,
            applied_us: keyframe.time_us,
        })
    }

    /// Applies `next` to the terminal and reads the record after it; returns the record
    /// applied.
    pub fn advance(&mut self) -> Result<Option<Located>, RecordingError> {
        let Some(current) = self.next.take() else {
            return Ok(None);
        };
        self.terminal.apply(current.record.body.as_ref());
        self.applied_us = current.record.time_us;
        self.next = self.stream.next_record()?;
        Ok(Some(current))
    }

    /// Applies every record up to and including `time_us`, without showing anything.
    pub fn advance_to(&mut self, time_us: u64) -> Result<(), RecordingError> {
        while self
            .next
            .as_ref()
            .is_some_and(|n| n.record.time_us <= time_us)
        {
            self.advance()?;
        }
        Ok(())
    }

    /// Moves to `time_us`: on from here when no keyframe is closer, otherwise from the
    /// keyframe of `index` before `time_us`.
    pub fn seek(&mut self, path: &Path, index: &Index, time_us: u64) -> Result<(), RecordingError> {
        let keyframe = index.keyframe_before(time_us);
        if time_us < self.applied_us || keyframe.time_us > self.applied_us {
            *self = Cursor::at_keyframe(path, keyframe)?;
        }
        self.advance_to(time_us)
    }
}

/// `<cache_dir>/<file stem>-<hash of the absolute path>.idx`: one cache entry per file.
fn cache_file(dir: &Path, recording: &Path) -> PathBuf {
    let absolute = fs::canonicalize(recording).unwrap_or_else(|_| recording.to_path_buf());
    let digest = format::sha256(absolute.as_os_str().as_encoded_bytes());
    let stem = recording
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!("{stem}-{}.idx", format::hex(&digest[..8])))
}

/// Index file layout (all integers big-endian), written whole then renamed into place:
///
/// ```text
/// INDEX_MAGIC || file_len u64 || end_us u64 || count u64
///   || count × (time_us u64 || offset u64 || chain [32] || rows u16 || cols u16
///               || primary_len u32 || primary || screen_len u32 || screen)
///   || SHA-256 of everything before
/// ```
impl Index {
    fn encode(&self) -> Vec<u8> {
        let mut out = INDEX_MAGIC.to_vec();
        out.extend_from_slice(&self.file_len.to_be_bytes());
        out.extend_from_slice(&self.end_us.to_be_bytes());
        out.extend_from_slice(&(self.keyframes.len() as u64).to_be_bytes());
        for k in &self.keyframes {
            out.extend_from_slice(&k.time_us.to_be_bytes());
            out.extend_from_slice(&k.offset.to_be_bytes());
            out.extend_from_slice(&k.chain);
            out.extend_from_slice(&k.rows.to_be_bytes());
            out.extend_from_slice(&k.cols.to_be_bytes());
            for bytes in [&k.primary, &k.screen] {
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
        let digest = format::sha256(&out);
        out.extend_from_slice(&digest);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Index> {
        let (body, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if format::sha256(body) != digest {
            return None;
        }
        let mut r = Bytes(body.strip_prefix(INDEX_MAGIC)?);
        let file_len = r.u64()?;
        let end_us = r.u64()?;
        let count = r.u64()?;
        let mut keyframes = Vec::new();
        for _ in 0..count {
            keyframes.push(Keyframe {
                time_us: r.u64()?,
                offset: r.u64()?,
                chain: r.take(32)?.try_into().ok()?,
                rows: r.u16()?,
                cols: r.u16()?,
                primary: r.sized()?,
                screen: r.sized()?,
            });
        }
        (r.0.is_empty() && !keyframes.is_empty()).then_some(Index {
            keyframes,
            file_len,
            end_us,
        })
    }

    fn save(&self, file: &Path) -> io::Result<()> {
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let mut out = fs::File::create(&tmp)?;
        out.write_all(&self.encode())?;
        drop(out);
        fs::rename(&tmp, file)
    }

    fn load(file: &Path) -> io::Result<Index> {
        Index::decode(&fs::read(file)?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a replay index"))
    }
}

/// A cursor over the bytes of an index file.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    /// A `u32` length, then that many bytes.
    fn sized(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        Some(self.take(len)?.to_vec())
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
}
