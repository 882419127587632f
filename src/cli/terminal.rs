//! Reading single key presses for `replay`: the controlling terminal is switched to
//! non-canonical mode without echo by running `stty` on `/dev/tty` (no terminal library and
//! no unsafe code), and switched back when [`KeyMode`] is dropped — on return, on error and
//! on panic. Ctrl-C arrives as a byte (signals are off while keys are read), so quitting
//! with it restores the terminal too.

use std::fs::File;
use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use crate::recording::replay::controls::{Key, KeyDecoder};

/// The terminal in key-at-a-time mode; restores the saved settings when dropped.
pub struct KeyMode {
    saved: String,
}

impl KeyMode {
    /// Saves the terminal's settings and turns off line buffering, echo and signal keys.
    /// Output processing stays on, so the replayed bytes look as they did.
    pub fn enter() -> io::Result<KeyMode> {
        let saved = stty(&["-g"])?;
        stty(&["-icanon", "-echo", "-isig", "min", "1", "time", "0"])?;
        Ok(KeyMode { saved })
    }
}

impl Drop for KeyMode {
    fn drop(&mut self) {
        if let Err(e) = stty(&[self.saved.as_str()]) {
            eprintln!("drawbridge: could not restore the terminal ({e}); run `stty sane`");
        }
    }
}

/// Runs `stty ARGS` on the controlling terminal; returns its output, trimmed.
fn stty(args: &[&str]) -> io::Result<String> {
    let output = Command::new("stty")
        .args(args)
        .stdin(File::open("/dev/tty")?)
        .stderr(Stdio::piped())
        .output()?;
    if !output.status.success() {
        let why = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(io::Error::other(format!("stty {}: {why}", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Decodes keys from standard input on a thread of its own. The thread ends when stdin
/// does or the receiver is dropped (at the next key); a thread blocked in a read does not
/// keep the process alive.
pub fn read_keys() -> Receiver<Key> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut decoder = KeyDecoder::default();
        for byte in io::stdin().lock().bytes() {
            let Ok(byte) = byte else { return };
            if let Some(key) = decoder.feed(byte)
                && tx.send(key).is_err()
            {
                return;
            }
        }
    });
    rx
}
