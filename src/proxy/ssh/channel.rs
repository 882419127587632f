//! One task per session channel: wait for the client to say what it wants (pty,
//! shell, command, subsystem), open the session through the pipeline, then relay
//! both ways and record, until either side closes or the session is ended.

use std::sync::Arc;

use russh::server::{self, Msg as ServerMsg};
use russh::{Channel, ChannelMsg, Pty, client};

use super::SshFront;
use super::downstream::{OpenSession, SessionSlot};
use crate::identity::Identity;
use crate::recording::RecordingError;
use crate::session::{EndReason, SessionHandle};

pub(super) struct ChannelContext {
    pub front: Arc<SshFront>,
    pub slot: Arc<SessionSlot>,
    pub identity: Identity,
    /// (login, target)
    pub requested: (String, String),
    pub downstream: server::Handle,
}

struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

enum Start {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

/// Decrements the connection's channel count however the task ends.
struct Counted(tokio::sync::watch::Sender<usize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub(super) async fn run(mut down: Channel<ServerMsg>, cx: ChannelContext) {
    cx.slot.channels.send_modify(|n| *n += 1);
    let _counted = Counted(cx.slot.channels.clone());

    let Some((pty, start)) = setup(&mut down).await else {
        return;
    };
    let (login, target) = (cx.requested.0.as_str(), cx.requested.1.as_str());
    let open = match cx
        .slot
        .get_or_open(&cx.front, &cx.identity, (login, target), &cx.downstream)
        .await
    {
        Ok(open) => open,
        Err(message) => return refuse(&down, &message, pty.is_some()).await,
    };
    let up = match start_upstream(&open, pty.as_ref(), &start).await {
        Ok(up) => up,
        Err(e) => {
            let message = format!("drawbridge: target {target} refused the channel: {e}");
            return refuse(&down, &message, pty.is_some()).await;
        }
    };
    let channel = down.id().number();
    if let Err(e) = record_start(&open.session, channel, pty.as_ref(), &start) {
        tracing::error!(session = open.session.id(), error = %e, "recording failed");
        return refuse(
            &down,
            &EndReason::RecordingFailed.to_string(),
            pty.is_some(),
        )
        .await;
    }
    relay(down, up, &open.session, &cx.downstream, pty.is_some()).await;
}

/// Collects the pty request until the client asks for a shell, a command or a
/// subsystem. `None` if the channel closes first.
async fn setup(down: &mut Channel<ServerMsg>) -> Option<(Option<PtyRequest>, Start)> {
    let mut pty = None;
    loop {
        match down.wait().await? {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                })
            }
            ChannelMsg::RequestShell { .. } => return Some((pty, Start::Shell)),
            ChannelMsg::Exec { command, .. } => return Some((pty, Start::Exec(command))),
            ChannelMsg::RequestSubsystem { name, .. } => {
                return Some((pty, Start::Subsystem(name)));
            }
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            _ => {}
        }
    }
}

/// Tells the client why, on stderr, then ends the channel with exit status 1.
async fn refuse(down: &Channel<ServerMsg>, message: &str, pty: bool) {
    let newline = if pty { "\r\n" } else { "\n" };
    let text = format!("{}{newline}", message.replace('\n', newline));
    let _ = down.extended_data(1, text.as_bytes()).await;
    let _ = down.exit_status(1).await;
    let _ = down.eof().await;
    let _ = down.close().await;
}

async fn start_upstream(
    open: &OpenSession,
    pty: Option<&PtyRequest>,
    start: &Start,
) -> Result<Channel<client::Msg>, russh::Error> {
    let up = open.upstream.channel_open_session().await?;
    if let Some(p) = pty {
        up.request_pty(
            false,
            &p.term,
            p.cols,
            p.rows,
            p.pix_width,
            p.pix_height,
            &p.modes,
        )
        .await?;
    }
    match start {
        Start::Shell => up.request_shell(false).await?,
        Start::Exec(command) => up.exec(false, command.clone()).await?,
        Start::Subsystem(name) => up.request_subsystem(false, name.clone()).await?,
    }
    Ok(up)
}

fn record_start(
    session: &SessionHandle,
    channel: u32,
    pty: Option<&PtyRequest>,
    start: &Start,
) -> Result<(), RecordingError> {
    if let Some(p) = pty {
        session.record(|r| r.pty(channel, &p.term, p.cols, p.rows))?;
    }
    match start {
        Start::Shell => Ok(()),
        Start::Exec(command) => {
            session.record(|r| r.exec(channel, &String::from_utf8_lossy(command)))
        }
        Start::Subsystem(name) => {
            session.record(|r| r.note(&format!("channel {channel}: subsystem {name}")))
        }
    }
}

/// Relays until one side closes or the session is ended. Every chunk is recorded
/// before it is forwarded, so the recording never lags what the client saw; a
/// recording failure ends the session (fail closed).
async fn relay(
    down: Channel<ServerMsg>,
    up: Channel<client::Msg>,
    session: &SessionHandle,
    downstream: &server::Handle,
    pty: bool,
) {
    let channel = down.id().number();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    let mut live = session.live();
    loop {
        // All three arms are cancel-safe: `wait` on a channel only takes a message
        // off its queue when it completes, and `ended` holds no state.
        tokio::select! {
            reason = live.ended() => {
                let _ = session.record(|r| r.note(&format!("session ended: {reason}")));
                let newline = if pty { "\r\n" } else { "\n" };
                let message = format!("{newline}drawbridge: {reason}; closing the session{newline}");
                let _ = down_tx.extended_data(1, message.as_bytes()).await;
                let _ = down_tx.exit_status(255).await;
                let _ = down_tx.eof().await;
                let _ = down_tx.close().await;
                let _ = up_tx.close().await;
                return;
            }
            msg = down_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if session.record(|r| r.input(channel, &data)).is_err() {
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
                    if session.record(|r| r.resize(channel, col_width, row_height)).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    let _ = up_tx.window_change(col_width, row_height, pix_width, pix_height).await;
                }
                Some(ChannelMsg::Signal { signal }) => {
                    let _ = up_tx.signal(signal).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            msg = up_rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if session.record(|r| r.output(channel, &data)).is_err() {
                        session.end(EndReason::RecordingFailed);
                        continue;
                    }
                    if down_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
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
    let _ = down_tx.close().await;
    let _ = up_tx.close().await;
}
