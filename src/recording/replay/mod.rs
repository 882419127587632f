//! Replay: plays a recording's terminal output back with the recorded timing (sped up, long
//! idle gaps cut short), under keyboard control when a terminal drives it, with the
//! recorded events (commands, exit statuses, SFTP, SQL, HTTP, forwards) shown as a
//! timeline beside the output, and seeking through keyframes.
//!
//! - [`stream`]: records read one at a time from the file, with their offsets.
//! - [`controls`]: the keys as a pure state machine.
//! - [`timeline`]: one stamped line per event; [`timeline::write_timeline`] for `--timeline`.
//! - [`index`]: keyframes (screen snapshots through `vt100`) and the [`index::Cursor`]
//!   playback moves.
//!
//! Output bytes of every channel are written in file order; keystrokes are never shown.
//! Replay reads the file as it is; `drawbridge verify` is what proves it intact.

pub mod controls;
pub mod index;
pub mod stream;
pub mod timeline;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::proto::record::Body;
use super::{Recording, RecordingError};
use controls::{Command, Controls, Key};
use index::{Cursor, Index};

/// How to play.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Playback speed; 2 plays twice as fast, infinite does not wait at all.
    pub speed: f64,
    /// Longest pause reproduced.
    pub max_idle: Option<Duration>,
    /// Start here (recording time): the screen as it was then is painted first.
    pub from: Option<Duration>,
    /// The output goes to a terminal: on leaving, restore what the replayed programs
    /// changed (alternate screen, hidden cursor, colours, input modes).
    pub terminal: bool,
    /// Where seek indexes are cached between runs; `None` keeps them in memory.
    pub index_cache: Option<PathBuf>,
}

/// Where the timeline lines go during playback.
pub struct Events<'a> {
    pub out: &'a mut dyn Write,
    /// Dim the lines and end them with CR LF (a terminal in non-canonical mode).
    pub terminal: bool,
}

/// Writes the output of `recording` to `out` with its timing: the simple form of [`play`],
/// without keys, events or seeking.
pub fn replay(
    recording: &Recording,
    speed: f64,
    max_idle: Option<Duration>,
    out: &mut dyn Write,
) -> Result<(), RecordingError> {
    let options = Options {
        speed,
        max_idle,
        ..Options::default()
    };
    play(&recording.path, &options, None, out, None)
}

/// Plays the recording at `path` to `out`. Keys from `keys` (if any) pause, step, change
/// speed, seek and quit; the timeline goes to `events` (if any) as each event comes up.
pub fn play(
    path: &Path,
    options: &Options,
    keys: Option<Receiver<Key>>,
    out: &mut dyn Write,
    events: Option<Events<'_>>,
) -> Result<(), RecordingError> {
    if options.speed.is_nan() || options.speed <= 0.0 {
        return Err(RecordingError::InvalidSpeed(options.speed));
    }
    let mut player = Player {
        path: path.to_path_buf(),
        options: options.clone(),
        cursor: Cursor::start(path)?,
        controls: Controls::new(options.speed),
        keys,
        index: None,
        out,
        events,
        shown_us: None,
        line_open: false,
    };
    let result = player.run();
    // Leave the terminal usable even when playback failed half-way.
    let restored = player.restore_terminal();
    result.and(restored)
}

struct Player<'a, 'e> {
    path: PathBuf,
    options: Options,
    cursor: Cursor,
    controls: Controls,
    keys: Option<Receiver<Key>>,
    /// Built or loaded on the first seek.
    index: Option<Index>,
    out: &'a mut dyn Write,
    events: Option<Events<'e>>,
    /// Recording time of the last thing shown; `None` before the first frame, which is
    /// shown without waiting.
    shown_us: Option<u64>,
    /// The last output did not end a line (an event line must start a new one).
    line_open: bool,
}

/// How a wait for the next frame ended.
enum Wait {
    Due,
    Seek(u64),
    Quit,
}

/// What waiting for a key produced.
enum KeyWait {
    Key(Key),
    TimedOut,
    /// The key source is gone (stdin closed): play on without keys.
    Gone,
}

impl Player<'_, '_> {
    fn run(&mut self) -> Result<(), RecordingError> {
        if let Some(from) = self.options.from {
            let index = loaded(
                &mut self.index,
                &self.path,
                &self.options,
                self.events.as_mut(),
            )?;
            let (from_us, end_us) = (micros(from), index.end_us);
            if from_us > end_us {
                return Err(RecordingError::StartPastEnd { from_us, end_us });
            }
            self.seek_to(from_us)?;
        }
        while let Some(next) = &self.cursor.next {
            let time_us = next.record.time_us;
            if !self.is_frame(&next.record.body) {
                self.cursor.advance()?;
                continue;
            }
            match self.wait_for(time_us)? {
                Wait::Due => self.show_next()?,
                Wait::Seek(target) => self.seek_to(target)?,
                Wait::Quit => break,
            }
        }
        Ok(())
    }

    /// Output always; events when there is somewhere to show them.
    fn is_frame(&self, body: &Option<Body>) -> bool {
        match body {
            Some(Body::Output(_)) => true,
            Some(body) => self.events.is_some() && timeline::event_text(body).is_some(),
            None => false,
        }
    }

