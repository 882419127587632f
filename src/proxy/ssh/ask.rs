//! Asking at the moment of need: an interactive shell without a grant, where the
//! policy lets the engineer request one, is asked on the terminal for a reason
//! and a duration; the request is filed (approvers are notified) and the
//! connection held until approvers decide, then it continues into the session,
//! or is refused with the decision. Non-interactive channels (commands,
//! subsystems, `BatchMode`) get the `drawbridge request …` command instead, so
//! scripts never hang on a prompt.
//!
//! The prompt runs on the session channel rather than as a keyboard-interactive
//! authentication prompt: that way a client without a terminal still gets the
//! refusal with the exact command, instead of a bare "Permission denied".

use std::time::Duration;

use russh::server::Msg as ServerMsg;
use russh::{Channel, ChannelMsg};

use super::channel::ChannelContext;
use crate::access::NewAccess;
use crate::store::{AccessRequestRow, RequestState};
use crate::time;

/// Longest reply we read at a prompt.
const MAX_LINE: usize = 200;
/// How often the pending request is looked at while the connection waits.
const POLL: Duration = Duration::from_millis(300);

async fn say(down: &Channel<ServerMsg>, text: &str) {
    let _ = down
        .data_bytes(text.replace('\n', "\r\n").into_bytes())
        .await;
}

/// What the engineer typed, across prompts: a chunk may hold more than one line.
#[derive(Default)]
struct Typed(std::collections::VecDeque<u8>);

/// Reads one line typed on the client's terminal (raw mode: we echo). `None`
/// on Ctrl-C, Ctrl-D or a closed channel.
async fn read_line(
    down: &mut Channel<ServerMsg>,
    typed: &mut Typed,
    prompt: &str,
) -> Option<String> {
    say(down, prompt).await;
    let mut line = Vec::new();
    loop {
        while let Some(byte) = typed.0.pop_front() {
            match byte {
                b'\r' | b'\n' => {
                    say(down, "\n").await;
                    return Some(String::from_utf8_lossy(&line).trim().to_string());
                }
                0x03 | 0x04 => {
                    say(down, "^C\n").await;
                    return None;
                }
                0x7f | 0x08 if line.pop().is_some() => {
                    let _ = down.data_bytes(&b"\x08 \x08"[..]).await;
                }
                b if b >= 0x20 && line.len() < MAX_LINE => {
                    line.push(b);
                    let _ = down.data_bytes(vec![b]).await;
                }
                _ => {}
            }
        }
        match down.wait().await? {
            ChannelMsg::Data { data } => typed.0.extend(data.iter()),
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

/// Ok when the session may proceed (nothing to ask, or the request was
/// approved); Err with the message for the client otherwise.
pub(super) async fn ask_if_needed(
    down: &mut Channel<ServerMsg>,
    cx: &ChannelContext,
    (login, target): (&str, &str),
    wait: Duration,
) -> Result<(), String> {
    let access = cx.front.pipeline.access();
    let now = time::now();
    if !access
        .may_ask_at_connect(&cx.identity, target, login, now)
        .await
    {
        return Ok(());
    }
    let pending = cx
        .front
        .store
        .requests_for(cx.identity.user().id, target, login)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.state == RequestState::Pending));
    let request = match pending {
        Some(request) => {
            say(
                down,
                &format!(
                    "drawbridge: your request {} for {login}@{target} is pending.\n",
                    request.id
                ),
            )
            .await;
            request
        }
        None => file(down, cx, (login, target)).await?,
    };
    let approvers = access
        .eligible_approvers(&request)
        .await
        .map(|names| names.join(", "))
        .unwrap_or_default();
    say(
        down,
        &format!(
            "drawbridge: waiting up to {} for approval ({} needed); approvers have been notified ({approvers}). Ctrl-C gives up.\n",
            humantime::format_duration(wait),
            request.approvals_required
        ),
    )
    .await;
    let decided = wait_for_decision(down, cx, request.id, wait).await?;
    if decided.state == RequestState::Approved {
        say(
            down,
            &format!(
                "drawbridge: request {} approved by {}; connecting to {login}@{target}.\n",
                decided.id,
                decided.approved_by.join(", ")
            ),
        )
        .await;
        return Ok(());
    }
    Err(format!(
        "drawbridge: request {} was {}{}{}",
        decided.id,
        decided.state.as_str(),
        decided
            .decided_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default(),
        decided
            .comment
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    ))
}

async fn file(
    down: &mut Channel<ServerMsg>,
    cx: &ChannelContext,
    (login, target): (&str, &str),
) -> Result<AccessRequestRow, String> {
    say(
        down,
        &format!("drawbridge: you have no active grant for {login}@{target}.\n"),
    )
    .await;
    let cancelled = || "drawbridge: no request filed".to_string();
    let mut typed = Typed::default();
    let reason = read_line(down, &mut typed, "Reason (empty to cancel): ")
        .await
        .ok_or_else(cancelled)?;
    if reason.is_empty() {
        return Err(cancelled());
    }
    let duration = read_line(down, &mut typed, "Duration [1h]: ")
        .await
        .ok_or_else(cancelled)?;
    let duration = if duration.is_empty() {
        "1h".to_string()
    } else {
        duration
    };
    let duration = time::parse_duration(&duration).map_err(|e| format!("drawbridge: {e}"))?;
    let ask = NewAccess {
        target,
        login,
        duration,
        reason: &reason,
        ticket: None,
    };
    let row = cx
        .front
        .pipeline
        .access()
        .request(&cx.identity, ask, time::now())
        .await
        .map_err(|e| format!("drawbridge: {e}"))?;
    say(down, &format!("drawbridge: request {} filed.\n", row.id)).await;
    Ok(row)
}

/// Polls the request until it is decided; Ctrl-C or a closed channel cancels it.
async fn wait_for_decision(
    down: &mut Channel<ServerMsg>,
    cx: &ChannelContext,
    id: i64,
    wait: Duration,
) -> Result<AccessRequestRow, String> {
    let access = cx.front.pipeline.access();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match cx.front.store.request(id).await {
            Ok(Some(row)) if row.state != RequestState::Pending => return Ok(row),
            Ok(_) => {}
            Err(e) => return Err(format!("drawbridge: {e}")),
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = access.cancel(&cx.identity, id, time::now()).await;
            return Err(format!(
                "drawbridge: nobody decided on request {id} in time; it was cancelled"
            ));
        }
        // Both arms are cancel-safe: a sleep, and `wait` takes a message only
        // when it completes.
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            msg = down.wait() => match msg {
                Some(ChannelMsg::Data { data }) if data.contains(&0x03) => {
                    let _ = access.cancel(&cx.identity, id, time::now()).await;
                    return Err(format!("drawbridge: request {id} cancelled"));
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    let _ = access.cancel(&cx.identity, id, time::now()).await;
                    return Err(format!("drawbridge: request {id} cancelled"));
                }
                _ => {}
            },
        }
    }
}
