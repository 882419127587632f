//! The non-blocking front of a [`Recorder`]: a queue bounded in bytes feeding a dedicated
//! writer thread, so a relay never waits on the disk.
//!
//! A relay calls [`RecordSink`] methods; each copies the event, stamps it with the time it
//! happened and queues it. The writer thread encodes, chains and writes, signs checkpoints by
//! count and by time (it wakes up for a due checkpoint even when the session is idle, so
//! buffered records never wait for the next keystroke to become durable) and seals on
//! request.
//!
//! Never drop silently, fail closed: when the queue already holds `limit_bytes` (the disk
//! cannot keep up) the event is refused and the writer is marked failed; when a write fails
//! the writer thread stops and calls `on_failure`, which ends the session. Either way every
//! later event is refused, and [`Writer::failure`] says why for the audit log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use super::format::MAX_DATA_CHUNK;
use super::proto::{self, record::Body};
use super::{Recorder, RecordingError, SealSummary};

/// How long a relay waits for room in a backlogged queue before the session is
/// failed closed.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Queue accounting charges each event this much on top of its data, so that a flood of
/// tiny events is bounded too.
const EVENT_OVERHEAD: usize = 64;

/// Called once, from the writer thread, when a write fails.
pub type OnFailure = Box<dyn FnOnce(&str) + Send>;

enum Cmd {
    Record {
        at: Instant,
        body: Body,
        cost: usize,
    },
    /// Checkpoint now (if anything is pending) and answer once it is on disk.
    Sync(oneshot::Sender<Result<(), RecordingError>>),
    Seal(String, oneshot::Sender<Result<SealSummary, RecordingError>>),
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
    failed: AtomicBool,
    why: Mutex<Option<String>>,
    /// Woken when the queue drains below half its limit, or the writer fails.
    room: Notify,
    /// The gatherer owes this writer a wake-up (see [`Gatherer`]): set by the
    /// first event after the writer last woke, cleared each time it wakes.
    scheduled: AtomicBool,
}

impl Shared {
    /// Marks the writer failed; the first reason wins.
    fn fail(&self, why: String) {
        self.failed.store(true, Ordering::SeqCst);
        {
            // A poisoned lock only means another thread panicked while writing the reason.
            let mut slot = self.why.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(why);
        }
        self.room.notify_waiters();
    }

    /// More than half the queue is taken: relays should wait before reading more.
    fn backlogged(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > self.limit / 2
    }

    /// The writer took `cost` bytes off the queue.
    fn drained(&self, cost: usize) {
        let before = self.queued.fetch_sub(cost, Ordering::SeqCst);
        let half = self.limit / 2;
        if before > half && before - cost <= half {
            self.room.notify_waiters();
        }
    }
}

/// Handle to a writer thread. Clones share the thread; the first [`Writer::seal`] ends it.
#[derive(Clone)]
pub struct Writer {
    // Dropped before `_last`: when the last handle goes, the channel is closed
    // by the time the writer is woken to notice.
    tx: Sender<Cmd>,
    shared: Arc<Shared>,
    /// The writer thread, woken at once for a sync or seal.
    thread: Thread,
    _last: Arc<WakeOnLastDrop>,
}

/// Wakes the writer thread when the last handle is dropped without a seal, so it
/// sees its channel closed and ends (leaving the file for restart recovery).
struct WakeOnLastDrop(Thread);

