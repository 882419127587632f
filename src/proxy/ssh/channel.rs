//! One task per session channel: wait for the client to say what it wants (pty,
//! environment, shell, command, subsystem), open the session through the
//! pipeline, start the same on the target, then hand over to the relay.
//! Requests the gateway refuses (X11, agent forwarding) are answered in
//! `downstream`; here the client is told why, on the channel's stderr.

use std::sync::Arc;

use russh::server::{self, Msg as ServerMsg};
use russh::{Channel, ChannelMsg, Pty, client};

use super::SshFront;
use super::downstream::{OpenSession, SessionSlot};
use super::relay::{self, InputKept, Tap};
use super::scp::ScpDirection;
use crate::config::SshConfig;
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

/// What the client asked for before starting the channel.
struct Setup {
    pty: Option<PtyRequest>,
    /// Allowed variables, forwarded to the target.
    env: Vec<(String, String)>,
    /// Sentences for the client and the recording: refused requests, dropped
    /// variables.
    notices: Vec<String>,
    start: Start,
}

/// Decrements the connection's channel count however the task ends.
pub(super) struct Counted(tokio::sync::watch::Sender<usize>);

impl Counted {
    pub fn new(channels: &tokio::sync::watch::Sender<usize>) -> Counted {
        channels.send_modify(|n| *n += 1);
        Counted(channels.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub(super) async fn run(mut down: Channel<ServerMsg>, cx: ChannelContext) {
    let _counted = Counted::new(&cx.slot.channels);
    let Some(mut setup) = setup(&mut down, &cx.front).await else {
        return;
    };
    // Refusals of connection-wide requests (`-R`) come before any channel opens.
    setup.notices.extend(cx.slot.take_notices());
    let pty = setup.pty.is_some();
    let (login, target) = (cx.requested.0.as_str(), cx.requested.1.as_str());
    if pty && matches!(setup.start, Start::Shell) {
        let wait = cx.front.settings.request_wait;
        if let Err(message) = super::ask::ask_if_needed(&mut down, &cx, (login, target), wait).await
        {
            return refuse(&down, &message, pty).await;
        }
    }
    let open = match cx
        .slot
        .get_or_open(&cx.front, &cx.identity, (login, target), &cx.downstream)
        .await
    {
        Ok(open) => open,
        Err(message) => return refuse(&down, &message, pty).await,
    };
    let up = match start_upstream(&open, &setup).await {
        Ok(up) => up,
        Err(e) => {
            let message = format!("drawbridge: target {target} refused the channel: {e}");
            return refuse(&down, &message, pty).await;
        }
    };
    let channel = down.id().number();
    let tap = match &setup.start {
        Start::Subsystem(name) if name == "sftp" => Tap::Sftp(Box::default()),
        Start::Exec(command) => Tap::stream(
            input_kept(&cx.front.settings, pty),
            ScpDirection::of(&String::from_utf8_lossy(command)),
        ),
        _ => Tap::stream(input_kept(&cx.front.settings, pty), None),
    };
    if let Err(e) = record_start(&open.session, channel, &setup, &tap) {
        tracing::error!(session = open.session.id(), error = %e, "recording failed");
        return refuse(&down, &EndReason::RecordingFailed.to_string(), pty).await;
    }
    for notice in &setup.notices {
        relay::tell(&down, notice, pty).await;
    }
    relay::relay(down, up, &open, &cx.slot, &cx.downstream, tap, pty).await;
}

/// Collects pty and environment requests until the client asks for a shell, a
/// command or a subsystem. `None` if the channel closes first.
async fn setup(down: &mut Channel<ServerMsg>, front: &SshFront) -> Option<Setup> {
    let (mut pty, mut env, mut notices) = (None, Vec::new(), Vec::new());
    loop {
        let start = match down.wait().await? {
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
                });
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                if front.settings.env_allowed(&variable_name) {
                    env.push((variable_name, variable_value));
                } else {
                    tracing::debug!(name = variable_name, "environment variable not allowed");
                }
                continue;
            }
            ChannelMsg::RequestX11 { .. } => {
                notices
                    .push("drawbridge: X11 forwarding is not allowed through the gateway".into());
                continue;
            }
            ChannelMsg::AgentForward { .. } => {
                notices.push(
                    "drawbridge: agent forwarding is not allowed through the gateway (your keys stay on your machine)"
                        .into(),
                );
                continue;
            }
            ChannelMsg::RequestShell { .. } => Start::Shell,
            ChannelMsg::Exec { command, .. } => Start::Exec(command),
            ChannelMsg::RequestSubsystem { name, .. } => Start::Subsystem(name),
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            _ => continue,
        };
        return Some(Setup {
            pty,
            env,
            notices,
            start,
        });
    }
}

/// Tells the client why, on stderr, then ends the channel with exit status 1.
async fn refuse(down: &Channel<ServerMsg>, message: &str, pty: bool) {
    relay::tell(down, message, pty).await;
    let _ = down.exit_status(1).await;
    let _ = down.eof().await;
    let _ = down.close().await;
}

async fn start_upstream(
    open: &OpenSession,
    setup: &Setup,
) -> Result<Channel<client::Msg>, russh::Error> {
    let up = open.upstream.channel_open_session().await?;
    if let Some(p) = &setup.pty {
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
    // Sent without asking for a reply, as OpenSSH does: a target whose AcceptEnv
    // drops a variable does not fail the channel.
    for (name, value) in &setup.env {
        up.set_env(false, name.clone(), value.clone()).await?;
    }
    match &setup.start {
        Start::Shell => up.request_shell(false).await?,
        Start::Exec(command) => up.exec(false, command.clone()).await?,
        Start::Subsystem(name) => up.request_subsystem(false, name.clone()).await?,
    }
    Ok(up)
}

/// Keystrokes are kept whole (`[ssh] record_input`); a command's stdin, which is
/// often a file (`tar c | ssh … 'tar x'`, `scp -O`, `rsync`), up to
/// `[ssh] command_input_limit`, as SFTP file contents are not kept at all.
fn input_kept(settings: &SshConfig, pty: bool) -> InputKept {
    match settings.command_input_limit {
        _ if !settings.record_input => InputKept::Nothing,
        Some(limit) if !pty => InputKept::First(limit),
        _ => InputKept::All,
    }
}

fn record_start(
    session: &SessionHandle,
    channel: u32,
    setup: &Setup,
    tap: &Tap,
) -> Result<(), RecordingError> {
    if let Tap::Stream {
        kept: InputKept::Nothing,
        ..
    } = tap
    {
        // Said up front too, so a recording cut short by a crash still tells.
        let note = format!("channel {channel}: input is not recorded ([ssh] record_input = false)");
        session.record(|r| r.note(note))?;
    }
    if let Some(p) = &setup.pty {
        session.record(|r| r.pty(channel, &p.term, p.cols, p.rows))?;
    }
    for (name, _) in &setup.env {
        session.record(|r| r.note(format!("channel {channel}: env {name}")))?;
    }
    for notice in &setup.notices {
        session.record(|r| r.note(format!("channel {channel}: refused: {notice}")))?;
    }
    match &setup.start {
        Start::Shell => Ok(()),
        Start::Exec(command) => {
            session.record(|r| r.exec(channel, &String::from_utf8_lossy(command)))
        }
        Start::Subsystem(name) => {
            session.record(|r| r.note(format!("channel {channel}: subsystem {name}")))
        }
    }
}
