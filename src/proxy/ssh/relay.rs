//! The relay of one channel: bytes and requests both ways between the
//! engineer's channel and the target's, each chunk recorded through the
//! channel's [`Tap`] before it is forwarded, until either side closes or the
//! session is ended.

use std::time::Instant;

use bytes::Bytes;
use russh::server::{self, Msg as ServerMsg};
use russh::{Channel, ChannelMsg, client};

use super::downstream::{OpenSession, SessionSlot};
use super::scp::{ScpDirection, ScpStream};
use super::sftp::SftpTap;
use crate::recording::RecordingError;
use crate::session::{EndReason, SessionHandle};

/// How a channel's traffic is recorded.
pub(super) enum Tap {
    /// Terminals and commands: output byte for byte, input as far as `kept`
    /// allows and counted beyond it. `seen` is the input so far; `scp` names
    /// the files of a legacy scp transfer, however far past the limit they come.
    Stream {
        kept: InputKept,
        seen: u64,
        scp: Option<Box<ScpStream>>,
    },
    /// SFTP operations, not file contents (`sftp`, `scp` in SFTP mode).
    Sftp(Box<SftpTap>),
    /// A forwarded TCP connection: only its destination, byte counts and
    /// duration, written when it closes.
    Forward {
        destination: String,
        started: Instant,
        sent: u64,
        received: u64,
    },
}

/// How much of what an engineer sends on a terminal or command is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InputKept {
    All,
    /// `[ssh] record_input = false`.
    Nothing,
    /// The first bytes of a command's stdin (`[ssh] command_input_limit`).
    First(u64),
}

impl InputKept {
    /// How many of `len` bytes arriving after `seen` are recorded.
    fn of(self, seen: u64, len: usize) -> usize {
        match self {
            InputKept::All => len,
            InputKept::Nothing => 0,
            InputKept::First(limit) => limit.saturating_sub(seen).min(len as u64) as usize,
        }
    }
}

impl Tap {
    /// Every byte both ways.
    pub(super) fn raw() -> Tap {
        Tap::stream(InputKept::All, None)
    }

    /// A terminal or command; `scp` when it is a legacy scp transfer.
    pub(super) fn stream(kept: InputKept, scp: Option<ScpDirection>) -> Tap {
        Tap::Stream {
            kept,
            seen: 0,
            scp: scp.map(|d| Box::new(ScpStream::new(d))),
        }
    }

    /// Engineer → target.
    fn input(
        &mut self,
        session: &SessionHandle,
        channel: u32,
        data: &Bytes,
    ) -> Result<(), RecordingError> {
        match self {
            Tap::Stream { kept, seen, scp } => {
                let before = *seen;
                *seen += data.len() as u64;
                stream_input(session, channel, *kept, before, data)?;
                match scp {
                    Some(scp) if scp.direction() == ScpDirection::Upload => {
                        notes(session, channel, &scp.feed(data))
                    }
                    _ => Ok(()),
                }
            }
            Tap::Sftp(tap) => match tap.requests(data) {
                Ok(lines) => notes(session, channel, &lines),
                Err(e) => self.give_up(session, channel, &e.to_string(), data, true),
            },
            Tap::Forward { sent, .. } => {
                *sent += data.len() as u64;
                Ok(())
            }
        }
    }

    /// Target → engineer.
    fn output(
        &mut self,
        session: &SessionHandle,
        channel: u32,
        data: &Bytes,
    ) -> Result<(), RecordingError> {
        match self {
            Tap::Stream { scp, .. } => {
                session.record(|r| r.output(channel, data))?;
                match scp {
                    Some(scp) if scp.direction() == ScpDirection::Download => {
                        notes(session, channel, &scp.feed(data))
                    }
                    _ => Ok(()),
                }
            }
            Tap::Sftp(tap) => match tap.responses(data) {
                Ok(lines) => notes(session, channel, &lines),
                Err(e) => self.give_up(session, channel, &e.to_string(), data, false),
            },
            Tap::Forward { received, .. } => {
                *received += data.len() as u64;
                Ok(())
            }
        }
    }