impl Drop for WakeOnLastDrop {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

impl Writer {
    /// Starts the writer thread for `recorder`. `limit_bytes` bounds the queue.
    pub fn spawn(
        recorder: Recorder,
        limit_bytes: usize,
        on_failure: OnFailure,
    ) -> Result<Writer, RecordingError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            limit: limit_bytes,
            failed: AtomicBool::new(false),
            why: Mutex::new(None),
            room: Notify::new(),
            scheduled: AtomicBool::new(false),
        });
        let name = recorder
            .path()
            .file_stem()
            .map(|s| format!("rec {}", s.to_string_lossy()))
            .unwrap_or_else(|| "rec".into());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(recorder, rx, &thread_shared, on_failure))?
            .thread()
            .clone();
        Ok(Writer {
            tx,
            shared,
            _last: Arc::new(WakeOnLastDrop(thread.clone())),
            thread,
        })
    }

    /// The event API the relays use.
    pub fn sink(&self) -> RecordSink<'_> {
        RecordSink { writer: self }
    }

    /// Whether a relay should call [`Writer::room`] before reading more.
    pub fn backlogged(&self) -> bool {
        self.shared.backlogged()
    }

    /// Waits while the queue is more than half full, so a relay that outruns the
    /// disk for a while (a bulk copy on a busy machine) slows down to the disk's
    /// pace instead of ending the session. A writer that makes no room for
    /// [`STALL_LIMIT`] is stuck (a full or hung disk): the session is then
    /// failed closed like a full queue.
    pub async fn room(&self) -> Result<(), RecordingError> {
        let shared = &self.shared;
        let wait = async {
            loop {
                let notified = shared.room.notified();
                tokio::pin!(notified);
                // Registered before the check, so a drain in between is not missed.
                notified.as_mut().enable();
                if !shared.backlogged() || shared.failed.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(STALL_LIMIT, wait).await.is_err() {
            shared.fail(format!(
                "recording stalled: the queue stayed over half full for {}s (the disk cannot keep up)",
                STALL_LIMIT.as_secs()
            ));
        }
        match shared.failed.load(Ordering::SeqCst) {
            true => Err(RecordingError::WriterGone),
            false => Ok(()),
        }
    }

    /// Why the writer failed, if it did.
    pub fn failure(&self) -> Option<String> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.shared
            .why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes everything queued so far, then the seal; resolves when it is on disk.
    pub async fn seal(self, end_reason: &str) -> Result<SealSummary, RecordingError> {
        self.request_seal(end_reason)?
            .await
            .map_err(|_| RecordingError::WriterGone)?
    }

    /// Resolves once everything queued so far is on disk under a signed checkpoint.
    pub async fn sync(&self) -> Result<(), RecordingError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(reply))
            .map_err(|_| RecordingError::WriterGone)?;
        self.thread.unpark();
        rx.await.map_err(|_| RecordingError::WriterGone)?
    }

    /// [`Writer::seal`] for callers outside the async runtime (shutdown, tests).
    pub fn seal_blocking(self, end_reason: &str) -> Result<SealSummary, RecordingError> {
        self.request_seal(end_reason)?
            .blocking_recv()
            .map_err(|_| RecordingError::WriterGone)?
    }

    fn request_seal(
        &self,
        end_reason: &str,
    ) -> Result<oneshot::Receiver<Result<SealSummary, RecordingError>>, RecordingError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Seal(end_reason.to_string(), reply))
            .map_err(|_| RecordingError::WriterGone)?;
        self.thread.unpark();
        Ok(rx)
    }

    fn push(&self, body: Body, data_len: usize) -> Result<(), RecordingError> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(RecordingError::WriterGone);
        }
        let cost = data_len + EVENT_OVERHEAD;
        let queued = self.shared.queued.fetch_add(cost, Ordering::SeqCst) + cost;
        if queued > self.shared.limit {
            self.shared.queued.fetch_sub(cost, Ordering::SeqCst);
            let limit = self.shared.limit;
            self.shared.fail(format!(
                "recording queue full ({limit} bytes waiting): the disk cannot keep up"
            ));
            return Err(RecordingError::Backlog { limit });
        }
        let at = Instant::now();
        self.tx
            .send(Cmd::Record { at, body, cost })
            .map_err(|_| RecordingError::WriterGone)?;
        // Sent first: a writer that clears the flag after this drains the event.
        if !self.shared.scheduled.swap(true, Ordering::SeqCst) {
            gatherer().schedule(&self.thread);
        }
        Ok(())
    }
}

/// What a relay records through; see [`crate::session::SessionHandle::record`]. Every
/// method only queues (no disk IO) and fails once the writer has failed or is sealed.
pub struct RecordSink<'a> {
    writer: &'a Writer,
}

