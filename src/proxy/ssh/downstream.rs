//! The engineer's side of an SSH connection: identify by public key, parse
//! `LOGIN@TARGET`, accept session and `direct-tcpip` channels and hand each to
//! its own task. The upstream session is opened once per connection, by the
//! first channel that needs it. Remote forwarding (`-R`), agent forwarding and
//! X11 are refused here, and the client is told why on its session channel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::Certificate;
use russh::server::{
    self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, Disconnect};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify, watch};

use super::SshFront;
use super::channel::{self, ChannelContext};
use super::forward::{self, Destination};
use super::upstream::UpstreamConnection;
use crate::identity::{self, Identity, IdentityError, Subject};
use crate::session::{Activity, Limits, SessionHandle, enforce_limits};

/// `root@web-1` → login `root`, target `web-1`, split at the last `@` like every
/// stock client does with `root@web-1@gateway`.
pub fn split_username(user: &str) -> Option<(&str, &str)> {
    let (login, target) = user.rsplit_once('@')?;
    (!login.is_empty() && !target.is_empty()).then_some((login, target))
}

/// Queued refusal messages per connection (see `SessionSlot::notices`).
const MAX_NOTICES: usize = 16;

/// The upstream session shared by all channels of one connection.
pub(super) struct OpenSession {
    pub upstream: UpstreamConnection,
    pub session: SessionHandle,
    /// Touched by every relay; the idle timeout reads it.
    pub activity: Arc<Activity>,
    /// How long before the grant's end interactive channels are warned.
    pub warn_before: Duration,
}

enum Slot {
    Empty,
    Open(Arc<OpenSession>),
    Ended(String),
}

pub(super) struct SessionSlot {
    slot: Mutex<Slot>,
    /// Number of channel tasks still running; the end-of-session watcher waits
    /// for them to tell their clients why before it disconnects.
    pub channels: watch::Sender<usize>,
    /// Refusals the client should read (e.g. of `-R`, which has no channel of
    /// its own); the next session channel prints them on stderr. At most
    /// [`MAX_NOTICES`] wait; a client that provokes more loses the extras.
    notices: SyncMutex<Vec<String>>,
    notice_ready: Notify,
}

impl SessionSlot {
    /// The connection's upstream session, opened through the pipeline on first use.
    /// Returns the message for the client when it cannot be had.
    pub async fn get_or_open(
        self: &Arc<Self>,
        front: &Arc<SshFront>,
        identity: &Identity,
        (login, target): (&str, &str),
        downstream: &server::Handle,
    ) -> Result<Arc<OpenSession>, String> {
        // Held across the pipeline on purpose: a second channel waits for the first
        // to finish opening instead of opening a second upstream session.
        let mut slot = self.slot.lock().await;
        match &*slot {
            Slot::Open(open) => return Ok(open.clone()),
            Slot::Ended(message) => return Err(message.clone()),
            Slot::Empty => {}
        }
        let established = front
            .pipeline
            .open(identity.clone(), target, login, &front.upstream)
            .await
            .map_err(|e| {
                tracing::info!(user = identity.name(), target, login, side = ?e.side(), error = %e, "session refused");
                e.client_message()
            })?;
        let open = Arc::new(OpenSession {
            upstream: established.connection,
            session: established.session,
            activity: Arc::new(Activity::default()),
            warn_before: front.settings.grant_end_warning,
        });
        *slot = Slot::Open(open.clone());
        let limits = Limits {
            idle_timeout: front.settings.idle_timeout,
            max_session: front.settings.max_session,
        };
        tokio::spawn(enforce_limits(
            open.session.clone(),
            open.activity.clone(),
            limits,
        ));
        tokio::spawn(watch_end(self.clone(), open.clone(), downstream.clone()));
        Ok(open)
    }

    /// Queues a sentence for the client's next session channel.
    pub fn notify(&self, notice: String) {
        let mut queue = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= MAX_NOTICES {
            return;
        }
        queue.push(notice);
        drop(queue);
        // notify_one stores a permit when nobody waits yet: no lost wake-up.
        self.notice_ready.notify_one();
    }

    /// The next queued notice. Cancel-safe: the queue is popped only in the
    /// poll that returns the notice.
    pub async fn next_notice(&self) -> String {
        loop {
            if let Some(notice) = self.take_notice() {
                return notice;
            }
            self.notice_ready.notified().await;
        }
    }

    /// Every queued notice, for a channel that is starting.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_notice(&self) -> Option<String> {
        let mut queue = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        (!queue.is_empty()).then(|| queue.remove(0))
    }

    /// Ends the upstream session (idempotent): disconnects the target and seals the
    /// recording with `reason`.
    pub async fn finish(&self, reason: &str) {
        let previous = std::mem::replace(
            &mut *self.slot.lock().await,
            Slot::Ended(format!("drawbridge: {reason}")),
        );
        if let Slot::Open(open) = previous {
            let _ = open
                .upstream
                .disconnect(Disconnect::ByApplication, reason, "en")
                .await;
            open.session.finish(reason).await;
        }
    }
}

