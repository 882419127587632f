//! The HTTP/1.1 relay: the common request to an app (a `GET` or `HEAD` with no
//! body, from a caller with a live session) is served here without hyper. Its
//! head is parsed once, rewritten by the same header rules as every other
//! request, written to a kept-alive upstream connection, and the response head
//! is rewritten the same way while the body passes as it came (by length,
//! chunked or until close), never buffered whole.
//!
//! Why: on two cores hyper's server and pooled client, each building a header
//! map and handing the request between tasks, cost the gateway 1.5× nginx's
//! user-space CPU per request (11–12 µs against 7–8). Everything else (the API
//! and login pages, bodies, websockets, refusals, error pages, HTTP/2) goes to
//! hyper: on the first request this relay does not take, the connection is
//! handed over with what has been read of it and stays with hyper from then on.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::exchange::{Direction, Exchange};
use super::headers::{self, Forwarding};
use super::sessions::HttpSession;
use super::tls::UpstreamStream;
use super::upstream::{self, Caller, HttpConnection, IDLE_TIMEOUT};
use super::{CALLBACK_PATH, HttpFront};
use crate::proxy::relay_runtimes;

/// The most a request or response head may take; a longer one goes to hyper,
/// which refuses it.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Idle connections kept per app and relay runtime (nginx's `keepalive 64`).
const MAX_IDLE: usize = 64;
/// Room made before each read, so a read is never a sliver of what is waiting.
const READ_ROOM: usize = 16 * 1024;

/// How a connection left the relay.
pub enum Served {
    /// Closed, or to be closed: the client left, was idle past the header
    /// timeout, or the exchange cannot continue.
    Closed,
    /// The next request is not the relay's: hyper serves the connection from
    /// here, starting with these bytes already read from it.
    HandOff(Bytes),
}

/// What became of one request.
enum Relayed {
    /// Answered; the connection stays open for the next one.
    KeepAlive,
    /// Answered (or abandoned halfway); the connection must close.
    Close,
    /// Not taken: nothing was sent to the client.
    NotMine,
}

/// Serves requests on `client` until one is not the relay's, the client
/// leaves, or it sends no complete head within `header_timeout`.
pub async fn serve<S>(
    front: &HttpFront,
    client: &mut S,
    forwarding: &Forwarding,
    header_timeout: Duration,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut scratch = Scratch::default();
    let mut deadline = std::pin::pin!(tokio::time::sleep(header_timeout));
    loop {
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + header_timeout);
        let mut searched = 0;
        let head_len = loop {
            match head_length(&buf, &mut searched) {
                Some(len) => break len,
                None if buf.len() >= MAX_HEAD => return hand_off(buf),
                None => {}
            }
            buf.reserve(READ_ROOM);
            tokio::select! {
                read = client.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
                _ = deadline.as_mut() => return Served::Closed,
            }
        };
        match relay_one(front, client, &buf[..head_len], forwarding, &mut scratch).await {
            Relayed::KeepAlive => buf.advance(head_len),
            Relayed::Close => return Served::Closed,
            Relayed::NotMine => return hand_off(buf),
        }
    }
}

/// Hyper takes the connection from here, starting with what was read of it.
fn hand_off(read: BytesMut) -> Served {
    tracing::debug!("http/1.1 connection handed to hyper");
    Served::HandOff(read.freeze())
}

/// Buffers kept across a connection's requests.
#[derive(Default)]
struct Scratch {
    /// The upstream request, then the response head on its way to the client.
    out: Vec<u8>,
    /// What was read from the upstream.
    upstream: BytesMut,
}

/// The length of the head at the start of `buf` (through its empty line).
/// `searched` is how far earlier calls for the same head looked, so a head that
/// trickles in a byte at a time is not searched again from its start each time.
fn head_length(buf: &[u8], searched: &mut usize) -> Option<usize> {
    let from = searched.saturating_sub(3);
    match memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
        Some(at) => Some(from + at + 4),
        None => {
            *searched = buf.len();
            None
        }
    }
}

/// A request the relay can take.
struct Request<'a> {
    method: &'a str,
    /// Origin form: `/path?query`.
    target: &'a str,
    headers: HeaderMap,
    /// The client asked to close after this response.
    close: bool,
}

impl Request<'_> {
    fn path_and_query(&self) -> (&str, Option<&str>) {
        match self.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target, None),
        }
    }
}

