//! The scanner decides what may be forwarded; these pin its behaviour on bytes.

use super::*;
use bytes::BufMut;

fn frames(list: &[(u8, &[u8])]) -> BytesMut {
    let mut out = BytesMut::new();
    for (tag, body) in list {
        wire::put_frame(&mut out, *tag, |b| b.put_slice(body));
    }
    out
}

type Seen = Vec<(char, Option<Vec<u8>>)>;

fn scan_all(scanner: &mut Scanner, input: &[u8], tapped: &[u8]) -> (usize, Seen) {
    let mut seen = Vec::new();
    let n = scanner
        .scan(input, tapped, |tag, body| {
            seen.push((tag as char, body.ok().map(<[u8]>::to_vec)));
            Ok(())
        })
        .expect("scan");
    (n, seen)
}

#[test]
fn whole_frames_pass_and_tapped_ones_are_seen() {
    let input = frames(&[(b'Q', b"select 1\0"), (b'D', b"row"), (b'C', b"SELECT 1\0")]);
    let (n, seen) = scan_all(&mut Scanner::default(), &input, b"QC");
    assert_eq!(n, input.len());
    assert_eq!(
        seen,
        vec![
            ('Q', Some(b"select 1\0".to_vec())),
            ('C', Some(b"SELECT 1\0".to_vec()))
        ]
    );
}

#[test]
fn untapped_frames_stream_through_in_pieces() {
    let input = frames(&[(b'D', &[7u8; 100]), (b'Z', b"I")]);
    let mut scanner = Scanner::default();
    // The header and 20 bytes of the row: all 25 go at once, 80 are owed.
    let (n, _) = scan_all(&mut scanner, &input[..25], b"");
    assert_eq!((n, scanner.remaining), (25, 80));
    let (n, _) = scan_all(&mut scanner, &input[25..], b"");
    assert_eq!((n, scanner.remaining), (input.len() - 25, 0));
}

#[test]
fn a_tapped_frame_waits_until_it_is_whole_but_what_precedes_it_goes() {
    let input = frames(&[(b'D', b"abc"), (b'Q', b"select 2\0")]);
    let mut scanner = Scanner::default();
    let cut = input.len() - 3;
    let (n, seen) = scan_all(&mut scanner, &input[..cut], b"Q");
    assert_eq!(n, 8, "only the D frame may go");
    assert!(seen.is_empty());
    let (n, seen) = scan_all(&mut scanner, &input[8..], b"Q");
    assert_eq!(n, input.len() - 8);
    assert_eq!(seen.len(), 1);
}

#[test]
fn oversized_tapped_frames_pass_unbuffered_and_are_reported_by_size() {
    let mut header = BytesMut::new();
    header.put_u8(b'Q');
    header.put_u32((TAP_LIMIT + 10) as u32);
    let mut scanner = Scanner::default();
    let mut sizes = Vec::new();
    let n = scanner
        .scan(&header, b"Q", |_, body| {
            sizes.push(body.err());
            Ok(())
        })
        .expect("scan");
    assert_eq!((n, scanner.remaining), (5, TAP_LIMIT + 6));
    assert_eq!(sizes, vec![Some(TAP_LIMIT + 6)]);
}

#[test]
fn bad_lengths_stop_the_relay() {
    let mut scanner = Scanner::default();
    let err = scanner.scan(&[b'Q', 0, 0, 0, 1], b"", |_, _| Ok(()));
    assert!(matches!(err, Err(ScanError::Wire(_))));
}

#[test]
fn a_recording_failure_stops_before_the_frame_is_forwarded() {
    let input = frames(&[(b'D', b"x"), (b'Q', b"select 3\0")]);
    let mut scanner = Scanner::default();
    let err = scanner.scan(&input, b"Q", |_, _| Err(RecordingError::Closed));
    assert!(matches!(err, Err(ScanError::Recording(_))));
}
