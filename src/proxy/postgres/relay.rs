//! After login: frames pass both ways as bytes, not re-encoded, so everything
//! the protocol carries works (COPY, pipelining, FunctionCall, NOTIFY, …).
//!
//! Each read is scanned for frame boundaries and forwarded with one write: a
//! batch per read, never one flush per message, and never a whole result in
//! memory (a large frame streams through as it arrives). Only the frames the
//! audit tap records are held whole, up to [`TAP_LIMIT`]: Query, Parse, Bind,
//! Execute and FunctionCall from the client, CommandComplete and ErrorResponse
//! from the target. They go to the session recording as notes; a recording
//! failure ends the session (fail closed). Describe, Close and the target's
//! ParameterDescription are read too, so Bind notes can mask and decode values
//! (see `parameters`). Sync, ReadyForQuery and the COPY IN
//! hand-overs are watched (not recorded) to know when the target is working on
//! something, which the idle timeout does not count as idleness.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Stream;
use super::parameters::{ParameterPolicy, Statements};
use super::wire::{self, MAX_FRAME_LEN, WireError};
use crate::proxy::relay_runtimes;
use crate::recording::RecordingError;
use crate::session::{Activity, EndReason, SessionHandle};

/// Bigger tapped frames pass unrecorded (with a note saying so), so one huge
/// statement cannot make the gateway hold a huge buffer.
pub const TAP_LIMIT: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// Bytes gathered from ready reads before they are written on.
const BATCH_LIMIT: usize = 256 * 1024;
/// Reads this big come from a stream (COPY, a large result: PostgreSQL sends
/// its 8 KiB buffer whenever it fills), not from a request or a reply.
const STREAMED_READ: usize = 8 * 1024;
const CLIENT_CLOSED: &str = "client disconnected";

/// One side of the relay: its stream and bytes already read from it.
pub struct Ends {
    pub stream: Stream,
    pub pending: BytesMut,
}

/// Why the relay stopped.
enum End {
    /// The session was ended (grant expiry, revoke, kill, shutdown).
    Ended(String),
    Recording(RecordingError),
    Closed(String),
}

/// Frame boundaries in a byte stream: which prefix of the input can go now.
#[derive(Default)]
struct Scanner {
    /// Body bytes of the current (untapped) frame still to pass.
    remaining: usize,
}

#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Recording(#[from] RecordingError),
}

impl Scanner {
    /// Returns how many bytes of `input` to forward; whole tapped frames are given
    /// to `tap` first. Stops before a tapped frame that is not complete yet.
    fn scan(
        &mut self,
        input: &[u8],
        tapped: &[u8],
        mut tap: impl FnMut(u8, Result<&[u8], usize>) -> Result<(), RecordingError>,
    ) -> Result<usize, ScanError> {
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len() - pos);
                pos += n;
                self.remaining -= n;
                if self.remaining > 0 {
                    return Ok(pos);
                }
            }
            let Some(h) = wire::header(&input[pos..], MAX_FRAME_LEN)? else {
                return Ok(pos);
            };
            if tapped.contains(&h.tag) && h.body_len <= TAP_LIMIT {
                if input.len() - pos < 5 + h.body_len {
                    return Ok(pos);
                }
                tap(h.tag, Ok(&input[pos + 5..pos + 5 + h.body_len]))?;
                pos += 5 + h.body_len;
            } else {
                if tapped.contains(&h.tag) {
                    tap(h.tag, Err(h.body_len))?;
                }
                pos += 5;
                self.remaining = h.body_len;
            }
        }
    }
}

/// What the tap writes, the clock for statement durations, and how many
/// requests (Query, FunctionCall, Sync) still wait for their ReadyForQuery.
struct Tap<'a> {
    session: &'a SessionHandle,
    started: Mutex<Option<Instant>>,
    waiting: AtomicU32,
    activity: &'a Activity,
    /// The client sent Terminate: whichever socket closes first after it, the
    /// client is the one that ended the session.
    terminated: AtomicBool,
    /// Both directions: the client's Parse, Describe and Bind, the target's
    /// ParameterDescription and ReadyForQuery.
    statements: Mutex<Statements>,
    parameters: &'a ParameterPolicy,
}