impl RecordSink<'_> {
    /// Bytes from the upstream towards the engineer. `data` is shared, not copied.
    pub fn output(&mut self, channel: u32, data: &Bytes) -> Result<(), RecordingError> {
        self.data(channel, data, Body::Output)
    }

    /// Bytes from the engineer towards the upstream. `data` is shared, not copied.
    pub fn input(&mut self, channel: u32, data: &Bytes) -> Result<(), RecordingError> {
        self.data(channel, data, Body::Input)
    }

    /// Queues `data` in views of at most [`MAX_DATA_CHUNK`] bytes, each as `body`.
    fn data(
        &mut self,
        channel: u32,
        data: &Bytes,
        body: fn(proto::Data) -> Body,
    ) -> Result<(), RecordingError> {
        for start in (0..data.len()).step_by(MAX_DATA_CHUNK) {
            let data = data.slice(start..data.len().min(start + MAX_DATA_CHUNK));
            let len = data.len();
            self.writer.push(body(proto::Data { channel, data }), len)?;
        }
        Ok(())
    }

    pub fn pty(
        &mut self,
        channel: u32,
        term: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), RecordingError> {
        let term = term.to_string();
        let len = term.len();
        let body = Body::Pty(proto::Pty {
            channel,
            term,
            cols,
            rows,
        });
        self.writer.push(body, len)
    }

    pub fn resize(&mut self, channel: u32, cols: u32, rows: u32) -> Result<(), RecordingError> {
        let body = Body::Resize(proto::Resize {
            channel,
            cols,
            rows,
        });
        self.writer.push(body, 0)
    }

    pub fn exec(&mut self, channel: u32, command: &str) -> Result<(), RecordingError> {
        let command = command.to_string();
        let len = command.len();
        self.writer
            .push(Body::Exec(proto::Exec { channel, command }), len)
    }

    pub fn exit_status(&mut self, channel: u32, status: u32) -> Result<(), RecordingError> {
        let body = Body::ExitStatus(proto::ExitStatus { channel, status });
        self.writer.push(body, 0)
    }

    /// A line of text; an owned `String` is queued as it is, without a copy.
    pub fn note(&mut self, text: impl Into<String>) -> Result<(), RecordingError> {
        let text = text.into();
        let len = text.len();
        self.writer.push(Body::Note(proto::Note { text }), len)
    }

    /// Any event body (the audit log's events); starts, checkpoints and seals are refused.
    pub(crate) fn body(&mut self, body: Body, len: usize) -> Result<(), RecordingError> {
        self.writer.push(body, len)
    }
}

/// How long events gather before their writer is woken. A busy session (an HTTP
/// app under load, a database session running statements, a fast-scrolling
/// terminal) then costs one wake-up of its writer thread per `LINGER` instead of
/// one per event, and many sessions share one timer ([`Gatherer`]) instead of
/// each lingering on its own. At 5 ms, eight `pgbench` sessions spent 4–10 µs more
/// gateway CPU per simple-query transaction than at 20 ms. Durability is
/// unchanged: it comes from checkpoints, not from this. A sync or seal wakes its
/// writer at once.
const LINGER: Duration = Duration::from_millis(20);

/// One timer for every writer thread. The first event after a writer last woke
/// registers that writer here (no wake-up on the relay's thread); every
/// [`LINGER`] while any are registered, this thread wakes them all. With 100
/// terminals typing a key every 100 ms, each keystroke used to wake its writer
/// twice (the event, then the end of its own linger), with a futex call on the
/// relay's thread for the first; now each writer wakes once per burst and the
/// relays make no call at all.
struct Gatherer {
    due: Mutex<Vec<Thread>>,
    work: Condvar,
}

fn gatherer() -> &'static Gatherer {
    static GATHERER: OnceLock<Gatherer> = OnceLock::new();
    GATHERER.get_or_init(|| {
        // The thread's first call waits for this initialisation to finish.
        // Without it, writers would still wake for syncs, seals and checkpoints;
        // events would wait for those.
        if let Err(e) = std::thread::Builder::new()
            .name("rec gather".into())
            .spawn(|| gatherer().run())
        {
            tracing::error!(error = %e, "cannot start the recording gatherer");
        }
        Gatherer {
            due: Mutex::new(Vec::new()),
            work: Condvar::new(),
        }
    })
}

impl Gatherer {
    fn schedule(&self, writer: &Thread) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.push(writer.clone());
        if due.len() == 1 {
            self.work.notify_one();
        }
    }

    fn run(&self) {
        loop {
            {
                let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
                while due.is_empty() {
                    due = self.work.wait(due).unwrap_or_else(|p| p.into_inner());
                }
            }
            std::thread::sleep(LINGER);
            let due = std::mem::take(&mut *self.due.lock().unwrap_or_else(|p| p.into_inner()));
            for writer in due {
                writer.unpark();
            }
        }
    }
}

