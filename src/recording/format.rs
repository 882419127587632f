//! The byte-level rules of the recording format, version 2: magic line, frames, the SHA-256
//! chain, the canonical-encoding check and the checkpoint and seal signature inputs.
//!
//! Architecture invariant: this module does no IO. Bytes in, bytes out; the writer, reader
//! and verifier all go through these functions so they cannot drift apart, and
//! `proto/RECORDING.md` describes exactly what is here.

use prost::Message;
use prost::encoding::{self, WireType};
use ring::digest::{Context, SHA256, digest};

use super::proto::{Checkpoint, Record, Seal, record::Body};

/// The first bytes of every v2 recording file.
pub const MAGIC: &[u8] = b"DRAWBRIDGE-REC v2\n";

/// What every version's magic line starts with; used to tell "other version" from "not a
/// recording at all".
pub const MAGIC_PREFIX: &[u8] = b"DRAWBRIDGE-REC ";

/// Largest encoded `Record` a reader accepts (the 4-byte length prefix not included).
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// The writer splits `Data` payloads into chunks of at most this many bytes, so a frame
/// never comes near [`MAX_FRAME_LEN`].
pub const MAX_DATA_CHUNK: usize = 1024 * 1024;

/// Length of the length prefix of a frame.
pub const LEN_PREFIX: usize = 4;

/// Domain-separation prefix of the chain's starting value.
pub const CHAIN_DOMAIN: &[u8] = b"drawbridge-rec-v2 chain\n";

/// Domain-separation prefix of the seal signature input.
pub const SEAL_DOMAIN: &[u8] = b"drawbridge-rec-v2 seal\n";

/// Domain-separation prefix of the checkpoint signature input, distinct from the seal's so
/// that a checkpoint signature can never be passed off as a seal or the other way round.
pub const CHECKPOINT_DOMAIN: &[u8] = b"drawbridge-rec-v2 checkpoint\n";

/// A chain value: SHA-256 output.
pub type Hash = [u8; 32];

/// `h_0 = SHA-256(CHAIN_DOMAIN || MAGIC)`: the chain value before record 0.
pub fn genesis_hash() -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(CHAIN_DOMAIN);
    ctx.update(MAGIC);
    finish(ctx)
}

/// `h_{i+1} = SHA-256(h_i || frame_i)`, where `frame_i` is the whole frame of record `i`:
/// its 4-byte length prefix followed by the encoded record.
pub fn chain_next(prev: &Hash, frame: &[u8]) -> Hash {
    chain_next_parts(prev, &[frame])
}

