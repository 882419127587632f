use super::*;

fn whole(body: &[u8]) -> Result<(usize, bool, u64), BadChunk> {
    Chunks::default().advance(body)
}

/// The same body fed `step` bytes at a time: where it ends and its data bytes.
fn in_steps(body: &[u8], step: usize) -> Result<(usize, bool, u64), BadChunk> {
    let mut chunks = Chunks::default();
    let (mut taken, mut data) = (0, 0);
    for piece in body.chunks(step) {
        let (take, done, d) = chunks.advance(piece)?;
        taken += take;
        data += d;
        if done {
            return Ok((taken, true, data));
        }
    }
    Ok((taken, false, data))
}

#[test]
fn a_chunked_body_ends_after_its_last_chunk_and_trailers_however_it_arrives() {
    let body = b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
    let end = body.len() - 4;
    for step in [1, 2, 3, 7, body.len()] {
        assert_eq!(in_steps(body, step), Ok((end, true, 31)), "step {step}");
    }
    assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true, 0)));
    assert_eq!(whole(b"A\r\n0123456789\r\n"), Ok((15, false, 10)));
}

#[test]
fn a_malformed_chunked_body_is_refused() {
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloX\r\n",
        b"\r\n",
        b"5\nhello",
        b"ffffffffffffffff\r\n",
    ] {
        assert_eq!(
            whole(bad),
            Err(BadChunk),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn only_bodiless_get_and_head_in_http11_are_taken() {
    let ok = b"GET /a?b=c HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n";
    let request = parse_request(ok).expect("taken");
    assert_eq!(
        (request.method, request.target, request.close),
        ("GET", "/a?b=c", true)
    );
    assert!(parse_request(b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").is_some());
    for not_ours in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        assert!(
            parse_request(not_ours).is_none(),
            "{:?}",
            String::from_utf8_lossy(not_ours)
        );
    }
}

fn framing_of(head: &[u8], head_request: bool) -> Option<Framing> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    parsed.parse(head).ok()?;
    framing(parsed.code?, head_request, &parsed)
}

#[test]
fn a_response_body_is_delimited_as_rfc_9112_says() {
    let cases: [(&[u8], bool, Option<Framing>); 8] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            false,
            Some(Framing::Length(12)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            true,
            Some(Framing::Empty),
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
            false,
            Some(Framing::Empty),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            Some(Framing::Chunked),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            Some(Framing::UntilClose),
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n", false, Some(Framing::UntilClose)),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false,
            None,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            false,
            None,
        ),
    ];
    for (head, head_request, expected) in cases {
        assert_eq!(
            framing_of(head, head_request),
            expected,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[tokio::test]
async fn a_rewound_connection_reads_what_was_read_ahead_first() {
    let (mut ours, theirs) = tokio::io::duplex(64);
    ours.write_all(b" world").await.expect("write");
    drop(ours);
    let mut rewound = Rewound::new(Bytes::from_static(b"hello"), theirs);
    let mut all = String::new();
    rewound.read_to_string(&mut all).await.expect("read");
    assert_eq!(all, "hello world");
}

#[test]
fn a_head_is_found_however_it_trickles_in_and_searched_once() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
    let end = head.len() - 4;
    for step in 1..head.len() {
        let mut searched = 0;
        let found = (step..=head.len())
            .step_by(step)
            .chain([head.len()])
            .find_map(|upto| head_length(&head[..upto], &mut searched));
        assert_eq!(found, Some(end), "step {step}");
        assert!(searched <= end, "step {step}: searched {searched}");
    }
    let mut searched = 0;
    assert_eq!(head_length(b"GET / HTTP/1.1\r\n", &mut searched), None);
    assert_eq!(searched, 16);
}

#[test]
fn a_response_head_is_rewritten_by_the_same_rules_as_on_hypers_path() {
    let head = b"HTTP/1.1 302 Found\r\n\
        Connection: keep-alive, X-Hop\r\n\
        X-Hop: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        Transfer-Encoding: chunked\r\n\
        Content-Length: 10\r\n\
        Location: http://10.0.0.5:8080/next?a=b\r\n\
        Set-Cookie: sid=1; Domain=10.0.0.5; Path=/\r\n\
        Set-Cookie: drawbridge_session=evil\r\n\
        X-App: kept\r\n\r\n";
    let host = HeaderValue::from_static("app.localhost:8443");
    let mut out = Vec::new();
    let response =
        rewrite_response(head, false, "http://10.0.0.5:8080", &host, &mut out).expect("rewritten");
    assert_eq!(
        (response.status, response.framing, response.reusable),
        (302, Framing::Chunked, true)
    );
    assert_eq!(
        String::from_utf8(out).expect("text"),
        "HTTP/1.1 302 Found\r\n\
         Transfer-Encoding: chunked\r\n\
         Location: https://app.localhost:8443/next?a=b\r\n\
         Set-Cookie: sid=1; Path=/\r\n\
         X-App: kept\r\n"
    );
    let mut out = Vec::new();
    let informational = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
    assert!(rewrite_response(informational, false, "http://a", &host, &mut out).is_none());
    let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n";
    let response = rewrite_response(closing, false, "http://a", &host, &mut out).expect("ok");
    assert!(!response.reusable);
    let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n";
    let response = rewrite_response(http10, false, "http://a", &host, &mut out).expect("ok");
    assert!(!response.reusable);
}

#[tokio::test]
async fn idle_connections_are_kept_up_to_the_cap_and_handed_out_newest_first() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let idle = IdleConnections::new(1);
    let mut ports = Vec::new();
    for _ in 0..MAX_IDLE + 6 {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        ports.push(stream.local_addr().expect("port").port());
        idle.put(UpstreamStream::Plain(stream));
    }
    let port_of = |s: &UpstreamStream| match s {
        UpstreamStream::Plain(tcp) => tcp.local_addr().expect("port").port(),
        UpstreamStream::Tls(_) => unreachable!("plain only here"),
    };
    let newest = idle.take().expect("one");
    assert_eq!(
        port_of(&newest),
        ports[MAX_IDLE - 1],
        "the extras were not kept"
    );
    let mut left = 1;
    while idle.take().is_some() {
        left += 1;
    }
    assert_eq!(left, MAX_IDLE);
}
