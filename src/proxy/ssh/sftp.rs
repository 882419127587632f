//! The SFTP tap: decodes the SFTP (v3, as OpenSSH speaks it) packets relayed on
//! a `subsystem sftp` channel into one line per file operation, e.g.
//! `sftp open /etc/motd read`, `sftp close /etc/motd read 120 bytes`,
//! `sftp rename /tmp/a /tmp/b`. File contents are never kept: only each
//! packet's first [`HEAD`] bytes are buffered, the rest is counted and skipped,
//! so a 256 KiB WRITE costs a few dozen bytes of parsing.
//!
//! Architecture invariant: no IO; bytes in, lines out. The relay records the
//! lines and, should the stream stop parsing as SFTP ([`TapError`]), falls back
//! to recording raw bytes so nothing goes unrecorded.

use std::collections::HashMap;

/// Bytes of each packet kept for parsing: enough for two `PATH_MAX` paths.
const HEAD: usize = 16 * 1024;
/// OpenSSH's own limit is 256 KiB; anything far larger is not SFTP.
const MAX_PACKET: usize = 1 << 20;
/// Requests in flight and open handles tracked at once (clients pipeline ~64).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error("packet of {0} bytes exceeds the SFTP limit")]
    TooLong(usize),
    #[error("more than {MAX_TRACKED} requests or handles in flight")]
    TooMany,
}

/// One direction's packet reassembly: the 4-byte length, then the packet, of
/// which only the head is kept.
#[derive(Default)]
struct Framer {
    len_buf: Vec<u8>,
    /// Packet length once known.
    need: Option<usize>,
    seen: usize,
    head: Vec<u8>,
}

impl Framer {
    /// Feeds bytes; calls `packet(head, total_len)` for each complete packet.
    fn feed(
        &mut self,
        mut data: &[u8],
        mut packet: impl FnMut(&[u8], usize) -> Result<(), TapError>,
    ) -> Result<(), TapError> {
        while !data.is_empty() {
            let Some(need) = self.need else {
                let take = (4 - self.len_buf.len()).min(data.len());
                self.len_buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if let Ok(len) = <[u8; 4]>::try_from(self.len_buf.as_slice()) {
                    let len = u32::from_be_bytes(len) as usize;
                    if len > MAX_PACKET {
                        return Err(TapError::TooLong(len));
                    }
                    self.need = Some(len);
                    self.len_buf.clear();
                    self.head.clear();
                    self.seen = 0;
                }
                continue;
            };
            let take = (need - self.seen).min(data.len());
            let keep = take.min(HEAD.saturating_sub(self.head.len()));
            self.head.extend_from_slice(&data[..keep]);
            self.seen += take;
            data = &data[take..];
            if self.seen == need {
                self.need = None;
                packet(&self.head, need)?;
            }
        }
        // A zero-length packet (invalid, but harmless) completes at once.
        if self.need == Some(0) {
            self.need = None;
        }
        Ok(())
    }
}

