//! Bytes in, frames out: the codec's contract, including every limit.

use super::*;

fn packet(code: u32, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32((8 + body.len()) as u32);
    b.put_u32(code);
    b.put_slice(body);
    b
}

#[test]
fn startup_packets_of_every_kind_parse() {
    assert_eq!(
        parse_startup(&mut packet(80_877_103, b"")),
        Ok(Some(Startup::SslRequest))
    );
    assert_eq!(
        parse_startup(&mut packet(80_877_104, b"")),
        Ok(Some(Startup::GssEncRequest))
    );
    let mut cancel = packet(80_877_102, &[0, 0, 0, 7, 0, 0, 1, 0]);
    assert_eq!(
        parse_startup(&mut cancel),
        Ok(Some(Startup::Cancel {
            pid: 7,
            secret: 256
        }))
    );
    let mut startup = packet(3 << 16, b"user\0root@db-1\0database\0app\0\0");
    assert_eq!(
        parse_startup(&mut startup),
        Ok(Some(Startup::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "root@db-1".into()),
                ("database".into(), "app".into())
            ]
        }))
    );
    assert!(startup.is_empty());
}

#[test]
fn startup_waits_for_more_bytes_and_enforces_its_limits() {
    let whole = packet(3 << 16, b"user\0u\0\0");
    let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
    assert_eq!(parse_startup(&mut partial), Ok(None));
    let mut huge = BytesMut::from(&20_000u32.to_be_bytes()[..]);
    assert_eq!(
        parse_startup(&mut huge),
        Err(WireError::StartupLength(20_000))
    );
    let mut tiny = BytesMut::from(&4u32.to_be_bytes()[..]);
    assert_eq!(parse_startup(&mut tiny), Err(WireError::StartupLength(4)));
    assert_eq!(
        parse_startup(&mut packet(2 << 16, b"")),
        Err(WireError::Version(2, 0))
    );
    assert_eq!(
        parse_startup(&mut packet(3 << 16, b"user\0unterminated")),
        Err(WireError::Malformed("StartupMessage"))
    );
    assert_eq!(
        parse_startup(&mut packet(80_877_102, b"\0\0")),
        Err(WireError::Malformed("CancelRequest"))
    );
}

#[test]
fn frames_split_exactly_and_keep_their_raw_bytes() {
    let mut buf = BytesMut::new();
    put_frame(&mut buf, b'Q', |b| b.put_slice(b"select 1\0"));
    put_frame(&mut buf, b'X', |_| {});
    buf.put_u8(b'Q'); // the start of a third frame
    let q = parse(&mut buf, MAX_FRAME_LEN).expect("ok").expect("frame");
    assert_eq!(q.tag, b'Q');
    assert_eq!(q.body(), b"select 1\0");
    assert_eq!(&q.raw[..5], &[b'Q', 0, 0, 0, 13]);
    let x = parse(&mut buf, MAX_FRAME_LEN).expect("ok").expect("frame");
    assert_eq!((x.tag, x.body()), (b'X', &b""[..]));
    assert_eq!(parse(&mut buf, MAX_FRAME_LEN), Ok(None));
    assert_eq!(&buf[..], b"Q");
}

#[test]
fn frame_lengths_are_checked_before_the_body_is_awaited() {
    let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
    assert!(matches!(
        parse(&mut short, MAX_FRAME_LEN),
        Err(WireError::FrameLength { len: 3, .. })
    ));
    let mut big = BytesMut::from(&[b'D', 0x40, 0, 0, 0][..]);
    assert!(matches!(
        parse(&mut big, MAX_FRAME_LEN),
        Err(WireError::FrameLength { tag: 'D', .. })
    ));
    let mut over_limit = BytesMut::from(&[b'p', 0, 0, 1, 0][..]);
    assert!(parse(&mut over_limit, 100).is_err());
    let h = header(&[b'D', 0, 0, 0, 10, 1], MAX_FRAME_LEN).expect("ok");
    assert_eq!(
        h,
        Some(Header {
            tag: b'D',
            body_len: 6
        })
    );
}

#[test]
fn error_responses_carry_severity_code_message_and_hint() {
    let mut out = BytesMut::new();
    error_response(
        &mut out,
        "FATAL",
        "28P01",
        "bad token",
        "run drawbridge login",
    );
    let f = parse(&mut out, MAX_FRAME_LEN).expect("ok").expect("frame");
    assert_eq!(f.tag, b'E');
    assert_eq!(
        f.body(),
        b"SFATAL\0VFATAL\0C28P01\0Mbad token\0Hrun drawbridge login\0\0"
    );
    assert_eq!(error_message(f.body()), "FATAL 28P01: bad token");
    assert_eq!(error_fields(b"Mx\0\0trailing").len(), 1);
}

#[test]
fn small_backend_messages_have_the_documented_bytes() {
    let mut out = BytesMut::new();
    auth_cleartext(&mut out);
    auth_ok(&mut out);
    backend_key_data(&mut out, 1, 2);
    negotiate_version(&mut out, &["_pq_.x".to_string()]);
    assert_eq!(
        &out[..],
        b"R\0\0\0\x08\0\0\0\x03R\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x01\0\0\0\x02\
          v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0"
    );
}

#[test]
fn password_messages_need_their_terminator() {
    let mut out = BytesMut::new();
    put_frame(&mut out, b'p', |b| b.put_slice(b"tok\0"));
    let f = parse(&mut out, 1000).expect("ok").expect("frame");
    assert_eq!(password(&f), Ok("tok".to_string()));
    let mut bad = BytesMut::new();
    put_frame(&mut bad, b'p', |b| b.put_slice(b"tok"));
    let f = parse(&mut bad, 1000).expect("ok").expect("frame");
    assert!(password(&f).is_err());
    assert_eq!(cstr(b"ab\0rest"), Some(("ab", &b"rest"[..])));
}