    /// The SFTP stream stopped making sense: say so and record raw bytes from
    /// here on, so nothing passes unrecorded.
    fn give_up(
        &mut self,
        session: &SessionHandle,
        channel: u32,
        why: &str,
        data: &Bytes,
        input: bool,
    ) -> Result<(), RecordingError> {
        let text = format!("channel {channel}: sftp not decodable ({why}); recording raw bytes");
        session.record(|r| r.note(&text))?;
        *self = Tap::raw();
        if input {
            session.record(|r| r.input(channel, data))
        } else {
            session.record(|r| r.output(channel, data))
        }
    }

    /// The closing note of the channel, if the tap has one.
    fn finish(&mut self, session: &SessionHandle, channel: u32) {
        let lines = match self {
            Tap::Stream { kept, seen, .. } => match *kept {
                InputKept::All => return,
                InputKept::Nothing => vec![format!("input not recorded ({seen} bytes)")],
                InputKept::First(limit) if *seen > limit => vec![format!(
                    "input not recorded past the first {limit} bytes ({} bytes)",
                    *seen - limit
                )],
                InputKept::First(_) => return,
            },
            Tap::Sftp(tap) => tap.finish(),
            Tap::Forward {
                destination,
                started,
                sent,
                received,
            } => vec![format!(
                "forward to {destination} closed: {sent} bytes sent, {received} bytes received, {:.3}s",
                started.elapsed().as_secs_f64()
            )],
        };
        let _ = notes(session, channel, &lines);
    }
}

/// Records what `kept` allows of `data`, input that arrives after `seen`
/// bytes, and says so the moment a command's input first passes its limit (a
/// recording cut short by a crash still tells).
fn stream_input(
    session: &SessionHandle,
    channel: u32,
    kept: InputKept,
    seen: u64,
    data: &Bytes,
) -> Result<(), RecordingError> {
    let keep = kept.of(seen, data.len());
    if keep > 0 {
        session.record(|r| r.input(channel, &data.slice(..keep)))?;
    }
    if let InputKept::First(limit) = kept
        && keep < data.len()
        && seen <= limit
    {
        let note = format!(
            "channel {channel}: input past the first {limit} bytes is counted, not recorded ([ssh] command_input_limit)"
        );
        session.record(|r| r.note(note))?;
    }
    Ok(())
}

fn notes(session: &SessionHandle, channel: u32, lines: &[String]) -> Result<(), RecordingError> {
    for line in lines {
        session.record(|r| r.note(format!("channel {channel}: {line}")))?;
    }
    Ok(())
}

/// Writes `message` on the channel's stderr, with the line endings a terminal
/// needs when there is a pty.
pub(super) async fn tell(down: &Channel<ServerMsg>, message: &str, pty: bool) {
    let newline = if pty { "\r\n" } else { "\n" };
    let text = format!("{}{newline}", message.replace('\n', newline));
    let _ = down.extended_data(1, text.as_bytes()).await;
}