impl Tap<'_> {
    fn statements(&self) -> std::sync::MutexGuard<'_, Statements> {
        self.statements.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, text: String) -> Result<(), RecordingError> {
        self.session.record(|r| r.note(text))
    }

    fn start(&self) {
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn client(&self, tag: u8, body: Result<&[u8], usize>) -> Result<(), RecordingError> {
        match tag {
            b'Q' | b'F' | b'S' => {
                self.statements().requested();
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.activity.set_busy(true);
            }
            // CopyDone, CopyFail: the target works on the COPY again.
            b'c' | b'f' => self.activity.set_busy(true),
            b'X' => self.terminated.store(true, Ordering::Relaxed),
            _ => {}
        }
        let body = match body {
            Ok(body) => body,
            Err(len) => {
                self.start();
                return self.note(format!(
                    "{} of {len} bytes (too large to record)",
                    tag as char
                ));
            }
        };
        match tag {
            b'Q' => {
                self.start();
                self.note(format!("query: {}", text(body).0))
            }
            b'P' => {
                self.statements().parsed(body, self.parameters);
                let (name, rest) = text(body);
                self.note(format!("parse {name:?}: {}", text(rest).0))
            }
            b'B' => self.note(self.statements().bind_note(body, self.parameters)),
            b'D' => {
                self.statements().describing(body);
                Ok(())
            }
            b'C' => {
                self.statements().closed(body);
                Ok(())
            }
            b'E' => {
                self.start();
                self.note(format!("execute {:?}", text(body).0))
            }
            b'F' => {
                self.start();
                let oid = body
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.note(format!("function call oid {oid}"))
            }
            _ => Ok(()),
        }
    }

    fn target_side(&self, tag: u8, body: Result<&[u8], usize>) -> Result<(), RecordingError> {
        if tag == b'G' {
            // CopyInResponse: now the target waits for the client, which may idle.
            self.activity.set_busy(false);
            return Ok(());
        }
        if tag == b'Z' {
            self.statements().ready();
            let before = self.waiting.fetch_sub(1, Ordering::Relaxed);
            if before <= 1 {
                // 0 too: a ReadyForQuery nobody asked for (none exists) must not wrap.
                self.waiting.store(0, Ordering::Relaxed);
                self.activity.set_busy(false);
            }
            return Ok(());
        }
        let Ok(body) = body else { return Ok(()) };
        if tag == b't' {
            self.statements().described(body);
            return Ok(());
        }
        let took = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        match tag {
            b'C' => {
                let tag = wire::cstr(body).map_or("", |(t, _)| t);
                self.note(format!("complete: {tag} ({took:.1} ms)"))
            }
            b'E' => self.note(format!("error: {}", wire::error_message(body))),
            _ => Ok(()),
        }
    }
}

/// A NUL-terminated string and what follows; empty when malformed (the tap
/// records what it can and never stops the relay over it).
fn text(body: &[u8]) -> (&str, &[u8]) {
    wire::cstr(body).unwrap_or(("", &[]))
}

/// Relays until either side closes or the session must end; returns the reason
/// for the recording's seal.
pub async fn run(
    downstream: Ends,
    upstream: Ends,
    session: &SessionHandle,
    activity: &Activity,
    parameters: &ParameterPolicy,
) -> String {
    let _relaying = relay_runtimes::relaying();
    let (mut down_read, mut down_write) = tokio::io::split(downstream.stream);
    let (mut up_read, mut up_write) = tokio::io::split(upstream.stream);
    let tap = Tap {
        session,
        started: Mutex::new(None),
        waiting: AtomicU32::new(0),
        activity,
        terminated: AtomicBool::new(false),
        statements: Mutex::default(),
        parameters,
    };
    let mut to_client = Pump::new(activity, session);
    let mut from_client_pump = Pump::new(activity, session);
    let mut live = session.live();
    let end = {
        let from_client = from_client_pump.run(
            &mut down_read,
            &mut up_write,
            downstream.pending,
            b"QPBDCEFScfX",
            |t, b| tap.client(t, b),
            CLIENT_CLOSED,
        );
        let from_target = to_client.run(
            &mut up_read,
            &mut down_write,
            upstream.pending,
            b"CEGZt",
            |t, b| tap.target_side(t, b),
            "the target closed the connection",
        );
        // All three are cancel-safe for our purpose: the losers are dropped, and
        // `to_client` remembers whether a write to the client was cut mid-frame.
        tokio::select! {
            biased;
            reason = live.ended() => End::Ended(reason.to_string()),
            end = from_client => end,
            end = from_target => end,
        }
    };
    let reason = match end {
        End::Ended(reason) => reason,
        End::Recording(e) => {
            tracing::error!(session = session.id(), error = %e, "recording failed; ending the session");
            EndReason::RecordingFailed.to_string()
        }
        // After a Terminate the target may close before the client does.
        End::Closed(_) if tap.terminated.load(Ordering::Relaxed) => return CLIENT_CLOSED.into(),
        End::Closed(reason) => return reason,
    };
    // Tell the client why, unless that would land inside a half-sent frame.
    if to_client.at_boundary() {
        let mut out = BytesMut::new();
        // 57P01 admin_shutdown: what PostgreSQL itself sends when a session is ended.
        wire::error_response(
            &mut out,
            "FATAL",
            "57P01",
            &format!("drawbridge: {reason}"),
            "",
        );
        let tell = async {
            down_write.write_all(&out).await?;
            down_write.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), tell).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), down_write.shutdown()).await;
    reason
}