/// [`chain_next`] of a frame held in consecutive pieces (a head and its payload, see
/// [`encode_frame_into`]).
pub fn chain_next_parts(prev: &Hash, frame: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    for part in frame {
        ctx.update(part);
    }
    finish(ctx)
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256 of arbitrary bytes (used for key ids).
pub fn sha256(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Error from [`encode_frame_into`] or [`decode_len`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong(pub u64);

/// Encodes `record` as a frame into `frame` (cleared first, so a writer reuses one buffer
/// for every record): 4-byte big-endian length, then the record. The whole frame is
/// `frame` followed by the returned payload, which is empty except for `Output` and
/// `Input` records: their data bytes come last in the canonical encoding, so they are
/// returned as they are instead of being copied into `frame` (bulk transfers are written
/// and hashed straight from the relay's buffer).
pub fn encode_frame_into<'r>(record: &'r Record, frame: &mut Vec<u8>) -> Result<&'r [u8], TooLong> {
    let len = record.encoded_len();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(TooLong(len as u64))?;
    frame.clear();
    frame.extend_from_slice(&len32.to_be_bytes());
    let (tag, data) = match &record.body {
        Some(Body::Output(data)) if !data.data.is_empty() => (11, data),
        Some(Body::Input(data)) if !data.data.is_empty() => (12, data),
        _ => {
            frame.reserve(len);
            // Encoding into a Vec only fails on insufficient capacity, which a Vec never has.
            record.encode(frame).map_err(|_| TooLong(len as u64))?;
            return Ok(&[]);
        }
    };
    // What prost writes for this record, field by field in number order (proto3 defaults
    // omitted), stopping before the data bytes. The unit tests compare it with prost.
    if record.seq != 0 {
        encoding::uint64::encode(1, &record.seq, frame);
    }
    if record.time_us != 0 {
        encoding::uint64::encode(2, &record.time_us, frame);
    }
    if !record.prev_hash.is_empty() {
        encoding::bytes::encode(3, &record.prev_hash, frame);
    }
    encoding::encode_key(tag, WireType::LengthDelimited, frame);
    encoding::encode_varint(data.encoded_len() as u64, frame);
    if data.channel != 0 {
        encoding::uint32::encode(1, &data.channel, frame);
    }
    encoding::encode_key(2, WireType::LengthDelimited, frame);
    encoding::encode_varint(data.data.len() as u64, frame);
    Ok(&data.data)
}

/// Reads a length prefix, enforcing [`MAX_FRAME_LEN`].
pub fn decode_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, TooLong> {
    let len = u32::from_be_bytes(prefix);
    if len > MAX_FRAME_LEN {
        return Err(TooLong(u64::from(len)));
    }
    // u32 always fits in usize on the platforms we build for (unix, 32 or 64 bit).
    usize::try_from(len).map_err(|_| TooLong(u64::from(len)))
}

/// Decodes the record in a whole frame (prefix included) and checks that the bytes are the
/// canonical encoding of what was decoded. Returns a short description on failure.
pub fn decode_record(frame: &[u8]) -> Result<Record, String> {
    decode_record_with(frame, &mut Vec::new())
}

/// [`decode_record`] with a caller-owned buffer for the canonical-encoding check, so that
/// reading a file allocates it once rather than once per record.
pub fn decode_record_with(frame: &[u8], scratch: &mut Vec<u8>) -> Result<Record, String> {
    let payload = frame
        .get(LEN_PREFIX..)
        .ok_or("frame shorter than its length prefix")?;
    let record = Record::decode(payload).map_err(|e| format!("unparsable record ({e})"))?;
    if !is_canonical(&record, payload, scratch) {
        return Err("non-canonical encoding (unknown or reordered fields)".to_string());
    }
    Ok(record)
}

/// True when `payload` is exactly the canonical encoding of `record`: fields in field-number
/// order, each once, proto3 defaults omitted, minimal varints, no unknown fields. This is
/// what makes the seal frame (the one frame the chain does not cover) non-malleable.
/// `scratch` holds the re-encoding.
pub fn is_canonical(record: &Record, payload: &[u8], scratch: &mut Vec<u8>) -> bool {
    if record.encoded_len() != payload.len() {
        return false;
    }
    scratch.clear();
    // Cannot fail: a Vec grows as needed.
    record.encode(scratch).is_ok() && scratch.as_slice() == payload
}

/// The exact bytes the seal's Ed25519 signature covers (see RECORDING.md, "Seal"):
///
/// ```text
/// SEAL_DOMAIN || final_hash (32) || seq u64 || time_us u64 || records u64
///   || output_bytes u64 || input_bytes u64 || ended_at_unix_ms i64
///   || len(end_reason) u32 || end_reason || len(key_id) u32 || key_id
/// ```
///
/// All integers big-endian. `seq` and `time_us` are those of the seal record itself.
pub fn seal_message(seq: u64, time_us: u64, seal: &Seal) -> Vec<u8> {
    let mut m = Vec::with_capacity(SEAL_DOMAIN.len() + 32 + 48 + 8 + seal.end_reason.len() + 24);
    m.extend_from_slice(SEAL_DOMAIN);
    m.extend_from_slice(&seal.final_hash);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&time_us.to_be_bytes());
    m.extend_from_slice(&seal.records.to_be_bytes());
    m.extend_from_slice(&seal.output_bytes.to_be_bytes());
    m.extend_from_slice(&seal.input_bytes.to_be_bytes());
    m.extend_from_slice(&seal.ended_at_unix_ms.to_be_bytes());
    put_str(&mut m, &seal.end_reason);
    put_str(&mut m, &seal.key_id);
    m
}

