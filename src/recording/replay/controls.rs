//! The replay keys as a pure state machine: bytes from the terminal become [`Key`]s
//! ([`KeyDecoder`]), and [`Controls`] turns each key into what the player must do. No IO,
//! so every key is unit-tested without a terminal.

use std::time::Duration;

/// How far one seek key jumps.
pub const SEEK_STEP: Duration = Duration::from_secs(10);

/// Fastest and slowest speeds the `+`/`-` keys reach (each press doubles or halves).
pub const MAX_SPEED: f64 = 64.0;
pub const MIN_SPEED: f64 = 1.0 / 16.0;

/// What a key press means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Space.
    TogglePause,
    /// `.` or `n`: the next frame, while paused.
    Step,
    /// `+` (or `=`, the same key without shift).
    Faster,
    /// `-`.
    Slower,
    /// `>` or the right arrow: [`SEEK_STEP`] forward.
    Forward,
    /// `<` or the left arrow: [`SEEK_STEP`] back.
    Back,
    /// `q`, or Ctrl-C / Ctrl-D (the terminal delivers them as bytes while keys are read).
    Quit,
}

/// Turns terminal bytes into keys, including the arrow keys' escape sequences
/// (`ESC [ C`, `ESC O C`). Other bytes and sequences are ignored.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    /// Bytes of an escape sequence read so far (starting with ESC).
    escape: Vec<u8>,
}

const ESC: u8 = 0x1b;

impl KeyDecoder {
    pub fn feed(&mut self, byte: u8) -> Option<Key> {
        if !self.escape.is_empty() {
            return self.continue_escape(byte);
        }
        match byte {
            ESC => {
                self.escape.push(byte);
                None
            }
            b' ' => Some(Key::TogglePause),
            b'.' | b'n' => Some(Key::Step),
            b'+' | b'=' => Some(Key::Faster),
            b'-' => Some(Key::Slower),
            b'>' => Some(Key::Forward),
            b'<' => Some(Key::Back),
            b'q' | b'Q' | 0x03 | 0x04 => Some(Key::Quit),
            _ => None,
        }
    }

    fn continue_escape(&mut self, byte: u8) -> Option<Key> {
        if self.escape.len() == 1 {
            if byte == b'[' || byte == b'O' {
                self.escape.push(byte);
                return None;
            }
            // A lone Escape press followed by an ordinary key: the key counts.
            self.escape.clear();
            return self.feed(byte);
        }
        // Parameters and intermediates (digits, `;`) until a final byte.
        if !(0x40..=0x7e).contains(&byte) {
            if self.escape.len() >= 16 {
                self.escape.clear();
            } else {
                self.escape.push(byte);
            }
            return None;
        }
        let plain = self.escape.len() == 2;
        self.escape.clear();
        match byte {
            b'C' if plain => Some(Key::Forward),
            b'D' if plain => Some(Key::Back),
            _ => None,
        }
    }
}

/// What the player must do after a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Keep going (or keep waiting); `paused` and `speed` may have changed.
    Continue,
    /// Show the next frame now, and stay paused.
    Step,
    /// The speed changed: a wait in progress is rescaled by `from / to`.
    Rescale {
        from: f64,
        to: f64,
    },
    /// Jump forward (positive) or back (negative) in recording time.
    Seek {
        forward: bool,
        by: Duration,
    },
    Quit,
}

/// Pause state and speed, changed only by keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Controls {
    pub paused: bool,
    /// Playback speed; infinite plays without waiting.
    pub speed: f64,
}

impl Controls {
    pub fn new(speed: f64) -> Controls {
        Controls {
            paused: false,
            speed,
        }
    }

    pub fn apply(&mut self, key: Key) -> Command {
        match key {
            Key::TogglePause => {
                self.paused = !self.paused;
                Command::Continue
            }
            // Stepping only makes sense while paused; playing already moves on.
            Key::Step if self.paused => Command::Step,
            Key::Step => Command::Continue,
            Key::Faster => self.set_speed(faster(self.speed)),
            Key::Slower => self.set_speed(slower(self.speed)),
            Key::Forward => Command::Seek {
                forward: true,
                by: SEEK_STEP,
            },
            Key::Back => Command::Seek {
                forward: false,
                by: SEEK_STEP,
            },
            Key::Quit => Command::Quit,
        }
    }

