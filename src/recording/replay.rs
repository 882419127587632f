//! [`replay`]: plays a recording's output back to a writer (a terminal, usually) with the
//! recorded timing, sped up by a factor and with long idle gaps cut short.
//!
//! Only `output` records are written (every channel, in file order); input, resizes and
//! other events are skipped. Replay reads an already loaded [`Recording`]; verify it first
//! if its integrity matters.

use std::io::Write;
use std::time::Duration;

use super::proto::record::Body;
use super::{Recording, RecordingError};

/// Writes the output of `recording` to `out`, sleeping the recorded gap between records
/// divided by `speed` (`f64::INFINITY`: no sleeping), each sleep capped by `max_idle`.
/// `out` is flushed after every write so the timing is visible.
pub fn replay(
    recording: &Recording,
    speed: f64,
    max_idle: Option<Duration>,
    out: &mut dyn Write,
) -> Result<(), RecordingError> {
    if speed.is_nan() || speed <= 0.0 {
        return Err(RecordingError::InvalidSpeed(speed));
    }
    let mut last_us: Option<u64> = None;
    for record in &recording.records {
        let Some(Body::Output(data)) = &record.body else {
            continue;
        };
        if let Some(last) = last_us {
            let gap = Duration::from_micros(record.time_us.saturating_sub(last));
            let pause = scaled_pause(gap, speed, max_idle);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        last_us = Some(record.time_us);
        out.write_all(&data.data)?;
        out.flush()?;
    }
    Ok(())
}

/// The pause for a recorded `gap` at `speed`, capped by `max_idle`.
fn scaled_pause(gap: Duration, speed: f64, max_idle: Option<Duration>) -> Duration {
    if speed.is_infinite() {
        return Duration::ZERO;
    }
    // `speed` is positive and finite here; a tiny speed could overflow, so saturate.
    let scaled = Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX);
    match max_idle {
        Some(cap) => scaled.min(cap),
        None => scaled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_scaling() {
        let s = Duration::from_secs;
        assert_eq!(scaled_pause(s(4), 2.0, None), s(2));
        assert_eq!(scaled_pause(s(4), 0.5, None), s(8));
        assert_eq!(scaled_pause(s(40), 1.0, Some(s(3))), s(3));
        assert_eq!(scaled_pause(s(40), f64::INFINITY, None), Duration::ZERO);
        assert_eq!(scaled_pause(s(1), 1e-300, None), Duration::MAX);
    }
}