/// The exact bytes a checkpoint's Ed25519 signature covers (see RECORDING.md, "Checkpoints"):
///
/// ```text
/// CHECKPOINT_DOMAIN || chain_hash (32) || seq u64 || time_us u64 || records u64
///   || len(key_id) u32 || key_id
/// ```
pub fn checkpoint_message(seq: u64, time_us: u64, checkpoint: &Checkpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 32 + 24 + 4 + 16);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&checkpoint.chain_hash);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&time_us.to_be_bytes());
    m.extend_from_slice(&checkpoint.records.to_be_bytes());
    put_str(&mut m, &checkpoint.key_id);
    m
}

fn put_str(m: &mut Vec<u8>, s: &str) {
    // Strings come from a decoded frame, itself under MAX_FRAME_LEN, so they fit in u32.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(s.as_bytes());
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses hex (either case). `None` on odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::proto::{self, Note};
    use super::*;

    fn note(seq: u64, text: &str) -> Record {
        Record {
            seq,
            time_us: 5,
            prev_hash: vec![7; 32],
            body: Some(Body::Note(Note { text: text.into() })),
        }
    }

    #[test]
    fn frame_round_trip_and_canonical() {
        let r = note(3, "hello");
        let mut frame = vec![1, 2, 3];
        encode_frame_into(&r, &mut frame).expect("encode");
        let len = decode_len(frame[..4].try_into().expect("4 bytes")).expect("len");
        assert_eq!(len + LEN_PREFIX, frame.len());
        assert_eq!(decode_record(&frame).expect("decode"), r);

        // An unknown field appended (field 99, varint 1) still decodes but is not canonical.
        let mut extra = frame.clone();
        extra.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert!(decode_record(&extra).is_err());
    }

    /// The head-and-payload encoding of data records must be byte for byte what prost
    /// writes, at every varint boundary of the lengths and with default fields omitted.
    #[test]
    fn data_frames_split_at_the_payload_match_prost() {
        for len in [1, 127, 128, 16_383, 16_384, 32_768, MAX_DATA_CHUNK] {
            for (seq, time_us, channel) in [(0, 0, 0), (1, 9, 3), (u64::MAX, 300, u32::MAX)] {
                let data = proto::Data {
                    channel,
                    data: bytes::Bytes::from(vec![0xa5; len]),
                };
                for body in [Body::Output(data.clone()), Body::Input(data)] {
                    let record = Record {
                        seq,
                        time_us,
                        prev_hash: if seq == 0 { Vec::new() } else { vec![7; 32] },
                        body: Some(body),
                    };
                    let mut head = Vec::new();
                    let payload = encode_frame_into(&record, &mut head).expect("encode");
                    assert_eq!(payload.len(), len);
                    let mut whole = (record.encoded_len() as u32).to_be_bytes().to_vec();
                    record.encode(&mut whole).expect("prost");
                    assert_eq!([head.as_slice(), payload].concat(), whole, "len {len}");
                    assert_eq!(
                        chain_next_parts(&[1; 32], &[&head, payload]),
                        chain_next(&[1; 32], &whole)
                    );
                }
            }
        }
    }

    #[test]
    fn length_limit() {
        assert!(decode_len((MAX_FRAME_LEN + 1).to_be_bytes()).is_err());
        assert_eq!(
            decode_len(MAX_FRAME_LEN.to_be_bytes()),
            Ok(MAX_FRAME_LEN as usize)
        );
    }

    #[test]
    fn chain_is_order_sensitive() {
        let h0 = genesis_hash();
        let a = chain_next(&h0, b"a");
        let b = chain_next(&h0, b"b");
        assert_ne!(a, b);
        assert_ne!(chain_next(&a, b"b"), chain_next(&b, b"a"));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001ABff"), Some(bytes.to_vec()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
