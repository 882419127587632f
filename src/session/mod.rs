//! The session pipeline and the registry of live sessions.
//!
//! [`Pipeline::open`] is the one place that owns the order of the stages:
//! authorize → credential → connect → start recording and register. Identify
//! happens before (the protocol front does it during its own handshake and hands
//! over an [`Identity`](crate::identity::Identity)); relay happens after, in the
//! protocol module, which must record through [`SessionHandle`] and stop when
//! [`LiveSession::ended`] fires.

mod enforce;
mod error;
mod limits;
mod pipeline;
mod registry;

pub use enforce::enforce;
pub use error::{SessionError, Side, UpstreamError};
pub use limits::{Activity, Limits, enforce_limits};
pub use pipeline::{Established, Pipeline, RecordingSetup, SessionHandle, Upstream};
pub use registry::{EndReason, LiveInfo, LiveSession, Registry};

/// A short random id, e.g. `s-3f9a1c0b7d2e4f60`; names the recording file too.
pub fn new_session_id() -> Result<String, crate::keys::KeyError> {
    let bytes = crate::keys::random_bytes::<8>()?;
    Ok(format!(
        "s-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}
