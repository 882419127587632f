//! One request through the proxy as its recording sees it. Both bodies are
//! counted as they stream (what actually passed, chunked or not, rather than
//! what `Content-Length` claims); with body recording on, the first bytes of
//! each are recorded as `input`/`output` data on a channel of their own; and one
//! note is written once the response has been delivered or abandoned.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};

use crate::recording::{RecordSink, RecordingError};
use crate::session::{EndReason, SessionHandle};

/// Queues events for `handle`'s recording; a recording that cannot keep up ends
/// the session (fail closed).
pub fn record(
    handle: &SessionHandle,
    write: impl FnOnce(&mut RecordSink<'_>) -> Result<(), RecordingError>,
) {
    if let Err(e) = handle.record(write)
        && !handle.is_ended()
    {
        tracing::error!(session = handle.id(), error = %e, "recording failed; ending the session");
        handle.end(EndReason::RecordingFailed);
    }
}

/// Which way a body flows.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Client → app (the request body).
    In,
    /// App → client (the response body).
    Out,
}

/// Body bytes to record, per request: the channel and the most of each body.
#[derive(Clone, Copy)]
pub struct BodyCapture {
    pub channel: u32,
    pub limit: u64,
}

/// Shared by the request and response bodies; writes the note when the last
/// of them is dropped.
pub struct Exchange {
    handle: SessionHandle,
    /// `GET /path?query` with sensitive parameters masked.
    request_line: String,
    started: Instant,
    capture: Option<BodyCapture>,
    /// `200`, or `502 (why)`; unset when the client went away first.
    outcome: OnceLock<String>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The response body reached its end (not abandoned halfway).
    delivered: AtomicBool,
}

impl Exchange {
    pub fn new(
        handle: SessionHandle,
        request_line: String,
        capture: Option<BodyCapture>,
        started: Instant,
    ) -> Arc<Exchange> {
        Arc::new(Exchange {
            handle,
            request_line,
            started,
            capture,
            outcome: OnceLock::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            delivered: AtomicBool::new(false),
        })
    }

    /// The status the client gets, and why when the gateway answered itself.
    pub fn set_outcome(&self, outcome: String) {
        let _ = self.outcome.set(outcome);
    }

    /// Marks a response without a body to stream (an upgrade, an error page) as
    /// delivered.
    pub fn delivered(&self) {
        self.delivered.store(true, Ordering::Relaxed);
    }

    /// Counts `len` body bytes; the count before them.
    pub fn count(&self, direction: Direction, len: u64) -> u64 {
        self.counter(direction).fetch_add(len, Ordering::Relaxed)
    }

    fn counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::In => &self.bytes_in,
            Direction::Out => &self.bytes_out,
        }
    }

    /// Counts `data` and records what of it falls under the capture limit;
    /// notes the body as truncated when it first crosses the limit.
    fn passed(&self, direction: Direction, data: &bytes::Bytes) {
        let len = data.len() as u64;
        let before = self.count(direction, len);
        let Some(capture) = self.capture else { return };
        if before >= capture.limit {
            return;
        }
        let take = (capture.limit - before).min(len) as usize;
        let channel = capture.channel;
        record(&self.handle, |r| match direction {
            Direction::In => r.input(channel, &data.slice(..take)),
            Direction::Out => r.output(channel, &data.slice(..take)),
        });
    }

    fn note(&self) -> String {
        use std::fmt::Write;
        let outcome = self
            .outcome
            .get()
            .map_or("-> (no response)", String::as_str);
        let (bytes_in, bytes_out) = (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        );
        // One string, written in place: this runs for every request.
        let mut note = String::with_capacity(self.request_line.len() + outcome.len() + 64);
        let _ = write!(
            note,
            "http {} {outcome} (in {bytes_in} B, out {bytes_out} B, {} ms",
            self.request_line,
            self.started.elapsed().as_millis()
        );
        if !self.delivered.load(Ordering::Relaxed) {
            note.push_str(", abandoned by the client");
        }
        if let Some(capture) = self.capture {
            let _ = write!(note, "; bodies on channel {}", capture.channel);
            for (what, bytes) in [("request", bytes_in), ("response", bytes_out)] {
                if bytes > capture.limit {
                    let _ = write!(note, ", {what} body truncated at {} B", capture.limit);
                }
            }
        }
        note.push(')');
        note
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let note = self.note();
        record(&self.handle, |r| r.note(note));
    }
}

/// A body that reports every data frame to its exchange as it passes.
pub struct Counted<B> {
    inner: B,
    exchange: Arc<Exchange>,
    direction: Direction,
}

impl<B> Counted<B> {
    pub fn new(inner: B, exchange: Arc<Exchange>, direction: Direction) -> Self {
        Counted {
            inner,
            exchange,
            direction,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange.passed(self.direction, data);
                }
                // hyper stops polling a body that says it has ended.
                if matches!(self.direction, Direction::Out) && self.inner.is_end_stream() {
                    self.exchange.delivered();
                }
            }
            Poll::Ready(None) => {
                if let Direction::Out = self.direction {
                    self.exchange.delivered();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