    fn set_speed(&mut self, to: f64) -> Command {
        let from = self.speed;
        if to == from {
            return Command::Continue;
        }
        self.speed = to;
        Command::Rescale { from, to }
    }
}

/// Double, up to [`MAX_SPEED`]; "no waiting" (infinite) stays as it is.
fn faster(speed: f64) -> f64 {
    if speed.is_infinite() {
        return speed;
    }
    (speed * 2.0).min(MAX_SPEED).max(speed)
}

/// Halve, down to [`MIN_SPEED`]; from "no waiting" down to [`MAX_SPEED`].
fn slower(speed: f64) -> f64 {
    if speed.is_infinite() {
        return MAX_SPEED;
    }
    (speed / 2.0).max(MIN_SPEED).min(speed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut decoder = KeyDecoder::default();
        bytes.iter().filter_map(|b| decoder.feed(*b)).collect()
    }

    #[test]
    fn bytes_become_keys() {
        use Key::*;
        assert_eq!(
            keys(b" .n+=-><qQ\x03\x04"),
            [
                TogglePause,
                Step,
                Step,
                Faster,
                Faster,
                Slower,
                Forward,
                Back,
                Quit,
                Quit,
                Quit,
                Quit
            ]
        );
        // Arrow keys, in normal and application cursor mode.
        assert_eq!(
            keys(b"\x1b[C\x1b[D\x1bOC\x1bOD"),
            [Forward, Back, Forward, Back]
        );
    }

    #[test]
    fn other_bytes_and_sequences_are_ignored() {
        use Key::*;
        // Letters, Enter, up/down arrows, a function key, shift+right (has parameters).
        assert_eq!(keys(b"xyz\r\n\x1b[A\x1b[B\x1b[15~\x1b[1;2C"), []);
        // A lone Escape followed by a key: the key still counts.
        assert_eq!(keys(b"\x1bq"), [Quit]);
        // An endless sequence is dropped, and decoding recovers.
        let mut long = b"\x1b[".to_vec();
        long.extend([b'1'; 40]);
        long.push(b' ');
        assert_eq!(keys(&long), [TogglePause]);
    }

    #[test]
    fn space_pauses_and_resumes_and_step_works_only_while_paused() {
        let mut c = Controls::new(1.0);
        assert_eq!(c.apply(Key::Step), Command::Continue);
        assert_eq!(c.apply(Key::TogglePause), Command::Continue);
        assert!(c.paused);
        assert_eq!(c.apply(Key::Step), Command::Step);
        assert_eq!(c.apply(Key::Step), Command::Step);
        assert!(c.paused, "stepping keeps the player paused");
        c.apply(Key::TogglePause);
        assert!(!c.paused);
    }

    #[test]
    fn speed_doubles_and_halves_within_limits() {
        let mut c = Controls::new(1.0);
        assert_eq!(
            c.apply(Key::Faster),
            Command::Rescale { from: 1.0, to: 2.0 }
        );
        for _ in 0..10 {
            c.apply(Key::Faster);
        }
        assert_eq!(c.speed, MAX_SPEED);
        assert_eq!(c.apply(Key::Faster), Command::Continue);
        for _ in 0..20 {
            c.apply(Key::Slower);
        }
        assert_eq!(c.speed, MIN_SPEED);
        assert_eq!(c.apply(Key::Slower), Command::Continue);

        // `--speed 0` (no waiting): faster stays, slower comes down to the fastest timed speed.
        let mut c = Controls::new(f64::INFINITY);
        assert_eq!(c.apply(Key::Faster), Command::Continue);
        assert_eq!(
            c.apply(Key::Slower),
            Command::Rescale {
                from: f64::INFINITY,
                to: MAX_SPEED
            }
        );
        // A speed given beyond the key range is not pulled into it by the wrong key.
        let mut c = Controls::new(100.0);
        assert_eq!(c.apply(Key::Faster), Command::Continue);
        assert_eq!(c.speed, 100.0);
    }

    #[test]
    fn seek_and_quit() {
        let mut c = Controls::new(1.0);
        assert_eq!(
            c.apply(Key::Forward),
            Command::Seek {
                forward: true,
                by: SEEK_STEP
            }
        );
        assert_eq!(
            c.apply(Key::Back),
            Command::Seek {
                forward: false,
                by: SEEK_STEP
            }
        );
        assert_eq!(c.apply(Key::Quit), Command::Quit);
    }
}