    /// Waits until the frame at `time_us` is due, handling keys meanwhile.
    fn wait_for(&mut self, time_us: u64) -> Result<Wait, RecordingError> {
        let gap = Duration::from_micros(time_us.saturating_sub(self.shown_us.unwrap_or(time_us)));
        let mut remaining = self.pause_for(gap, self.controls.speed);
        loop {
            let key = if self.controls.paused {
                self.next_key(None)
            } else if remaining.is_zero() {
                return Ok(Wait::Due);
            } else {
                let started = Instant::now();
                let key = self.next_key(Some(remaining));
                remaining = remaining.saturating_sub(started.elapsed());
                key
            };
            let key = match key {
                KeyWait::Key(key) => key,
                KeyWait::TimedOut => return Ok(Wait::Due),
                KeyWait::Gone => continue,
            };
            match self.controls.apply(key) {
                Command::Continue => {}
                Command::Step => return Ok(Wait::Due),
                Command::Rescale { from, to } => {
                    let rescaled = remaining.as_secs_f64() * from / to;
                    remaining = self.cap(Duration::try_from_secs_f64(rescaled).unwrap_or_default());
                }
                Command::Seek { forward, by } => {
                    let from = self.shown_us.unwrap_or_default();
                    let target = if forward {
                        from.saturating_add(micros(by))
                    } else {
                        from.saturating_sub(micros(by))
                    };
                    return Ok(Wait::Seek(target));
                }
                Command::Quit => return Ok(Wait::Quit),
            }
        }
    }

    /// The pause for a recorded `gap` at `speed`, capped by `--max-idle`.
    fn pause_for(&self, gap: Duration, speed: f64) -> Duration {
        self.cap(scaled_pause(gap, speed))
    }

    fn cap(&self, pause: Duration) -> Duration {
        match self.options.max_idle {
            Some(cap) => pause.min(cap),
            None => pause,
        }
    }

    /// A key within `timeout` (forever when `None`); without keys, just the wait.
    fn next_key(&mut self, timeout: Option<Duration>) -> KeyWait {
        let Some(keys) = &self.keys else {
            if let Some(timeout) = timeout {
                std::thread::sleep(timeout);
            }
            return KeyWait::TimedOut;
        };
        let got = match timeout {
            Some(timeout) => keys.recv_timeout(timeout),
            None => keys.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(key) => KeyWait::Key(key),
            Err(RecvTimeoutError::Timeout) => KeyWait::TimedOut,
            Err(RecvTimeoutError::Disconnected) => {
                self.keys = None;
                self.controls.paused = false;
                KeyWait::Gone
            }
        }
    }

    /// Shows the next record (output or event line) and moves past it.
    fn show_next(&mut self) -> Result<(), RecordingError> {
        let Some(shown) = self.cursor.advance()? else {
            return Ok(());
        };
        self.shown_us = Some(shown.record.time_us);
        if let Some(Body::Output(data)) = &shown.record.body {
            self.out.write_all(&data.data)?;
            self.out.flush()?;
            if let Some(last) = data.data.last() {
                self.line_open = *last != b'\n';
            }
            return Ok(());
        }
        let text = shown.record.body.as_ref().and_then(timeline::event_text);
        let (Some(events), Some(text)) = (&mut self.events, text) else {
            return Ok(());
        };
        let line = format!("{} {text}", timeline::stamp(shown.record.time_us));
        if events.terminal {
            let fresh_line = if self.line_open { "\r\n" } else { "" };
            write!(events.out, "{fresh_line}\x1b[2m{line}\x1b[22m\r\n")?;
            self.line_open = false;
        } else {
            writeln!(events.out, "{line}")?;
        }
        events.out.flush()?;
        Ok(())
    }

    /// Moves to `target_us` (clamped to the recording) and paints the screen as it was then.
    fn seek_to(&mut self, target_us: u64) -> Result<(), RecordingError> {
        let index = loaded(
            &mut self.index,
            &self.path,
            &self.options,
            self.events.as_mut(),
        )?;
        let target_us = target_us.min(index.end_us);
        self.cursor.seek(&self.path, index, target_us)?;
        self.out.write_all(&self.cursor.terminal.paint())?;
        self.out.flush()?;
        self.shown_us = Some(target_us);
        self.line_open = false;
        Ok(())
    }

    /// On a terminal, undoes what the replayed programs left switched on: the alternate
    /// screen, a hidden cursor, colours, keypad and mouse modes.
    fn restore_terminal(&mut self) -> Result<(), RecordingError> {
        if !self.options.terminal {
            return Ok(());
        }
        let screen = self.cursor.terminal.parser.screen();
        let (rows, cols) = screen.size();
        let fresh = vt100::Parser::new(rows, cols, 0);
        let mut reset = fresh.screen().input_mode_diff(screen);
        if screen.alternate_screen() {
            reset.extend_from_slice(b"\x1b[?1049l");
        }
        reset.extend_from_slice(b"\x1b[m\x1b[?25h");
        if self.line_open {
            reset.extend_from_slice(b"\r\n");
        }
        self.out.write_all(&reset)?;
        self.out.flush()?;
        Ok(())
    }
}

/// The seek index in `slot`, loaded from the cache or built on first use. Building reads
/// the whole file (seconds for hours of busy output), so the events output says so first.
fn loaded<'s>(
    slot: &'s mut Option<Index>,
    path: &Path,
    options: &Options,
    events: Option<&mut Events<'_>>,
) -> Result<&'s Index, RecordingError> {
    let cache = options.index_cache.as_deref();
    let index = match slot.take().or_else(|| Index::cached(path, cache)) {
        Some(index) => index,
        None => {
            if let Some(events) = events {
                let end = if events.terminal { "\r\n" } else { "\n" };
                write!(
                    events.out,
                    "drawbridge: indexing the recording for seeking{end}"
                )?;
                events.out.flush()?;
            }
            Index::build_and_cache(path, cache)?
        }
    };
    Ok(slot.insert(index))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A recorded `gap` at `speed` (infinite: no pause).
fn scaled_pause(gap: Duration, speed: f64) -> Duration {
    if speed.is_infinite() {
        return Duration::ZERO;
    }
    // `speed` is positive and finite here; a tiny speed could overflow, so saturate.
    Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests;
