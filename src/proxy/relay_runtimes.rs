//! One tokio runtime with a single worker thread per core, shared by the fronts
//! whose connections are many small request/response exchanges (PostgreSQL, the
//! HTTPS listener). Each accepted connection lives on one of them, so the
//! downstream and upstream legs of an exchange share one event loop and relaying
//! it never wakes another thread. On the gateway's main runtime, whose workers
//! steal each other's tasks, a `pgbench -S` transaction cost 34–37 µs of gateway
//! CPU, most of it context switches and cross-CPU wake-ups; here 27.5–30 µs.
//!
//! Each runtime's threads are pinned to one core, and an accepted connection goes
//! to the runtime of the core its packets arrive on (`SO_INCOMING_CPU`: for a
//! client on the same host, the core the client ran on; for a remote one, the
//! core that took its network queue's interrupts), unless that runtime already
//! holds [`PLACEMENT_SLACK`] more connections than the emptiest one. The relay
//! then wakes the client on its own core instead of interrupting the other one;
//! with 8 `pgbench -S` clients this took the gateway from 1.00× to 1.21× of
//! pgbouncer's TPS on one VM (medians of nine interleaved rounds each, simple
//! queries; prepared 1.13× to 1.21×), and made no difference on another whose
//! idle cores halt (docs/benchmarks.md). For HTTPS it was within the noise on
//! the first and a few percent ahead on the second.
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
//! it off, so the gateway does it for the sessions it relays. Requests and
//! replies arm it, streamed reads (COPY, large results) do not: spinning while
//! a stream's producer fills the next buffer only takes the core from it.
//! Where wake-ups are cheap, polling's effect on latency is within the noise
//! (on two such VMs it changed sign from one hour to the next) while it keeps
//! a core spinning, so by default the gateway measures a wake-up at startup
//! ([`wake_up_cost`]) and polls only where it is slow.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::wake_up_cost::{self, WakeUpCost};
use crate::config::BusyPollSetting;

pub struct RelayRuntimes {
    runtimes: Vec<tokio::runtime::Runtime>,
    /// The core each runtime's threads are pinned to, same index; empty when
    /// the allowed cores could not be read (then nothing is pinned).
    cores: Vec<usize>,
    /// Connections each runtime serves now, same index.
    connections: Vec<AtomicUsize>,
    /// One per runtime, same index.
    pollers: Vec<BusyPoll>,
    busy_poll_started: Once,
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

    /// Moves an accepted socket to the runtime of the core its packets arrive on
    /// ([module docs](self)) and serves it there with `serve`.
    pub fn spawn<F, Fut>(&'static self, stream: TcpStream, serve: F) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // A socket is registered with one reactor: it leaves the accepting one here.
        let stream = stream.into_std()?;
        let incoming = rustix::net::sockopt::socket_incoming_cpu(&stream).ok();
        let i = self.place(incoming.map(|cpu| cpu as usize));
        let serving = Counted::new(&self.connections[i]);
        self.runtimes[i].spawn(async move {
            let _serving = serving;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "connection lost before relay"),
            }
        });
        Ok(())
    }

    /// The runtime for a connection whose packets arrive on core `incoming`.
    fn place(&self, incoming: Option<usize>) -> usize {
        let loads: Vec<usize> = self
            .connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let local = incoming.and_then(|core| self.cores.iter().position(|&c| c == core));
        choose_runtime(&loads, local)
    }
}

/// The local runtime (the one pinned to the core the connection's packets
/// arrive on), unless it holds [`PLACEMENT_SLACK`] more connections than the
/// emptiest: one busy network queue must not pile every session on one core.
/// Otherwise, or when the core is unknown, the emptiest.
fn choose_runtime(loads: &[usize], local: Option<usize>) -> usize {
    let (emptiest, least) = loads
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(_, load)| load)
        .unwrap_or((0, 0));
    match local {
        Some(i)
            if loads
                .get(i)
                .is_some_and(|&load| load < least + PLACEMENT_SLACK) =>
        {
            i
        }
        _ => emptiest,
    }
}

/// How many more connections than the emptiest runtime a core's own runtime
/// may hold before a connection arriving there goes elsewhere.
const PLACEMENT_SLACK: usize = 2;

