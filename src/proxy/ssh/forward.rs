//! Local port forwarding (`ssh -L`, `ssh -W`, ProxyJump): a `direct-tcpip`
//! channel from the engineer becomes a `direct-tcpip` channel on the session's
//! own upstream connection, so the connection to the destination starts on the
//! target, as it would without the gateway. Each one is a separate policy
//! decision (Cedar action `forward`) and is recorded by destination, byte
//! counts and duration, not content.
//!
//! The channel open is answered only after the decision, from this task: the
//! connection's event loop never waits for the pipeline.

use std::time::Instant;

use russh::server::{ChannelOpenHandle, Msg as ServerMsg};
use russh::{Channel, ChannelOpenFailure};

use super::channel::{ChannelContext, Counted};
use super::relay::{self, Tap};
use crate::time;

/// Where the client asked to go and where it says it came from.
pub(super) struct Destination {
    pub host: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

pub(super) async fn run(
    down: Channel<ServerMsg>,
    reply: ChannelOpenHandle,
    dest: Destination,
    cx: ChannelContext,
) {
    let _counted = Counted::new(&cx.slot.channels);
    let (login, target) = (cx.requested.0.as_str(), cx.requested.1.as_str());
    let destination = format!("{}:{}", dest.host, dest.port);
    let open = match cx
        .slot
        .get_or_open(&cx.front, &cx.identity, (login, target), &cx.downstream)
        .await
    {
        Ok(open) => open,
        Err(message) => {
            cx.slot.notify(message);
            return reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
    };
    let channel = down.id().number();
    let decision = cx
        .front
        .pipeline
        .access()
        .authorize_forward(
            &cx.identity,
            target,
            login,
            (&dest.host, dest.port),
            time::now(),
        )
        .await;
    let policies = match decision {
        Ok(policies) => policies,
        Err(e) => {
            tracing::info!(session = open.session.id(), %destination, error = %e, "forward refused");
            let _ = open.session.record(|r| {
                r.note(format!(
                    "channel {channel}: forward to {destination} refused: {e}"
                ))
            });
            cx.slot.notify(format!("drawbridge: {e}"));
            return reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
    };
    let up = match open
        .upstream
        .channel_open_direct_tcpip(
            dest.host.clone(),
            dest.port,
            dest.originator.clone(),
            dest.originator_port,
        )
        .await
    {
        Ok(up) => up,
        Err(e) => {
            let _ = open.session.record(|r| {
                r.note(format!(
                    "channel {channel}: forward to {destination} failed on the target: {e}"
                ))
            });
            return reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
    };
    let recorded = open.session.record(|r| {
        r.note(format!(
            "channel {channel}: forward to {destination} opened (from {}:{}; policy: {})",
            dest.originator,
            dest.originator_port,
            policies.join(", ")
        ))
    });
    if recorded.is_err() {
        let _ = up.close().await;
        return reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }
    reply.accept().await;
    let tap = Tap::Forward {
        destination,
        started: Instant::now(),
        sent: 0,
        received: 0,
    };
    relay::relay(down, up, &open, &cx.slot, &cx.downstream, tap, false).await;
}