/// Parses `head`; `None` for anything but a bodiless `GET` or `HEAD` in
/// HTTP/1.1 without an upgrade or expectation.
fn parse_request(head: &[u8]) -> Option<Request<'_>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(_) = parsed.parse(head).ok()? else {
        return None;
    };
    let method = parsed.method.filter(|m| matches!(*m, "GET" | "HEAD"))?;
    let target = parsed.path.filter(|t| t.starts_with('/'))?;
    if parsed.version != Some(1) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 8);
    let mut close = false;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        let has_body = name == header::CONTENT_LENGTH && value != "0";
        if has_body
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return None;
        }
        // Two hosts would leave routing and the app disagreeing: hyper refuses it.
        if name == header::HOST && headers.contains_key(header::HOST) {
            return None;
        }
        if name == header::CONNECTION {
            close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        headers.append(name, value);
    }
    Some(Request {
        method,
        target,
        headers,
        close,
    })
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

async fn relay_one<S>(
    front: &HttpFront,
    client: &mut S,
    head: &[u8],
    forwarding: &Forwarding,
    scratch: &mut Scratch,
) -> Relayed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let Some(mut request) = parse_request(head) else {
        return Relayed::NotMine;
    };
    let Some(session) = live_session(front, &request).await else {
        return Relayed::NotMine;
    };
    let conn = &session.connection;
    if conn.record_bodies.is_some() {
        return Relayed::NotMine;
    }
    let Ok(assertion) = conn.assertion() else {
        return Relayed::NotMine;
    };
    let Some(host) = request.headers.get(header::HOST).cloned() else {
        return Relayed::NotMine;
    };
    let caller = Caller {
        consumed_bearer: headers::bearer(&request.headers).is_some(),
        forwarding,
        host: &host,
    };
    upstream::rewrite_request_headers(&mut request.headers, conn, &caller, assertion, false);
    write_request(&request, &mut scratch.out);

    let Some((upstream, head_len)) = exchange_heads(conn, scratch).await else {
        return Relayed::NotMine;
    };
    let head_request = request.method == "HEAD";
    let response_head = &scratch.upstream[..head_len];
    let Some(response) = rewrite_response(
        response_head,
        head_request,
        &conn.origin,
        &host,
        &mut scratch.out,
    ) else {
        return Relayed::NotMine;
    };
    scratch.upstream.advance(head_len);
    let (path, query) = request.path_and_query();
    let line = upstream::request_line(request.method, path, query);
    let exchange = Exchange::new(session.handle.clone(), line, None, started);
    exchange.set_outcome(format!("-> {}", response.status));
    let close = request.close || response.framing == Framing::UntilClose;
    if close {
        scratch.out.extend_from_slice(b"connection: close\r\n");
    }
    scratch.out.extend_from_slice(b"\r\n");
    let delivered = relay_body(client, upstream, &response, scratch, &exchange, conn).await;
    if delivered {
        exchange.delivered();
    }
    if delivered && !close {
        Relayed::KeepAlive
    } else {
        Relayed::Close
    }
}

/// The caller's live session for the app the request names; `None` when there
/// is none to use (no token, an unknown one, no grant): hyper's path then
/// answers with the login redirect, the 401 or the refusal.
async fn live_session(front: &HttpFront, request: &Request<'_>) -> Option<Arc<HttpSession>> {
    let host = request.headers.get(header::HOST)?.to_str().ok()?;
    let target = front.target_of(host)?;
    if request.path_and_query().0 == CALLBACK_PATH {
        return None;
    }
    let identity = front.identify(&request.headers).await?;
    front
        .sessions
        .get_or_open(&identity, target, &front.upstream)
        .await
        .ok()
}