/// Waits for the session to be ended (grant expiry, revoke, kill, disable), lets
/// the channel tasks deliver their message, then closes the connection.
async fn watch_end(slot: Arc<SessionSlot>, open: Arc<OpenSession>, downstream: server::Handle) {
    let reason = open.session.live().ended().await.to_string();
    let mut channels = slot.channels.subscribe();
    // Bounded: a client that does not read must not keep the session alive.
    let _ = tokio::time::timeout(Duration::from_secs(1), channels.wait_for(|n| *n == 0)).await;
    slot.finish(&reason).await;
    let _ = downstream
        .disconnect(
            Disconnect::ByApplication,
            format!("drawbridge: {reason}"),
            "en".into(),
        )
        .await;
}

struct Downstream {
    front: Arc<SshFront>,
    peer: SocketAddr,
    identity: Option<Identity>,
    requested: Option<(String, String)>,
    slot: Arc<SessionSlot>,
    /// The username of a refused key or certificate. A connection that ends
    /// without logging in counts as one failed attempt for it (see `Drop`),
    /// however many keys its client offered: agents hold several, and OpenSSH
    /// offers a key before its certificate.
    refused: Option<String>,
    /// Key verified, TOTP still owed (policy asks for MFA at connect).
    awaiting_totp: Option<Identity>,
}

