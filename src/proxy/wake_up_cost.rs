//! What it costs here for one thread to wake another that sleeps on a different
//! core: the measurement behind `busy_poll = "auto"`.
//!
//! Two threads, pinned to two cores, pass a byte back and forth over a socket
//! pair, each sleeping in `read` until the other writes. On bare metal and on
//! VMs whose idle cores poll before halting a round trip takes a few
//! microseconds; where an idle virtual core halts into the hypervisor, a
//! wake-up takes an interrupt through it and the round trip 30–40 µs. Busy
//! polling pays only in the second case (README, PostgreSQL figures).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity};

use super::relay_runtimes::pin_to;

const WARM_UP: usize = 100;
const MEASURED: usize = 501;

/// The lower decile of round trips between two cores, or `None` when the
/// process may run on only one (polling there would take the core from the peer it waits for).
/// Takes 50 ms at most where wake-ups are slow. Pins the calling thread: call it
/// on a thread of its own.
pub fn cross_core_round_trip() -> std::io::Result<Option<Duration>> {
    let allowed = sched_getaffinity(None)?;
    let mut cores = (0..CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c));
    let (Some(here), Some(there)) = (cores.next(), cores.next()) else {
        return Ok(None);
    };
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
    Ok(Some(trips[trips.len() / 10]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_between_two_cores_takes_microseconds() {
        let trip = std::thread::spawn(cross_core_round_trip)
            .join()
            .expect("measuring thread")
            .expect("measured");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match trip {
            // Bounds far apart: a wrong unit or a measurement of nothing fails.
            Some(trip) => assert!(
                trip > Duration::from_nanos(200) && trip < Duration::from_millis(5),
                "{trip:?}"
            ),
            None => assert_eq!(cores, 1, "two cores are allowed but none measured"),
        }
    }
}
