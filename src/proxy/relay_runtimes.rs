//! One tokio runtime with a single worker thread per core, shared by the fronts
//! whose connections are many small request/response exchanges (PostgreSQL, the
//! HTTPS listener). Each accepted connection lives on one of them, so the
//! downstream and upstream legs of an exchange share one event loop and relaying
//! it never wakes another thread. On the gateway's main runtime, whose workers
//! steal each other's tasks, a `pgbench -S` transaction cost 34–37 µs of gateway
//! CPU, most of it context switches and cross-CPU wake-ups; here 27.5–30 µs.
//!
//! They are multi-threaded runtimes of one worker rather than current-thread ones
//! so that `block_in_place` (SQLite commits wait for the disk) still hands the
//! event loop to another thread instead of stalling the other sessions on it.
//!
//! Busy polling: after relayed bytes pass, a runtime keeps polling its sockets
//! for a short window instead of going to sleep, giving the core away with
//! `sched_yield` to anything else runnable. A request/response protocol's next
//! message usually lands inside the window, and picking it up needs no wake-up;
//! on virtual machines whose idle cores halt, a wake-up is the costliest step of
//! a relayed round trip (a `pgbench -S -c 1` transaction through the gateway
//! took 200 µs without polling and 130–150 µs with it, direct 150 µs). The
//! kernel's `haltpoll` does the same for a guest's idle loop; hosts often turn
//! it off, so the gateway does it for the sessions it relays.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

pub struct RelayRuntimes {
    runtimes: Vec<tokio::runtime::Runtime>,
    /// One per runtime, same index.
    pollers: Vec<BusyPoll>,
    busy_poll_started: Once,
    next: AtomicUsize,
}

thread_local! {
    /// Which relay runtime this thread belongs to; `None` off them.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

impl RelayRuntimes {
    /// How many there are (one per core).
    pub fn count(&self) -> usize {
        self.runtimes.len()
    }

    /// Moves an accepted socket to the next runtime (round robin, so connections
    /// spread evenly over the cores) and serves it there with `serve`.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // A socket is registered with one reactor: it leaves the accepting one here.
        let stream = stream.into_std()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.runtimes[i % self.runtimes.len()].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "connection lost before relay"),
            }
        });
        Ok(())
    }
}

/// The index of the relay runtime the calling thread runs, for state kept per
/// runtime (e.g. the HTTP front's upstream connection pools).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

impl RelayRuntimes {
    /// Starts busy polling on every runtime with this window ([module docs](self));
    /// a zero window or a second call does nothing.
    pub fn start_busy_poll(&'static self, window: Duration) {
        if window.is_zero() {
            return;
        }
        self.busy_poll_started.call_once(|| {
            for (rt, poller) in self.runtimes.iter().zip(&self.pollers) {
                rt.spawn(poll_while_busy(poller, window));
            }
        });
    }
}

/// Tells the calling thread's relay runtime that relayed bytes just passed, so
/// it polls on for the busy-poll window. Cheap: an atomic swap, and a wake-up
/// only when the poller was parked.
pub fn relayed() {
    let Some(poller) = current_poller() else {
        return;
    };
    if poller.polls() && poller.state.swap(BUSY, Ordering::Relaxed) == PARKED {
        poller.wake.notify_one();
    }
}

/// One runtime's busy-poll state, touched only from that runtime's threads, so
/// the atomics are uncontended.
#[derive(Default)]
struct BusyPoll {
    state: AtomicU8,
    wake: Notify,
    /// Sessions relaying on this runtime.
    sessions: AtomicUsize,
}

impl BusyPoll {
    /// With more sessions than [`POLLED_SESSIONS`] the event loop seldom idles and
    /// one wake-up serves several of them; polling would take the core from the
    /// target and the clients on a loaded machine (`pgbench -S -c 8` lost 5–10%).
    fn polls(&self) -> bool {
        self.sessions.load(Ordering::Relaxed) <= POLLED_SESSIONS
    }
}

const POLLED_SESSIONS: usize = 2;

/// Counts a session relaying on the calling thread's relay runtime while alive.
pub struct Relaying(Option<&'static BusyPoll>);

/// Marks the calling task as a relaying session until the guard drops (busy
/// polling is for runtimes with few of them).
pub fn relaying() -> Relaying {
    let poller = current_poller();
    if let Some(poller) = poller {
        poller.sessions.fetch_add(1, Ordering::Relaxed);
    }
    Relaying(poller)
}

impl Drop for Relaying {
    fn drop(&mut self) {
        if let Some(poller) = self.0 {
            poller.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The busy-poll state of the calling thread's relay runtime.
fn current_poller() -> Option<&'static BusyPoll> {
    RUNTIMES.get()?.pollers.get(current()?)
}

/// The poller is parked until the next relayed bytes.
const PARKED: u8 = 0;
/// Polling; nothing relayed since the last look.
const POLLING: u8 = 1;
/// Bytes were relayed since the last look: the window starts again.
const BUSY: u8 = 2;

/// The task behind busy polling. While it is runnable the runtime never sleeps:
/// every `yield_now` makes the worker poll its sockets without blocking before
/// running the task again, and `sched_yield` hands the core to any other
/// runnable thread (PostgreSQL, the client) first.
async fn poll_while_busy(poller: &'static BusyPoll, window: Duration) {
    loop {
        // Park until bytes are relayed (unless they already were).
        if poller.state.swap(PARKED, Ordering::Relaxed) != BUSY {
            poller.wake.notified().await;
        }
        let mut until = Instant::now() + window;
        while poller.polls() {
            if poller.state.swap(POLLING, Ordering::Relaxed) == BUSY {
                until = Instant::now() + window;
            } else if Instant::now() >= until {
                break;
            }
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

static RUNTIMES: OnceLock<RelayRuntimes> = OnceLock::new();

/// Started on first use and kept for the life of the process.
pub fn relay_runtimes() -> &'static RelayRuntimes {
    RUNTIMES.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtimes = (0..cores)
            .map(|i| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("relay-{i}"))
                    .on_thread_start(move || CURRENT.with(|c| c.set(Some(i))))
                    .enable_all()
                    .build()
                    .expect("start a relay runtime")
            })
            .collect();
        RelayRuntimes {
            pollers: (0..cores).map(|_| BusyPoll::default()).collect(),
            busy_poll_started: Once::new(),
            runtimes,
            next: AtomicUsize::new(0),
        }
    })
}