/// Reads SSH wire fields from a packet head; `None` when the head ends early.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*b))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (b, rest) = (self.0.get(..len)?, self.0.get(len..)?);
        self.0 = rest;
        Some(b)
    }
    fn path(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// What a request in flight was, so its response can be described.
enum Pending {
    Open {
        path: String,
        mode: &'static str,
    },
    Read {
        handle: Vec<u8>,
    },
    Write {
        handle: Vec<u8>,
        len: u64,
    },
    Close {
        handle: Vec<u8>,
    },
    /// Done once the status says OK (or not): remove, mkdir, rename, ...
    Op(String),
}

struct OpenFile {
    path: String,
    mode: &'static str,
    read: u64,
    written: u64,
}

/// Decodes both directions of one SFTP channel.
#[derive(Default)]
pub struct SftpTap {
    requests: Framer,
    responses: Framer,
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
}

impl SftpTap {
    /// Client → server bytes; returns the lines to record (usually none yet:
    /// operations are described when their response arrives).
    pub fn requests(&mut self, data: &[u8]) -> Result<Vec<String>, TapError> {
        let (pending, framer) = (&mut self.pending, &mut self.requests);
        framer.feed(data, |head, len| {
            let mut f = Fields(head);
            let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
                return Ok(()); // INIT or a runt: nothing to track
            };
            if let Some(p) = request(kind, len, &mut f) {
                if pending.len() >= MAX_TRACKED {
                    return Err(TapError::TooMany);
                }
                pending.insert(id, p);
            }
            Ok(())
        })?;
        Ok(Vec::new())
    }

    /// Server → client bytes; returns the lines to record.
    pub fn responses(&mut self, data: &[u8]) -> Result<Vec<String>, TapError> {
        let mut lines = Vec::new();
        let (pending, files, framer) = (&mut self.pending, &mut self.files, &mut self.responses);
        framer.feed(data, |head, len| {
            let mut f = Fields(head);
            let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
                return Ok(());
            };
            let Some(p) = pending.remove(&id) else {
                return Ok(()); // VERSION, or a response to an untracked request
            };
            match (kind, p) {
                // HANDLE
                (102, Pending::Open { path, mode }) => {
                    if let Some(handle) = f.bytes() {
                        if files.len() >= MAX_TRACKED {
                            return Err(TapError::TooMany);
                        }
                        lines.push(format!("sftp open {path} {mode}"));
                        let file = OpenFile {
                            path,
                            mode,
                            read: 0,
                            written: 0,
                        };
                        files.insert(handle.to_vec(), file);
                    }
                }
                // DATA: the payload length is the packet length minus its fields.
                (103, Pending::Read { handle }) => {
                    if let Some(file) = files.get_mut(&handle) {
                        file.read += len.saturating_sub(1 + 4 + 4) as u64;
                    }
                }
                // STATUS
                (101, p) => {
                    let ok = f.u32() == Some(0);
                    if let Some(mut line) = status(p, ok, files) {
                        if !ok {
                            line.push_str(&format!(" failed: {}", status_name(head)));
                        }
                        lines.push(line);
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(lines)
    }

    /// Lines for files still open when the channel ends (the client vanished or
    /// the session was ended mid-transfer).
    pub fn finish(&mut self) -> Vec<String> {
        self.files
            .drain()
            .map(|(_, file)| format!("{} (channel closed)", close_line(&file)))
            .collect()
    }
}

/// Decodes a request into what its response will complete.
fn request(kind: u8, len: usize, f: &mut Fields<'_>) -> Option<Pending> {
    let op =
        |verb: &str, f: &mut Fields<'_>| Some(Pending::Op(format!("sftp {verb} {}", f.path()?)));
    match kind {
        3 => {
            let path = f.path()?;
            let flags = f.u32()?;
            let mode = match (flags & 1 != 0, flags & 2 != 0) {
                (true, true) => "read,write",
                (false, true) => "write",
                _ => "read",
            };
            Some(Pending::Open { path, mode })
        }
        4 => Some(Pending::Close {
            handle: f.bytes()?.to_vec(),
        }),
        5 => Some(Pending::Read {
            handle: f.bytes()?.to_vec(),
        }),
        6 => {
            let handle = f.bytes()?.to_vec();
            let _offset = f.u64()?;
            // The data's length field may be past the head for huge handles;
            // the packet length gives it exactly: total minus the fields before.
            let fixed = 1 + 4 + 4 + handle.len() + 8 + 4;
            Some(Pending::Write {
                handle,
                len: len.saturating_sub(fixed) as u64,
            })
        }
        9 => op("setstat", f),
        13 => op("remove", f),
        14 => op("mkdir", f),
        15 => op("rmdir", f),
        18 => Some(Pending::Op(format!(
            "sftp rename {} {}",
            f.path()?,
            f.path()?
        ))),
        20 => Some(Pending::Op(format!(
            "sftp symlink {} {}",
            f.path()?,
            f.path()?
        ))),
        200 => {
            let name = f.path()?;
            match name.as_str() {
                "posix-rename@openssh.com" => Some(Pending::Op(format!(
                    "sftp rename {} {}",
                    f.path()?,
                    f.path()?
                ))),
                "hardlink@openssh.com" => Some(Pending::Op(format!(
                    "sftp hardlink {} {}",
                    f.path()?,
                    f.path()?
                ))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The line a STATUS response completes, if any.
fn status(p: Pending, ok: bool, files: &mut HashMap<Vec<u8>, OpenFile>) -> Option<String> {
    match p {
        Pending::Op(line) => Some(line),
        Pending::Open { path, mode } => Some(format!("sftp open {path} {mode}")),
        Pending::Write { handle, len } => {
            if ok && let Some(file) = files.get_mut(&handle) {
                file.written += len;
            }
            None
        }
        Pending::Close { handle } => files.remove(&handle).map(|file| close_line(&file)),
        Pending::Read { .. } => None, // EOF ends a download; not an operation
    }
}

fn close_line(file: &OpenFile) -> String {
    let mut line = format!("sftp close {}", file.path);
    if file.read > 0 || file.mode.contains("read") {
        line.push_str(&format!(" read {} bytes", file.read));
    }
    if file.written > 0 || file.mode.contains("write") {
        line.push_str(&format!(" wrote {} bytes", file.written));
    }
    line
}

/// "no such file" etc. from a STATUS packet head (type, id, code).
fn status_name(head: &[u8]) -> &'static str {
    match head.get(5..9).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
        Some(code) => match u32::from_be_bytes(code) {
            1 => "end of file",
            2 => "no such file",
            3 => "permission denied",
            5 => "bad message",
            8 => "operation unsupported",
            _ => "failure",
        },
        None => "failure",
    }
}

#[cfg(test)]
mod tests;