/// One direction of the relay.
struct Pump<'a> {
    scanner: Scanner,
    /// A write was started and not finished (the future was dropped mid-write).
    writing: bool,
    /// Touched on every read, for the idle timeout.
    activity: &'a Activity,
    /// Asked for recording room before every read.
    session: &'a SessionHandle,
}

impl<'a> Pump<'a> {
    fn new(activity: &'a Activity, session: &'a SessionHandle) -> Self {
        Pump {
            scanner: Scanner::default(),
            writing: false,
            activity,
            session,
        }
    }

    fn at_boundary(&self) -> bool {
        !self.writing && self.scanner.remaining == 0
    }

    async fn run(
        &mut self,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
        mut buf: BytesMut,
        tapped: &[u8],
        mut tap: impl FnMut(u8, Result<&[u8], usize>) -> Result<(), RecordingError>,
        closed: &str,
    ) -> End {
        let mut at_end = false;
        loop {
            let n = match self.scanner.scan(&buf, tapped, &mut tap) {
                Ok(n) => n,
                Err(ScanError::Recording(e)) => return End::Recording(e),
                Err(ScanError::Wire(e)) => return End::Closed(format!("protocol error: {e}")),
            };
            if n > 0 {
                self.writing = true;
                let written = async {
                    to.write_all(&buf[..n]).await?;
                    to.flush().await
                };
                if let Err(e) = written.await {
                    return End::Closed(format!("write failed: {e}"));
                }
                self.writing = false;
                buf.advance(n);
            }
            if at_end {
                return End::Closed(closed.to_string());
            }
            // A backlogged recording slows the reads (and so the peer) down.
            if let Err(e) = self.session.recording_room().await {
                return End::Recording(e);
            }
            buf.reserve(READ_CHUNK);
            let held = buf.len();
            match from.read_buf(&mut buf).await {
                Ok(0) => return End::Closed(closed.to_string()),
                Ok(_) => self.activity.touch(),
                Err(e) => return End::Closed(format!("{closed}: {e}")),
            }
            match gather(from, &mut buf).await {
                Ok(open) => at_end = !open,
                Err(e) => return End::Closed(format!("{closed}: {e}")),
            }
            // Busy polling catches the reply of an exchange. A stream's next
            // bytes come without it, and spinning for them takes the core from
            // the process producing them (a 256 MiB COPY ran at 0.74 of direct
            // with polling in one run, 0.93 without).
            if buf.len() - held < STREAMED_READ {
                relay_runtimes::relayed();
            }
        }
    }
}

/// Reads what `from` has ready without waiting, until [`BATCH_LIMIT`] bytes
/// are buffered. A TLS stream hands out one record (at most 16 KiB) per read;
/// gathering what already arrived makes fewer, bigger writes (and TLS records)
/// toward the other side. Returns false at the end of the stream.
async fn gather(from: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<bool> {
    while buf.len() < BATCH_LIMIT {
        buf.reserve(READ_CHUNK);
        // Polled once: `read_buf` is cancel-safe, a pending read took no bytes.
        let mut read = std::pin::pin!(from.read_buf(buf));
        match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
            Poll::Pending => return Ok(true),
            Poll::Ready(Ok(0)) => return Ok(false),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