/// Counts one in `count` while alive: a connection on its runtime, a relaying
/// session on its poller.
struct Counted(&'static AtomicUsize);

impl Counted {
    fn new(count: &'static AtomicUsize) -> Counted {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The index of the relay runtime the calling thread runs, for state kept per
/// runtime (e.g. the HTTP front's upstream connection pools).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

impl RelayRuntimes {
    /// Starts busy polling on every runtime ([module docs](self)): with the
    /// window given, or for `Auto` with [`AUTO_WINDOW`] if a wake-up across
    /// cores is slow here (measured on a thread of its own, so startup does not
    /// wait). A zero window or a second call does nothing.
    pub fn start_busy_poll(&'static self, setting: BusyPollSetting) {
        self.busy_poll_started.call_once(|| match setting {
            BusyPollSetting::Window(window) => self.spawn_pollers(window),
            BusyPollSetting::Auto => {
                let measure = std::thread::Builder::new()
                    .name("busy-poll-auto".into())
                    .spawn(move || self.spawn_pollers(auto_window()));
                if let Err(e) = measure {
                    tracing::warn!(error = %e, "busy polling stays off: cannot measure wake-ups");
                }
            }
        });
    }

    fn spawn_pollers(&'static self, window: Duration) {
        if window.is_zero() {
            return;
        }
        for (rt, poller) in self.runtimes.iter().zip(&self.pollers) {
            rt.spawn(poll_while_busy(poller, window));
        }
    }
}

/// The window `busy_poll = "auto"` uses when polling pays.
pub const AUTO_WINDOW: Duration = Duration::from_micros(200);

/// Waking a thread on an idle core adding more than this to a round trip means
/// idle cores halt into the hypervisor. Measured (lower deciles, cross-core minus
/// same-core): 31 µs on a VM where polling took a relayed `pgbench -S -c 1`
/// transaction from 62 µs above direct to 0–5 µs, 10.5–31 µs on one where it saved
/// 18–24 µs; 5–9 and 6–8 µs on two where it added 10–23 µs in some hours and
/// saved 6–14 µs in others. The line sits nearer those last two: where waking is
/// cheap, polling wrongly costs a spinning core; where it is dear, not polling
/// costs every round trip.
const SLOW_WAKE_UP: Duration = Duration::from_micros(10);

/// Busy polling's window for `Auto`: [`AUTO_WINDOW`] or zero (off).
fn auto_window() -> Duration {
    match wake_up_cost::measure() {
        Ok(Some(cost)) => {
            let window = polling_window_for(cost);
            tracing::info!(
                same_core_us = %format_args!("{:.1}", cost.same_core.as_secs_f64() * 1e6),
                cross_core_us = %format_args!("{:.1}", cost.cross_core.as_secs_f64() * 1e6),
                busy_poll = if window.is_zero() { "off" } else { "on" },
                "measured a wake-up across cores"
            );
            window
        }
        Ok(None) => {
            tracing::info!(busy_poll = "off", "one core: nothing to poll against");
            Duration::ZERO
        }
        Err(e) => {
            tracing::warn!(error = %e, busy_poll = "off", "cannot measure wake-ups");
            Duration::ZERO
        }
    }
}

fn polling_window_for(cost: WakeUpCost) -> Duration {
    if cost.idle_core_penalty() > SLOW_WAKE_UP {
        AUTO_WINDOW
    } else {
        Duration::ZERO
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
pub struct Relaying {
    _session: Option<Counted>,
}

/// Marks the calling task as a relaying session until the guard drops (busy
/// polling is for runtimes with few of them).
pub fn relaying() -> Relaying {
    Relaying {
        _session: current_poller().map(|poller| Counted::new(&poller.sessions)),
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
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = allowed_cores(count);
        let runtimes = (0..count)
            .map(|i| {
                let core = cores.get(i).copied();
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("relay-{i}"))
                    .on_thread_start(move || {
                        CURRENT.with(|c| c.set(Some(i)));
                        // A refusal (a changed cpuset) leaves the thread free
                        // to run anywhere, which costs only the placement's gain.
                        if let Some(core) = core
                            && let Err(e) = pin_to(core)
                        {
                            tracing::warn!(core, error = %e, "relay thread not pinned");
                        }
                    })
                    .enable_all()
                    .build()
                    .expect("start a relay runtime")
            })
            .collect();
        RelayRuntimes {
            connections: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            cores,
            pollers: (0..count).map(|_| BusyPoll::default()).collect(),
            busy_poll_started: Once::new(),
            runtimes,
        }
    })
}

/// The first `count` cores this process may run on, or none when that cannot
/// be read or there are fewer (a CPU quota, say): then nothing is pinned.
fn allowed_cores(count: usize) -> Vec<usize> {
    let Ok(allowed) = sched_getaffinity(None) else {
        return Vec::new();
    };
    let cores: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .take(count)
        .collect();
    if cores.len() == count {
        cores
    } else {
        Vec::new()
    }
}

/// Pins the calling thread to `core`.
pub(super) fn pin_to(core: usize) -> std::io::Result<()> {
    let mut only = CpuSet::new();
    only.set(core);
    sched_setaffinity(None, &only)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_its_own_core_unless_that_is_crowded() {
        // Known core, within the slack: its own runtime.
        assert_eq!(choose_runtime(&[1, 0], Some(0)), 0);
        assert_eq!(choose_runtime(&[3, 2], Some(0)), 0);
        // Two more than the emptiest: the emptiest instead.
        assert_eq!(choose_runtime(&[2, 0], Some(0)), 1);
        assert_eq!(choose_runtime(&[4, 1, 2], Some(0)), 1);
        // Unknown core (not one the runtimes are pinned to): the emptiest.
        assert_eq!(choose_runtime(&[3, 1], None), 1);
        assert_eq!(choose_runtime(&[0, 0], None), 0);
    }

    #[test]
    fn relay_threads_are_pinned_one_per_allowed_core() {
        let relays = relay_runtimes();
        let allowed = sched_getaffinity(None).expect("affinity");
        assert!(!relays.cores.is_empty(), "nothing pinned");
        for (i, rt) in relays.runtimes.iter().enumerate() {
            let seen = rt
                .block_on(async {
                    tokio::task::spawn(async { sched_getaffinity(None) })
                        .await
                        .expect("task")
                })
                .expect("affinity");
            let cores: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| seen.is_set(c)).collect();
            assert_eq!(cores, vec![relays.cores[i]], "relay-{i}");
            assert!(allowed.is_set(relays.cores[i]));
        }
    }

    #[test]
    fn auto_polls_only_where_waking_an_idle_core_is_slow() {
        let cost = |same_core, cross_core| WakeUpCost {
            same_core: Duration::from_micros(same_core),
            cross_core: Duration::from_micros(cross_core),
        };
        // The VMs the threshold comes from: polling paid on the first two.
        for slow in [cost(5, 37), cost(7, 19)] {
            assert_eq!(polling_window_for(slow), AUTO_WINDOW, "{slow:?}");
        }
        // Slow all round (the sixteenth VM) is not a slow wake-up.
        for cheap in [cost(4, 13), cost(9, 17)] {
            assert_eq!(polling_window_for(cheap), Duration::ZERO, "{cheap:?}");
        }
    }
}
