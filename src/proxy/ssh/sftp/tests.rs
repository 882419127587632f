//! Wire tests: SFTP packets as OpenSSH's client and server write them, fed in
//! arbitrary chunkings.

use super::*;

fn string(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn packet(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(body);
    let mut v = (p.len() as u32).to_be_bytes().to_vec();
    v.extend(p);
    v
}

fn open(id: u32, path: &str, flags: u32) -> Vec<u8> {
    let mut body = string(path.as_bytes());
    body.extend_from_slice(&flags.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // attrs: no flags
    packet(3, id, &body)
}

fn handle(id: u32, h: &[u8]) -> Vec<u8> {
    packet(102, id, &string(h))
}

fn status(id: u32, code: u32) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend(string(b"msg"));
    body.extend(string(b""));
    packet(101, id, &body)
}

fn write(id: u32, h: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = string(h);
    body.extend_from_slice(&0u64.to_be_bytes());
    body.extend(string(data));
    packet(6, id, &body)
}

/// Feeds `bytes` in chunks of `chunk` bytes; returns every line.
fn feed(tap: &mut SftpTap, requests: bool, bytes: &[u8], chunk: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for c in bytes.chunks(chunk) {
        let out = if requests {
            tap.requests(c)
        } else {
            tap.responses(c)
        };
        lines.extend(out.expect("parses"));
    }
    lines
}

#[test]
fn an_upload_is_one_open_and_one_close_with_the_byte_count_whatever_the_chunking() {
    for chunk in [1, 3, 7, 4096, 1 << 20] {
        let mut tap = SftpTap::default();
        let mut req = open(1, "/tmp/up.bin", 2 | 8 | 0x10);
        let mut resp = handle(1, b"h0");
        let content = vec![b'x'; 300_000];
        for (i, part) in content.chunks(32 * 1024).enumerate() {
            let id = 2 + i as u32;
            req.extend(write(id, b"h0", part));
            resp.extend(status(id, 0));
        }
        req.extend(packet(4, 99, &string(b"h0")));
        resp.extend(status(99, 0));
        assert!(feed(&mut tap, true, &req, chunk).is_empty());
        let lines = feed(&mut tap, false, &resp, chunk);
        assert_eq!(
            lines,
            [
                "sftp open /tmp/up.bin write",
                "sftp close /tmp/up.bin wrote 300000 bytes"
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_download_counts_the_data_returned() {
    let mut tap = SftpTap::default();
    let mut req = open(1, "/etc/motd", 1);
    req.extend(packet(
        5,
        2,
        &[string(b"h").as_slice(), &[0; 8], &100u32.to_be_bytes()].concat(),
    ));
    req.extend(packet(4, 3, &string(b"h")));
    feed(&mut tap, true, &req, 5);
    let mut resp = handle(1, b"h");
    resp.extend(packet(103, 2, &string(&[7; 42])));
    resp.extend(status(3, 0));
    assert_eq!(
        feed(&mut tap, false, &resp, 5),
        [
            "sftp open /etc/motd read",
            "sftp close /etc/motd read 42 bytes"
        ]
    );
}

#[test]
fn path_operations_are_described_with_their_outcome() {
    let mut tap = SftpTap::default();
    let mut req = packet(
        14,
        1,
        &[string(b"/tmp/d"), 0u32.to_be_bytes().to_vec()].concat(),
    );
    req.extend(packet(
        18,
        2,
        &[string(b"/tmp/a"), string(b"/tmp/b")].concat(),
    ));
    req.extend(packet(13, 3, &string(b"/etc/shadow")));
    req.extend(packet(15, 4, &string(b"/tmp/d")));
    let posix = [
        string(b"posix-rename@openssh.com"),
        string(b"/x"),
        string(b"/y"),
    ]
    .concat();
    req.extend(packet(200, 5, &posix));
    feed(&mut tap, true, &req, 64);
    let resp = [
        status(1, 0),
        status(2, 0),
        status(3, 3),
        status(4, 0),
        status(5, 0),
    ]
    .concat();
    assert_eq!(
        feed(&mut tap, false, &resp, 64),
        [
            "sftp mkdir /tmp/d",
            "sftp rename /tmp/a /tmp/b",
            "sftp remove /etc/shadow failed: permission denied",
            "sftp rmdir /tmp/d",
            "sftp rename /x /y",
        ]
    );
}

#[test]
fn a_failed_write_is_not_counted_and_does_not_mark_other_lines() {
    let mut tap = SftpTap::default();
    feed(&mut tap, true, &open(1, "/f", 2), 64);
    feed(&mut tap, false, &handle(1, b"h"), 64);
    feed(&mut tap, true, &write(2, b"h", b"abc"), 64);
    assert!(feed(&mut tap, false, &status(2, 4), 64).is_empty());
    assert_eq!(
        tap.finish(),
        ["sftp close /f wrote 0 bytes (channel closed)"]
    );
}

#[test]
fn contents_beyond_the_head_are_not_kept() {
    let mut tap = SftpTap::default();
    feed(&mut tap, true, &open(1, "/f", 2), 64);
    feed(&mut tap, false, &handle(1, b"h"), 64);
    feed(&mut tap, true, &write(2, b"h", &vec![1; 200_000]), 1 << 20);
    assert!(tap.requests.head.capacity() <= 2 * HEAD);
}

#[test]
fn a_stream_that_is_not_sftp_is_reported() {
    let mut tap = SftpTap::default();
    assert_eq!(
        tap.requests(b"GET / HTTP/1.1\r\n"),
        Err(TapError::TooLong(0x4745_5420))
    );
}