/// Relays until one side closes or the session is ended. Every chunk is recorded
/// before it is forwarded, so the recording never lags what the client saw; a
/// recording failure ends the session (fail closed).
///
/// The two directions run as separate futures: a write waiting for the target's
/// window must not stop us from draining the target's replies, or russh's
/// bounded per-channel queue fills, its connection loop blocks, and the window
/// adjust we wait for is never read (an SFTP upload deadlocked that way).
pub(super) async fn relay(
    down: Channel<ServerMsg>,
    up: Channel<client::Msg>,
    open: &OpenSession,
    slot: &SessionSlot,
    downstream: &server::Handle,
    tap: Tap,
    pty: bool,
) {
    let session = &open.session;
    let channel = down.id().number();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    let forward = matches!(tap, Tap::Forward { .. });
    // Locked only for a parse and a buffered record write, never across an await.
    let tap = std::sync::Mutex::new(tap);
    let with_tap = |f: &mut dyn FnMut(&mut Tap) -> Result<(), RecordingError>| {
        f(&mut tap.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let record = |r: Result<(), RecordingError>| {
        if r.is_err() {
            session.end(EndReason::RecordingFailed);
        }
        r.is_ok()
    };

    // Engineer → target. Ends when the engineer closes the channel.
    let upward = async {
        // Waiting for recording room before reading leaves the channel's window
        // closed, so a client that outruns the disk is slowed, not cut off.
        while record(session.recording_room().await) {
            let Some(msg) = down_rx.wait().await else {
                return;
            };
            match msg {
                ChannelMsg::Data { data } => {
                    open.activity.touch();
                    if record(with_tap(&mut |t| t.input(session, channel, &data)))
                        && up_tx.data_bytes(data).await.is_err()
                    {
                        return;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = up_tx.eof().await;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    open.activity.touch();
                    if record(session.record(|r| r.resize(channel, col_width, row_height))) {
                        let _ = up_tx
                            .window_change(col_width, row_height, pix_width, pix_height)
                            .await;
                    }
                }
                ChannelMsg::Signal { signal } => {
                    let note = format!("channel {channel}: signal {signal:?} sent");
                    if record(session.record(|r| r.note(&note))) {
                        let _ = up_tx.signal(signal).await;
                    }
                }
                ChannelMsg::Close => return,
                _ => {}
            }
        }
    };

    // Target → engineer. Ends when the target closes the channel.
    let downward = async {
        while record(session.recording_room().await) {
            let Some(msg) = up_rx.wait().await else {
                break;
            };
            match msg {
                ChannelMsg::Data { data } => {
                    open.activity.touch();
                    if record(with_tap(&mut |t| t.output(session, channel, &data)))
                        && down_tx.data_bytes(data).await.is_err()
                    {
                        return;
                    }
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    open.activity.touch();
                    // stderr is always recorded raw: diagnostics, not file data.
                    if record(session.record(|r| r.output(channel, &data))) {
                        let _ = down_tx.extended_data_bytes(ext, data).await;
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    let _ = session.record(|r| r.exit_status(channel, exit_status));
                    let _ = down_tx.exit_status(exit_status).await;
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    let note = format!("channel {channel}: killed by signal {signal_name:?}");
                    let _ = session.record(|r| r.note(&note));
                    let _ = downstream
                        .exit_signal_request(
                            down_tx.id(),
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await;
                }
                ChannelMsg::Eof => {
                    let _ = down_tx.eof().await;
                }
                ChannelMsg::Close => return,
                _ => {}
            }
        }
    };

    // Refusals made while the channel runs (e.g. a forward), told on stderr.
    let notices = async {
        loop {
            let notice = slot.next_notice().await;
            let _ = session.record(|r| r.note(format!("channel {channel}: refused: {notice}")));
            let text = fix_newlines(&format!("{notice}\n"), pty);
            let _ = down_tx.extended_data_bytes(1, text.into_bytes()).await;
        }
    };
    let notices = async {
        if forward {
            std::future::pending::<()>().await
        } else {
            notices.await
        }
    };

    // Interactive channels hear, once, that the grant is about to end.
    let warning = async {
        if pty && let Some((at, grant, end)) = session.live().warning(open.warn_before) {
            tokio::time::sleep_until(at).await;
            let left = end
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs();
            let message = format!(
                "\ndrawbridge: grant {grant} ends in {}m{:02}s; this session will be closed then\n",
                left / 60,
                left % 60
            );
            let _ = session.record(|r| r.note(message.trim()));
            let _ = down_tx
                .extended_data_bytes(1, fix_newlines(&message, true).into_bytes())
                .await;
        }
        std::future::pending::<()>().await
    };

    let mut live = session.live();
    // Whichever finishes first ends the relay; dropping the others is fine
    // because the channel is being closed anyway (a chunk in flight is lost
    // only when one side has already gone).
    tokio::select! {
        reason = live.ended() => {
            let _ = session.record(|r| r.note(format!("session ended: {reason}")));
            if !forward {
                let message = format!("\ndrawbridge: {reason}; closing the session\n");
                let text = fix_newlines(&message, pty);
                let _ = down_tx.extended_data_bytes(1, text.into_bytes()).await;
                let _ = down_tx.exit_status(255).await;
            }
            let _ = down_tx.eof().await;
        }
        () = upward => {}
        () = downward => {}
        () = notices => {}
        () = warning => {}
    }
    tap.lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish(session, channel);
    let _ = down_tx.close().await;
    let _ = up_tx.close().await;
}

fn fix_newlines(text: &str, pty: bool) -> String {
    if pty {
        text.replace('\n', "\r\n")
    } else {
        text.to_string()
    }
}
