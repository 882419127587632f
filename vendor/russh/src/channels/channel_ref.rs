use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::{SendError, TrySendError};

use super::WindowSizeRef;
use crate::ChannelMsg;

/// Past this, a peer is sending far beyond the window it was given; what it
/// sends more is dropped rather than held.
const MAX_HELD_BYTES: usize = 64 << 20;

/// Held data is merged into chunks of up to this size.
const MAX_HELD_CHUNK: usize = 1 << 20;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    held: Mutex<HeldBack>,
}

/// Messages for a reader whose queue is full, in order. The session loop
/// never waits for one channel's reader: it holds them here and moves them on
/// when the reader reports progress (`ChannelMsg::Consumed`). Because windows
/// follow consumption, the data held is bounded by the channel's window.
#[derive(Debug, Default)]
struct HeldBack {
    queue: VecDeque<Held>,
    bytes: usize,
}

#[derive(Debug)]
enum Held {
    Data(BytesMut),
    ExtendedData(u32, BytesMut),
    Other(ChannelMsg),
}

impl Held {
    fn into_msg(self) -> ChannelMsg {
        match self {
            Held::Data(data) => ChannelMsg::Data {
                data: data.freeze(),
            },
            Held::ExtendedData(ext, data) => ChannelMsg::ExtendedData {
                data: data.freeze(),
                ext,
            },
            Held::Other(msg) => msg,
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Held::Data(d) | Held::ExtendedData(_, d) => d.len(),
            Held::Other(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                data.len()
            }
            Held::Other(_) => 0,
        }
    }
}

impl HeldBack {
    fn hold(&mut self, msg: ChannelMsg) {
        let (ext, data) = match msg {
            ChannelMsg::Data { data } => (None, data),
            ChannelMsg::ExtendedData { data, ext } => (Some(ext), data),
            other => {
                self.queue.push_back(Held::Other(other));
                return;
            }
        };
        if self.bytes + data.len() > MAX_HELD_BYTES {
            log::warn!("peer exceeds its channel window; dropping {} bytes", data.len());
            return;
        }
        self.bytes += data.len();
        match (self.queue.back_mut(), ext) {
            (Some(Held::Data(last)), None) if last.len() < MAX_HELD_CHUNK => {
                last.extend_from_slice(&data)
            }
            (Some(Held::ExtendedData(e, last)), Some(ext))
                if *e == ext && last.len() < MAX_HELD_CHUNK =>
            {
                last.extend_from_slice(&data)
            }
            (_, None) => self.queue.push_back(Held::Data(owned(data))),
            (_, Some(ext)) => self.queue.push_back(Held::ExtendedData(ext, owned(data))),
        }
    }
}

fn owned(data: Bytes) -> BytesMut {
    BytesMut::from(&data[..])
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self::with_window(sender, WindowSizeRef::new(0))
    }

    pub(super) fn with_window(sender: Sender<ChannelMsg>, window_size: WindowSizeRef) -> Self {
        Self {
            sender,
            window_size,
            held: Mutex::new(HeldBack::default()),
        }
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }

    /// Queues `msg` for the channel's reader without waiting for room, so
    /// the session loop is never blocked by one slow reader.
    pub async fn send(&self, msg: ChannelMsg) -> Result<(), SendError<ChannelMsg>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !held.queue.is_empty() {
            held.hold(msg);
            return Ok(());
        }
        match self.sender.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => {
                held.hold(msg);
                Ok(())
            }
            Err(TrySendError::Closed(msg)) => Err(SendError(msg)),
        }
    }

    /// Moves held messages to the reader's queue as far as it has room.
    pub(crate) fn release_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(next) = held.queue.pop_front() {
            let len = next.data_len();
            // A message that finds no room goes back first in line as it is.
            match self.sender.try_send(next.into_msg()) {
                Ok(()) => held.bytes -= len,
                Err(TrySendError::Full(msg)) => {
                    held.queue.push_front(Held::Other(msg));
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    *held = HeldBack::default();
                    return;
                }
            }
        }
    }
}

/// A channel the session has removed (its peer closed it) may still hold
/// messages for a slow reader: its last data, exit status, EOF and Close. A task
/// delivers them in order as the reader takes them, instead of losing them with
/// the channel (which cut the tail off downloads whose reader lagged).
impl Drop for ChannelRef {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|e| e.into_inner()));
        if held.queue.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sender = self.sender.clone();
        runtime.spawn(async move {
            for msg in held.queue {
                if sender.send(msg.into_msg()).await.is_err() {
                    return;
                }
            }
        });
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