fn write_request(request: &Request<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &request.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends the request in `scratch.out` and reads the response head into
/// `scratch.upstream`, on an idle connection (once more on a fresh one if the
/// app had closed it) or a new one. Returns the connection and the head's
/// length; the bytes after it are the body's.
///
/// A timeout or a failure returns `None`: hyper's path then tries again and
/// answers 502 or 504 with the reason (the request has no body to resend).
async fn exchange_heads(
    conn: &HttpConnection,
    scratch: &mut Scratch,
) -> Option<(UpstreamStream, usize)> {
    let exchanged = tokio::time::timeout(conn.response_timeout, async {
        if let Some(mut idle) = conn.idle.take()
            && let Ok(head_len) = send_and_read_head(&mut idle, scratch).await
        {
            return Some((idle, head_len));
        }
        let mut fresh = conn.connector.connect(conn.origin_uri.clone()).await.ok()?;
        let head_len = send_and_read_head(&mut fresh, scratch).await.ok()?;
        Some((fresh, head_len))
    })
    .await;
    exchanged.ok()?
}

async fn send_and_read_head(
    upstream: &mut UpstreamStream,
    scratch: &mut Scratch,
) -> io::Result<usize> {
    upstream.write_all(&scratch.out).await?;
    upstream.flush().await?;
    scratch.upstream.clear();
    let mut searched = 0;
    loop {
        scratch.upstream.reserve(READ_ROOM);
        if let Some(len) = head_length(&scratch.upstream, &mut searched) {
            return Ok(len);
        }
        if scratch.upstream.len() >= MAX_HEAD {
            return Err(io::ErrorKind::InvalidData.into());
        }
        if upstream.read_buf(&mut scratch.upstream).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// None (`HEAD`, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the app closes the connection.
    UntilClose,
}

struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The app's connection may take another request afterwards.
    reusable: bool,
}

/// Parses the app's response head (from `origin`) and writes the client's into
/// `out`: status line, hop-by-hop headers dropped, redirects to the app's own
/// address turned to the gateway's, cookies scoped to the app's public host.
/// `None` for an informational (1xx) or malformed response.
fn rewrite_response(
    head: &[u8],
    head_request: bool,
    origin: &str,
    public_host: &HeaderValue,
    out: &mut Vec<u8>,
) -> Option<ResponseHead> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(_) = parsed.parse(head).ok()? else {
        return None;
    };
    let status = parsed.code.filter(|c| *c >= 200)?;
    let http10 = parsed.version == Some(0);
    let connection: Vec<&[u8]> = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect();
    let said = |word: &str| {
        connection
            .iter()
            .any(|t| t.eq_ignore_ascii_case(word.as_bytes()))
    };
    let keep_alive = if http10 {
        said("keep-alive")
    } else {
        !said("close")
    };
    let framing = framing(status, head_request, &parsed)?;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(parsed.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in parsed.headers.iter() {
        let chunked_framing =
            framing == Framing::Chunked && h.name.eq_ignore_ascii_case("transfer-encoding");
        let named_by_connection = connection
            .iter()
            .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()));
        // With chunked framing a length is wrong (RFC 9112 §6.3), so it goes.
        let stale_length =
            framing == Framing::Chunked && h.name.eq_ignore_ascii_case("content-length");
        if (headers::is_hop_by_hop(h.name) && !chunked_framing)
            || named_by_connection
            || stale_length
        {
            continue;
        }
        // Most values pass as they are; only these two are rewritten.
        let value: Cow<'_, [u8]> = if h.name.eq_ignore_ascii_case("location") {
            let location = std::str::from_utf8(h.value).ok();
            location
                .and_then(|l| upstream::public_location(l, origin, public_host))
                .map_or(Cow::Borrowed(h.value), |l| Cow::Owned(l.into_bytes()))
        } else if h.name.eq_ignore_ascii_case("set-cookie") {
            let cookie = HeaderValue::from_bytes(h.value).ok()?;
            match headers::scoped_cookie(&cookie) {
                Some(scoped) => Cow::Owned(scoped.as_bytes().to_vec()),
                None => continue,
            }
        } else {
            Cow::Borrowed(h.value)
        };
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    Some(ResponseHead {
        status,
        framing,
        reusable: keep_alive && framing != Framing::UntilClose,
    })
}

/// RFC 9112 §6.3: how the body after this head ends.
fn framing(
    status: u16,
    head_request: bool,
    parsed: &httparse::Response<'_, '_>,
) -> Option<Framing> {
    if head_request || status == 204 || status == 304 {
        return Some(Framing::Empty);
    }
    let mut transfer_coding = None;
    let mut length = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_coding = tokens(h.value).last();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value: u64 = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
            // Differing lengths are a smuggling attempt, not a response.
            if length.is_some_and(|l| l != value) {
                return None;
            }
            length = Some(value);
        }
    }
    Some(match (transfer_coding, length) {
        (Some(coding), _) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), _) => Framing::UntilClose,
        (None, Some(length)) => Framing::Length(length),
        (None, None) => Framing::UntilClose,
    })
}