pub(super) async fn serve(front: Arc<SshFront>, stream: TcpStream, peer: SocketAddr) {
    let (channels, _) = watch::channel(0);
    let slot = Arc::new(SessionSlot {
        slot: Mutex::new(Slot::Empty),
        channels,
        notices: SyncMutex::new(Vec::new()),
        notice_ready: Notify::new(),
    });
    let handler = Downstream {
        front: front.clone(),
        peer,
        identity: None,
        requested: None,
        slot: slot.clone(),
        refused: None,
        awaiting_totp: None,
    };
    match server::run_stream(front.config.clone(), stream, handler).await {
        Ok(running) => {
            if let Err(e) = running.await {
                tracing::debug!(%peer, error = %e, "ssh connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(%peer, error = %e, "ssh handshake failed"),
    }
    // Let the channel tasks see the end and write their closing records (a
    // forward's byte counts, files still open) before the recording is sealed.
    // Bounded, so a stuck task cannot keep the session open.
    let mut channels = slot.channels.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(1), channels.wait_for(|n| *n == 0)).await;
    slot.finish("client disconnected").await;
}

/// The handler is dropped when its connection ends: the moment to count a
/// connection that never logged in after something was refused.
impl Drop for Downstream {
    fn drop(&mut self) {
        if let (None, Some(user)) = (&self.identity, self.refused.take()) {
            let subjects = [Subject::User(user), Subject::Address(self.peer.ip())];
            self.front.limiter.failed(&subjects, Instant::now());
        }
    }
}

impl Downstream {
    /// Whether `user` may try a credential at all: the username names a login
    /// and a target, and neither it nor the address has failed too often lately.
    fn admissible(&self, user: &str) -> bool {
        let subjects = [
            Subject::User(user.to_string()),
            Subject::Address(self.peer.ip()),
        ];
        if self.front.limiter.check(&subjects, Instant::now()).is_err() {
            tracing::warn!(peer = %self.peer, user, "ssh authentication refused: too many failed attempts");
            return false;
        }
        split_username(user).is_some()
    }

    /// Logs a refused key or certificate and remembers it for the failure count.
    fn refuse(&mut self, user: &str, credential: &str, error: &IdentityError) -> Auth {
        tracing::info!(peer = %self.peer, user, credential, error = %error, "ssh credential refused");
        self.refused = Some(user.to_string());
        Auth::reject()
    }

    /// A key or certificate identified `identity`: done, unless policy wants a
    /// TOTP code for this connect (then keyboard-interactive must follow).
    async fn identified(&mut self, user: &str, identity: Identity) -> Auth {
        let Some((login, target)) = split_username(user) else {
            return Auth::reject();
        };
        tracing::info!(peer = %self.peer, user = identity.name(), login, target, credential = %identity.describe(), "ssh user identified");
        self.requested = Some((login.to_string(), target.to_string()));
        let access = self.front.pipeline.access();
        if access
            .connect_requires_mfa(&identity, target, login, crate::time::now())
            .await
        {
            // Like OpenSSH's `AuthenticationMethods publickey,keyboard-interactive`:
            // the key or certificate counted, a TOTP code must follow.
            self.awaiting_totp = Some(identity);
            return Auth::Reject {
                proceed_with_methods: Some((&[russh::MethodKind::KeyboardInteractive][..]).into()),
                partial_success: true,
            };
        }
        self.identity = Some(identity);
        Auth::Accept
    }
}

impl server::Handler for Downstream {
    type Error = russh::Error;

    /// Nothing about the key is checked here: russh hands a certificate's offer
    /// over as the bare key it certifies, so an unregistered key may still come
    /// with a valid certificate. Keys and certificates are checked once the
    /// client has proven possession (`auth_publickey`, `auth_openssh_certificate`).
    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        _: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.admissible(user) {
            true => Auth::Accept,
            false => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.admissible(user) {
            return Ok(Auth::reject());
        }
        let store = self.front.store.as_ref();
        Ok(match identity::by_public_key(store, key.public_key).await {
            Ok(identity) => self.identified(user, identity).await,
            Err(e) => {
                let credential = format!("key {}", identity::fingerprint(key.public_key));
                self.refuse(user, &credential, &e)
            }
        })
    }

    /// A user certificate signed by the engineer CA (`drawbridge login`).
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if !self.admissible(user) {
            return Ok(Auth::reject());
        }
        let (store, ca) = (self.front.store.as_ref(), &self.front.engineer_ca);
        let now = crate::time::now();
        Ok(
            match identity::by_certificate(store, certificate, ca, now).await {
                Ok(identity) => self.identified(user, identity).await,
                Err(e) => {
                    let credential = format!(
                        "certificate serial={} id={:?}",
                        certificate.serial(),
                        certificate.key_id()
                    );
                    self.refuse(user, &credential, &e)
                }
            },
        )
    }

    /// The TOTP prompt after a verified key, where policy requires MFA.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(identity) = self.awaiting_totp.clone() else {
            return Ok(Auth::reject());
        };
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: "Drawbridge".into(),
                instructions: "This target requires a second factor.".into(),
                prompts: vec![("TOTP code: ".into(), false)].into(),
            });
        };
        let code = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        let store = self.front.store.as_ref();
        match identity::second_factor(store, &identity, &code, crate::time::now()).await {
            Ok(()) => {
                tracing::info!(peer = %self.peer, user = identity.name(), "ssh second factor accepted");
                self.awaiting_totp = None;
                self.identity = Some(identity);
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, user = identity.name(), error = %e, "ssh second factor refused");
                self.awaiting_totp = None;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(identity), Some(requested)) = (self.identity.clone(), self.requested.clone())
        else {
            // Dropping `reply` refuses the channel.
            return Ok(());
        };
        reply.accept().await;
        let context = ChannelContext {
            front: self.front.clone(),
            slot: self.slot.clone(),
            identity,
            requested,
            downstream: session.handle(),
        };
        // Never await the relay here: the connection's event loop is waiting on
        // this callback.
        tokio::spawn(channel::run(channel, context));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(identity), Some(requested)) = (self.identity.clone(), self.requested.clone())
        else {
            return Ok(());
        };
        let context = ChannelContext {
            front: self.front.clone(),
            slot: self.slot.clone(),
            identity,
            requested,
            downstream: session.handle(),
        };
        let destination = Destination {
            host: host_to_connect.to_string(),
            port: port_to_connect,
            originator: originator_address.to_string(),
            originator_port,
        };
        // The task answers `reply` after the policy decision.
        tokio::spawn(forward::run(channel, reply, destination, context));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, address, port = *port, "remote forwarding refused");
        self.slot.notify(format!(
            "drawbridge: remote port forwarding (-R {address}:{port}) is not allowed through the gateway"
        ));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, socket_path, "remote socket forwarding refused");
        self.slot.notify(format!(
            "drawbridge: remote socket forwarding (-R {socket_path}) is not allowed through the gateway"
        ));
        Ok(false)
    }

    // Refused with a failure reply (OpenSSH waits for one); the channel task
    // tells the client why.
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _: bool,
        _: &str,
        _: &str,
        _: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(&mut self, _: ChannelId, _: &mut Session) -> Result<bool, Self::Error> {
        Ok(false)
    }

    // The channel task acts on these requests; here we only acknowledge them so the
    // client proceeds. A refusal is then explained on the channel's stderr.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _: &str,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::split_username;

    #[test]
    fn usernames_split_at_the_last_at() {
        assert_eq!(split_username("root@web-1"), Some(("root", "web-1")));
        assert_eq!(split_username("a@b@web-1"), Some(("a@b", "web-1")));
        assert_eq!(split_username("root"), None);
        assert_eq!(split_username("@web-1"), None);
        assert_eq!(split_username("root@"), None);
    }
}