/// The writer thread: applies commands in order and signs checkpoints when due.
/// It sleeps until the gatherer, a sync or seal, or the next checkpoint wakes it.
fn run(mut rec: Recorder, rx: Receiver<Cmd>, shared: &Shared, on_failure: OnFailure) {
    let mut on_failure = Some(on_failure);
    let mut fail = |e: String| {
        let why = format!("recording write failed: {e}");
        shared.fail(why.clone());
        if let Some(on_failure) = on_failure.take() {
            on_failure(&why);
        }
    };
    loop {
        // A due checkpoint goes first, so a steady stream of events cannot postpone it.
        let deadline = rec.checkpoint_deadline();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            if let Err(e) = rec.checkpoint() {
                return fail(e.to_string());
            }
            continue;
        }
        let cmd = match rx.try_recv() {
            Ok(cmd) => cmd,
            // Every handle is gone without a seal: leave the file unsealed (the
            // Recorder's drop flushes it) for restart recovery to seal.
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                match deadline {
                    Some(d) => {
                        std::thread::park_timeout(d.saturating_duration_since(Instant::now()))
                    }
                    None => std::thread::park(),
                }
                // Whatever woke us, everything queued is drained next; an event
                // sent after this registers with the gatherer again.
                shared.scheduled.store(false, Ordering::SeqCst);
                continue;
            }
        };
        if let Cmd::Seal(reason, reply) = cmd {
            // The caller may have stopped waiting; the seal is on disk either way.
            let _ = reply.send(rec.seal(&reason));
            return;
        }
        if let Err(e) = apply(&mut rec, cmd, shared) {
            return fail(e);
        }
    }
}

/// Applies a record or sync command; a failed write comes back as its description.
fn apply(rec: &mut Recorder, cmd: Cmd, shared: &Shared) -> Result<(), String> {
    match cmd {
        Cmd::Record { at, body, cost } => {
            let res = rec.append(at, body);
            shared.drained(cost);
            res.map_err(|e| e.to_string())?;
        }
        Cmd::Sync(reply) => {
            let res = match rec.checkpoint_deadline() {
                Some(_) => rec.checkpoint(),
                None => Ok(()),
            };
            let failed = res.as_ref().err().map(ToString::to_string);
            // The caller may have stopped waiting; that changes nothing here.
            let _ = reply.send(res);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        // Handled by `run`, which gives the recorder up to it.
        Cmd::Seal(..) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer handle with no thread behind it and `queued` bytes waiting, so
    /// the test decides when room is made.
    fn backlogged_writer(limit: usize, queued: usize) -> (Writer, Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(queued),
            limit,
            failed: AtomicBool::new(false),
            why: Mutex::new(None),
            room: Notify::new(),
            scheduled: AtomicBool::new(false),
        });
        let thread = std::thread::current();
        let writer = Writer {
            tx,
            shared,
            _last: Arc::new(WakeOnLastDrop(thread.clone())),
            thread,
        };
        (writer, rx)
    }

    #[test]
    fn the_gatherer_wakes_a_registered_thread() {
        // Any wake-up token left on this thread is used up first.
        std::thread::park_timeout(Duration::ZERO);
        let started = Instant::now();
        gatherer().schedule(&std::thread::current());
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10), "never woken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_waits_for_room_and_goes_on_once_the_writer_drains() {
        let (writer, _rx) = backlogged_writer(100, 80);
        assert!(writer.backlogged());
        let waiting = tokio::spawn({
            let writer = writer.clone();
            async move { writer.room().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "room while 80 of 100 bytes wait");
        writer.shared.drained(40);
        waiting.await.expect("join").expect("room");
        assert!(writer.failure().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_makes_no_room_fails_the_session_closed() {
        let (writer, _rx) = backlogged_writer(100, 80);
        let started = tokio::time::Instant::now();
        let err = writer.room().await.expect_err("stalled");
        assert!(matches!(err, RecordingError::WriterGone), "{err}");
        assert_eq!(started.elapsed(), STALL_LIMIT);
        let why = writer.failure().expect("reason kept");
        assert!(why.contains("stalled"), "{why}");
        // Every later event is refused too.
        assert!(writer.sink().note("late").is_err());
    }
}
