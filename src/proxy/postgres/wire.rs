//! The PostgreSQL frame codec, written here because the relay must pass every
//! message through untouched (a modelling codec would reject what it does not
//! know). No IO: bytes in, frames out, with every length checked against a limit
//! before a byte of the body is trusted.
//!
//! Two shapes exist on the wire: startup-phase packets (4-byte length, then a
//! 4-byte code; no tag) and regular frames (1-byte tag, 4-byte length that counts
//! itself, body).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// PostgreSQL never sends or accepts a message of 1 GiB or more.
pub const MAX_FRAME_LEN: usize = 0x3fff_ffff;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("startup packet length {0} is outside 8..={MAX_STARTUP_LEN}")]
    StartupLength(usize),
    #[error("frame {tag:?} length {len} is outside 4..={limit}")]
    FrameLength { tag: char, len: usize, limit: usize },
    #[error("unsupported protocol version {0}.{1}")]
    Version(u16, u16),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

pub type Result<T> = std::result::Result<T, WireError>;

/// A packet of the startup phase, sent by the client before any tag is used.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// Protocol 3.x with its parameters (`user`, `database`, …) in order.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Parses one startup-phase packet, or `None` when more bytes are needed.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<Startup>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::StartupLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    Ok(Some(match code {
        SSL_REQUEST => Startup::SslRequest,
        GSSENC_REQUEST => Startup::GssEncRequest,
        CANCEL_REQUEST if packet.remaining() == 8 => Startup::Cancel {
            pid: packet.get_u32(),
            secret: packet.get_u32(),
        },
        CANCEL_REQUEST => return Err(WireError::Malformed("CancelRequest")),
        code if code >> 16 == 3 => Startup::Startup {
            minor: (code & 0xffff) as u16,
            params: startup_params(&packet)?,
        },
        code => return Err(WireError::Version((code >> 16) as u16, code as u16)),
    }))
}

/// `name\0value\0 … \0`.
fn startup_params(body: &[u8]) -> Result<Vec<(String, String)>> {
    let malformed = || WireError::Malformed("StartupMessage");
    let mut fields = body.split(|b| *b == 0);
    let mut params = Vec::new();
    loop {
        let name = fields.next().ok_or_else(malformed)?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = fields.next().ok_or_else(malformed)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| malformed());
        params.push((text(name)?, text(value)?));
    }
}

/// A whole regular frame: `raw` holds tag, length and body, ready to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// A frame's header: its tag and the length of the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub body_len: usize,
}

/// Reads the 5-byte header at the start of `buf` without consuming anything.
pub fn header(buf: &[u8], limit: usize) -> Result<Option<Header>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=limit).contains(&len) {
        return Err(WireError::FrameLength {
            tag: buf[0] as char,
            len,
            limit,
        });
    }
    Ok(Some(Header {
        tag: buf[0],
        body_len: len - 4,
    }))
}

/// Splits one whole frame off `buf`, or `None` when more bytes are needed.
pub fn parse(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>> {
    let Some(h) = header(buf, limit)? else {
        return Ok(None);
    };
    if buf.len() < 5 + h.body_len {
        return Ok(None);
    }
    Ok(Some(Frame {
        tag: h.tag,
        raw: buf.split_to(5 + h.body_len).freeze(),
    }))
}

/// Appends a frame with `tag` whose body `fill` writes; the length is patched in.
pub fn put_frame(out: &mut BytesMut, tag: u8, fill: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    fill(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; the messages we build never need one.
    out.put_slice(s.replace('\0', " ").as_bytes());
    out.put_u8(0);
}

/// An ErrorResponse as PostgreSQL sends it: severity, SQLSTATE, message, hint.
pub fn error_response(out: &mut BytesMut, severity: &str, code: &str, message: &str, hint: &str) {
    put_frame(out, b'E', |b| {
        for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code)] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(b'M');
        put_cstr(b, message);
        if !hint.is_empty() {
            b.put_u8(b'H');
            put_cstr(b, hint);
        }
        b.put_u8(0);
    });
}

/// AuthenticationCleartextPassword (safe only because it is sent inside TLS or
/// on loopback with the development flag).
pub fn auth_cleartext(out: &mut BytesMut) {
    put_frame(out, b'R', |b| b.put_i32(3));
}

pub fn auth_ok(out: &mut BytesMut) {
    put_frame(out, b'R', |b| b.put_i32(0));
}

pub fn backend_key_data(out: &mut BytesMut, pid: u32, secret: u32) {
    put_frame(out, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// Tells a client that asked for 3.`minor` that this side speaks 3.0 only.
pub fn negotiate_version(out: &mut BytesMut, unknown_options: &[String]) {
    put_frame(out, b'v', |b| {
        b.put_u32(3 << 16);
        b.put_u32(unknown_options.len() as u32);
        unknown_options.iter().for_each(|o| put_cstr(b, o));
    });
}

/// The text of a PasswordMessage (`p`), without its NUL.
pub fn password(frame: &Frame) -> Result<String> {
    let body = frame.body();
    match (frame.tag, body.split_last()) {
        (b'p', Some((0, text))) => {
            String::from_utf8(text.to_vec()).map_err(|_| WireError::Malformed("PasswordMessage"))
        }
        _ => Err(WireError::Malformed("PasswordMessage")),
    }
}

/// A NUL-terminated string at the start of `body`, and what follows it.
pub fn cstr(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&body[..end]).ok()?, &body[end + 1..]))
}

/// The fields of an ErrorResponse or NoticeResponse body: (code, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, &str)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        let Some((value, next)) = (code != 0).then(|| cstr(after)).flatten() else {
            break;
        };
        fields.push((code, value));
        rest = next;
    }
    fields
}

/// `SEVERITY SQLSTATE: message`, for logs and recordings.
pub fn error_message(body: &[u8]) -> String {
    let fields = error_fields(body);
    let field = |c: u8| fields.iter().find(|(k, _)| *k == c).map_or("", |(_, v)| *v);
    format!("{} {}: {}", field(b'S'), field(b'C'), field(b'M'))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