/// Writes the head in `scratch.out` and the body to the client as it comes.
/// Returns whether the whole response was delivered; the app's connection goes
/// back to the idle ones when it was and nothing unread is left on it.
async fn relay_body<S>(
    client: &mut S,
    mut upstream: UpstreamStream,
    response: &ResponseHead,
    scratch: &mut Scratch,
    exchange: &Exchange,
    conn: &HttpConnection,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    let mut body = Body::new(response.framing);
    let mut head_sent = false;
    loop {
        let Some((take, done)) = body.advance(&scratch.upstream) else {
            return false;
        };
        exchange.count(Direction::Out, body.take_data());
        let chunk = &scratch.upstream[..take];
        let written = if head_sent {
            client.write_all(chunk).await
        } else {
            // The head and the first of the body in one write.
            scratch.out.extend_from_slice(chunk);
            head_sent = true;
            client.write_all(&scratch.out).await
        };
        if written.is_err() {
            return false;
        }
        scratch.upstream.advance(take);
        if done {
            break;
        }
        scratch.upstream.clear();
        scratch.upstream.reserve(READ_ROOM);
        match upstream.read_buf(&mut scratch.upstream).await {
            Ok(0) if response.framing == Framing::UntilClose => break,
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    if client.flush().await.is_err() {
        return false;
    }
    if response.reusable && scratch.upstream.is_empty() {
        conn.idle.put(upstream);
    }
    true
}

/// Tracks a body's framing over the bytes that pass, without decoding it.
struct Body {
    framing: Framing,
    /// Bytes left of a `Length` body.
    left: u64,
    chunks: Chunks,
    /// Body bytes seen and not yet counted (chunk data only, for chunked).
    data: u64,
}

impl Body {
    fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            framing,
            left,
            chunks: Chunks::default(),
            data: 0,
        }
    }

    /// How much of `bytes` belongs to the body and whether it ends there;
    /// `None` for a malformed chunked body.
    fn advance(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        match self.framing {
            Framing::Empty => Some((0, true)),
            Framing::Length(_) => {
                let take = self.left.min(bytes.len() as u64);
                self.left -= take;
                self.data += take;
                Some((take as usize, self.left == 0))
            }
            Framing::UntilClose => {
                self.data += bytes.len() as u64;
                Some((bytes.len(), false))
            }
            Framing::Chunked => {
                let (take, done, data) = self.chunks.advance(bytes).ok()?;
                self.data += data;
                Some((take, done))
            }
        }
    }

    fn take_data(&mut self) -> u64 {
        std::mem::take(&mut self.data)
    }
}

/// Where a chunked body ends (RFC 9112 §7.1): sizes, data, trailers.
#[derive(Default, Debug)]
struct Chunks {
    state: ChunkState,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a size line; `digits` read so far.
    #[default]
    SizeStart,
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, up to the line's end.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    FinalLf,
    Done,
}

/// A chunked body that does not parse.
#[derive(Debug, PartialEq, Eq)]
struct BadChunk;

impl Chunks {
    /// Advances over `bytes`: how many belong to the body, whether it ended
    /// within them, and how many of those were chunk data.
    fn advance(&mut self, bytes: &[u8]) -> Result<(usize, bool, u64), BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        let mut data = 0;
        while i < bytes.len() && self.state != Done {
            if let Data { left } = self.state {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                data += take;
                self.state = if take == left {
                    DataCr
                } else {
                    Data { left: left - take }
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (SizeStart, _) => match hex(b) {
                    Some(d) => Size {
                        size: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(BadChunk),
                },
                (Size { size, digits }, _) if hex(b).is_some() => {
                    if digits >= 15 {
                        return Err(BadChunk);
                    }
                    Size {
                        size: size * 16 + u64::from(hex(b).unwrap_or_default()),
                        digits: digits + 1,
                    }
                }
                (Size { size, .. }, b';' | b' ' | b'\t') => Extension { size },
                (Size { size, .. } | Extension { size }, b'\r') => SizeLf { size },
                (Extension { size }, _) => Extension { size },
                (SizeLf { size: 0 }, b'\n') => TrailerStart,
                (SizeLf { size }, b'\n') => Data { left: size },
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart | Trailer, b'\n') => TrailerStart,
                (TrailerStart | Trailer, _) => Trailer,
                (FinalLf, b'\n') => Done,
                _ => return Err(BadChunk),
            };
        }
        Ok((i, self.state == Done, data))
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Idle keep-alive connections to one app, a list per relay runtime so a
/// connection is only used by the thread whose event loop it is registered with.
pub struct IdleConnections {
    lists: Vec<Mutex<Vec<(UpstreamStream, Instant)>>>,
}

impl IdleConnections {
    pub fn new(runtimes: usize) -> Self {
        IdleConnections {
            lists: (0..runtimes.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn list(&self) -> &Mutex<Vec<(UpstreamStream, Instant)>> {
        let i = relay_runtimes::current().unwrap_or(0);
        &self.lists[i % self.lists.len()]
    }

    /// The most recently used connection idle for less than [`IDLE_TIMEOUT`].
    fn take(&self) -> Option<UpstreamStream> {
        let mut list = self.list().lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
        list.pop().map(|(stream, _)| stream)
    }

    /// Keeps `stream` for a later request, unless [`MAX_IDLE`] are kept
    /// already (a burst of clients must not leave as many idle connections).
    fn put(&self, stream: UpstreamStream) {
        let mut list = self.list().lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < MAX_IDLE {
            list.push((stream, Instant::now()));
        }
    }
}

/// A connection some bytes of which were already read: they are read again
/// first. Lets hyper take over a connection mid-way.
pub struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewound { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
