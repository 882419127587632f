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

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;

pub struct RelayRuntimes {
    runtimes: Vec<tokio::runtime::Runtime>,
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

/// Started on first use and kept for the life of the process.
pub fn relay_runtimes() -> &'static RelayRuntimes {
    static RUNTIMES: OnceLock<RelayRuntimes> = OnceLock::new();
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
            runtimes,
            next: AtomicUsize::new(0),
        }
    })
}
