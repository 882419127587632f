//! The relay of one channel: bytes and requests both ways between the
//! engineer's channel and the target's, each chunk recorded through the
//! channel's [`Tap`] before it is forwarded, until either side closes or the
//! session is ended.

use std::time::Instant;

use russh::server::{self, Msg as ServerMsg};
use russh::{Channel, ChannelMsg, client};

use super::downstream::{OpenSession, SessionSlot};
use super::sftp::SftpTap;
use crate::recording::RecordingError;
use crate::session::{EndReason, SessionHandle};

/// How a channel's traffic is recorded.
pub(super) enum Tap {
    /// Every byte: terminals and commands.
    Raw,
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

impl Tap {
    /// Engineer → target.
    fn input(
        &mut self,
        session: &SessionHandle,
        channel: u32,
        data: &[u8],
    ) -> Result<(), RecordingError> {
        match self {
            Tap::Raw => session.record(|r| r.input(channel, data)),
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
        data: &[u8],
    ) -> Result<(), RecordingError> {
        match self {
            Tap::Raw => session.record(|r| r.output(channel, data)),
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
        data: &[u8],
        input: bool,
    ) -> Result<(), RecordingError> {
        let text = format!("channel {channel}: sftp not decodable ({why}); recording raw bytes");
        session.record(|r| r.note(&text))?;
        *self = Tap::Raw;
        if input {
            session.record(|r| r.input(channel, data))
        } else {
            session.record(|r| r.output(channel, data))
        }
    }

    /// The closing note of the channel, if the tap has one.
    fn finish(&mut self, session: &SessionHandle, channel: u32) {
        let lines = match self {
            Tap::Raw => return,
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

fn notes(session: &SessionHandle, channel: u32, lines: &[String]) -> Result<(), RecordingError> {
    for line in lines {
        session.record(|r| r.note(&format!("channel {channel}: {line}")))?;
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
pub(super) async fn relay(
    down: Channel<ServerMsg>,
    up: Channel<client::Msg>,
    open: &OpenSession,
    slot: &SessionSlot,
    downstream: &server::Handle,
    mut tap: Tap,
    pty: bool,
) {
    let session = &open.session;
    let channel = down.id().number();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    let mut live = session.live();
    let forward = matches!(tap, Tap::Forward { .. });
    loop {
        // Every arm is cancel-safe: `wait` on a channel only takes a message
        // off its queue when it completes, `ended` holds no state, and
        // `next_notice` pops only in the poll that returns it.
        tokio::select! {
            reason = live.ended() => {
                let _ = session.record(|r| r.note(&format!("session ended: {reason}")));
                if !forward {
                    let message = format!("\ndrawbridge: {reason}; closing the session");
                    let _ = down_tx.extended_data_bytes(1, fix_newlines(&message, pty).into_bytes()).await;
                    let _ = down_tx.exit_status(255).await;
                }
                let _ = down_tx.eof().await;
                break;
            }
            notice = slot.next_notice(), if !forward => {
                let _ = session.record(|r| r.note(&format!("channel {channel}: refused: {notice}")));
                let _ = down_tx.extended_data_bytes(1, fix_newlines(&format!("{notice}\n"), pty).into_bytes()).await;
            }
            msg = down_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    open.activity.touch();
                    if tap.input(session, channel, &data).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    if up_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = up_tx.eof().await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    open.activity.touch();
                    if session.record(|r| r.resize(channel, col_width, row_height)).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    let _ = up_tx.window_change(col_width, row_height, pix_width, pix_height).await;
                }
                Some(ChannelMsg::Signal { signal }) => {
                    let _ = session.record(|r| r.note(&format!("channel {channel}: signal {signal:?} sent")));
                    let _ = up_tx.signal(signal).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    open.activity.touch();
                    if tap.output(session, channel, &data).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    if down_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    open.activity.touch();
                    // stderr is always recorded raw: it is diagnostics, not file data.
                    if session.record(|r| r.output(channel, &data)).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    let _ = down_tx.extended_data_bytes(ext, data).await;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    let _ = session.record(|r| r.exit_status(channel, exit_status));
                    let _ = down_tx.exit_status(exit_status).await;
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                    let _ = session.record(|r| r.note(&format!("channel {channel}: killed by signal {signal_name:?}")));
                    let _ = downstream
                        .exit_signal_request(down_tx.id(), signal_name, core_dumped, error_message, lang_tag)
                        .await;
                }
                Some(ChannelMsg::Eof) => {
                    let _ = down_tx.eof().await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    tap.finish(session, channel);
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
