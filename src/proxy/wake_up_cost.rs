//! What it costs here for one thread to wake another that sleeps on a different
//! core: the measurement behind `busy_poll = "auto"`.
//!
//! Two threads pass a byte back and forth over a socket pair, each sleeping in
//! `read` until the other writes: once both pinned to one core, once pinned to
//! two. On one core a round trip is two context switches; across cores it also
//! wakes the idle core, and what that adds is what busy polling saves. On bare
//! metal and on VMs whose idle cores poll before halting it adds a few
//! microseconds; where an idle virtual core halts into the hypervisor it takes an
//! interrupt through it and adds 10–41 µs. Busy polling pays only in the second
//! case (README, PostgreSQL figures). The difference, not the cross-core figure
//! alone, tells them apart: on a VM that is slow all round both trips are slow.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity};

use super::relay_runtimes::pin_to;

const WARM_UP: usize = 100;
const MEASURED: usize = 501;

/// Round trips between two sleeping threads (lower deciles; across cores, the
/// highest of [`CROSS_CORE_BATCHES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeUpCost {
    pub same_core: Duration,
    pub cross_core: Duration,
}

impl WakeUpCost {
    /// What waking a thread on an idle core adds to a round trip.
    pub fn idle_core_penalty(&self) -> Duration {
        self.cross_core.saturating_sub(self.same_core)
    }
}

/// Cross-core measurements, spaced apart. A core that something else keeps busy
/// wakes faster than an idle one (no halt to leave): at a gateway's startup on a
/// VM that halts idle cores, one measurement in ten came out 14 µs where the
/// rest were 18–32. The slowest of a few is the idle core's.
const CROSS_CORE_BATCHES: usize = 3;
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// Measures both round trips, or `None` when the process may run on only one
/// core (polling there would take the core from the peer it waits for). Takes
/// about 100 ms where wake-ups are slow. Pins the calling thread: call it on a
/// thread of its own.
pub fn measure() -> std::io::Result<Option<WakeUpCost>> {
    let allowed = sched_getaffinity(None)?;
    let mut cores = (0..CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c));
    let (Some(here), Some(there)) = (cores.next(), cores.next()) else {
        return Ok(None);
    };
    let same_core = round_trip(here, here)?;
    let mut cross_core = Duration::ZERO;
    for _ in 0..CROSS_CORE_BATCHES {
        std::thread::sleep(BETWEEN_BATCHES);
        cross_core = cross_core.max(round_trip(here, there)?);
    }
    Ok(Some(WakeUpCost {
        same_core,
        cross_core,
    }))
}

/// The lower decile of round trips with the caller on `here` and its echo on `there`.
fn round_trip(here: usize, there: usize) -> std::io::Result<Duration> {
    let (mut near, mut far) = UnixStream::pair()?;
    let echo = std::thread::Builder::new()
        .name("wake-up-echo".into())
        .spawn(move || -> std::io::Result<()> {
            pin_to(there)?;
            let mut byte = [0u8];
            while far.read(&mut byte)? == 1 {
                far.write_all(&byte)?;
            }
            Ok(())
        })?;
    pin_to(here)?;
    let mut trips = Vec::with_capacity(MEASURED);
    let mut byte = [0u8];
    for i in 0..WARM_UP + MEASURED {
        let start = Instant::now();
        near.write_all(&byte)?;
        near.read_exact(&mut byte)?;
        if i >= WARM_UP {
            trips.push(start.elapsed());
        }
    }
    // The echo thread sees the end of the stream and returns.
    drop(near);
    echo.join()
        .map_err(|_| std::io::Error::other("the echo thread panicked"))??;
    // Not the median: on a busy machine some trips wait for a core's current
    // task to finish its slice, and those must not read as slow wake-ups.
    trips.sort();
    Ok(trips[trips.len() / 10])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_on_one_core_and_across_two_take_microseconds() {
        let cost = std::thread::spawn(measure)
            .join()
            .expect("measuring thread")
            .expect("measured");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match cost {
            // Bounds far apart: a wrong unit or a measurement of nothing fails.
            Some(cost) => {
                for trip in [cost.same_core, cost.cross_core] {
                    assert!(
                        trip > Duration::from_nanos(200) && trip < Duration::from_millis(5),
                        "{cost:?}"
                    );
                }
            }
            None => assert_eq!(cores, 1, "two cores are allowed but none measured"),
        }
    }

    #[test]
    fn the_penalty_is_what_crossing_cores_adds() {
        let us = Duration::from_micros;
        let cost = |same_core, cross_core| WakeUpCost {
            same_core: us(same_core),
            cross_core: us(cross_core),
        };
        assert_eq!(cost(7, 25).idle_core_penalty(), us(18));
        // Noise can make the cross-core trip the faster one: no penalty, not a panic.
        assert_eq!(cost(9, 8).idle_core_penalty(), Duration::ZERO);
    }
}
