//! The engineer's side of a PostgreSQL connection: TLS (after SSLRequest, or
//! direct as PostgreSQL 17 clients may do), startup, `ROLE@TARGET`, the token as
//! cleartext password inside TLS, then the session pipeline. Every refusal is an
//! ErrorResponse with a SQLSTATE and a hint saying what to do next.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::upstream::{self, PostgresUpstream};
use super::wire::{self, Startup};
use super::{PostgresFront, Stream, relay};
use crate::access::AccessError;
use crate::identity;
use crate::session::{Activity, Limits, SessionError, Side, enforce_limits};

/// The first byte of a TLS ClientHello: a client starting TLS without SSLRequest.
const TLS_HANDSHAKE: u8 = 0x16;
/// What PostgreSQL 17 clients offer in a direct TLS handshake.
const POSTGRESQL_ALPN: &[u8] = b"postgresql";
/// A password message carries a token: anything longer is not one.
const PASSWORD_FRAME_LIMIT: usize = 4096;

/// Why the handshake stopped early; only logged (the client was told already).
#[derive(Debug, thiserror::Error)]
enum FrontError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Refused(String),
}

pub(super) async fn serve(front: Arc<PostgresFront>, tcp: TcpStream, peer: SocketAddr) {
    if let Err(e) = handle(&front, tcp, peer).await {
        tracing::info!(%peer, error = %e, "postgres connection ended");
    }
}

async fn handle(front: &PostgresFront, tcp: TcpStream, peer: SocketAddr) -> Result<(), FrontError> {
    let mut buf = BytesMut::with_capacity(1024);
    // Everything the client sends before its password shares one deadline.
    let deadline = Instant::now() + front.login_timeout;
    let (mut stream, tls, first) = before(deadline, negotiate(front, tcp, &mut buf)).await?;
    let startup = match first {
        Some(packet) => packet,
        None => before(deadline, read_startup(&mut stream, &mut buf)).await?,
    };
    let (minor, params) = match startup {
        Startup::Cancel { pid, secret } => {
            if let Some(key) = front.cancels.lookup(pid, secret) {
                upstream::cancel(&key, front.connect_timeout).await?;
                tracing::info!(%peer, pid, "cancel request forwarded");
            }
            return Ok(());
        }
        Startup::Startup { minor, params } => (minor, params),
        Startup::SslRequest | Startup::GssEncRequest => {
            return refuse(
                &mut stream,
                "08P01",
                "encryption was already negotiated",
                "",
            )
            .await;
        }
    };
    let plaintext_allowed = front.allow_plaintext_loopback && peer.ip().is_loopback();
    if !tls && !plaintext_allowed {
        return refuse(
            &mut stream,
            "28000",
            "drawbridge requires TLS: your token must not cross the network in clear",
            "connect with sslmode=require",
        )
        .await;
    }
    let mut out = BytesMut::new();
    let mut passed = Vec::new();
    let (mut user, mut database, mut unknown) = (None, None, Vec::new());
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            // Replication connections are not sessions the gateway can record.
            "replication" => {}
            n if n.starts_with("_pq_.") => unknown.push(name),
            _ => passed.push((name, value)),
        }
    }
    if minor > 0 || !unknown.is_empty() {
        wire::negotiate_version(&mut out, &unknown);
    }
    let user = user.unwrap_or_default();
    // `ROLE@TARGET`, or `TARGET` alone for the role of the user's active grant.
    let (role, target) = match split_user(&user) {
        Some((role, target)) => (Some(role.to_string()), target.to_string()),
        None if !user.is_empty() && !user.contains('@') => (None, user.clone()),
        None => {
            return refuse(
                &mut stream,
                "28000",
                &format!("user {user:?} must be ROLE@TARGET or TARGET"),
                "e.g. psql \"host=GATEWAY port=6432 user=app_rw@orders-db dbname=orders sslmode=require\"",
            )
            .await;
        }
    };
    // libpq sends the user name as database when none is given: that means "the
    // target's default", not a database called `role@target`.
    let database = database.filter(|d| !d.is_empty() && *d != user);
    wire::auth_cleartext(&mut out);
    write(&mut stream, &mut out).await?;
    let Ok(frame) = tokio::time::timeout_at(deadline, read_password(&mut stream, &mut buf)).await
    else {
        return refuse(
            &mut stream,
            "08P01",
            "drawbridge: no password within the login timeout",
            "",
        )
        .await;
    };
    let frame = frame?;
    let token = wire::password(&frame)?;
    let identity = match identity::by_token(front.store.as_ref(), &token, crate::time::now()).await
    {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(%peer, user, error = %e, "postgres token refused");
            return refuse(
                &mut stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\": the password is your Drawbridge login token"),
                "run `drawbridge login`, then use its token as password (PGPASSWORD)",
            )
            .await;
        }
    };
    let role = match role {
        Some(role) => role,
        None => match front
            .pipeline
            .access()
            .granted_login(&identity, &target, crate::time::now())
            .await
        {
            Some(role) => role,
            None => {
                return refuse(
                    &mut stream,
                    "42501",
                    &format!("access to {target} denied: no active grant, and no role named (ROLE@{target})"),
                    &format!("request access with: {}", crate::access::request_hint(&target, "ROLE")),
                )
                .await;
            }
        },
    };
    let (role, target) = (role.as_str(), target.as_str());
    let wanted = PostgresUpstream {
        database,
        params: passed,
        connect_timeout: front.connect_timeout,
    };
    let established = match front
        .pipeline
        .open(identity.clone(), target, role, &wanted)
        .await
    {
        Ok(established) => established,
        Err(e) => {
            tracing::info!(%peer, user = identity.name(), target, role, side = ?e.side(), error = %e, "session refused");
            let (code, message, hint) = refusal(&e);
            return refuse(&mut stream, code, &message, &hint).await;
        }
    };
    let conn = established.connection;
    let session = established.session;
    let cancel = front.cancels.register(conn.key.clone());
    let Ok((_cancel_guard, pid, secret)) = cancel else {
        session.finish("internal error: no cancel key").await;
        conn.login.release().await;
        return refuse(
            &mut stream,
            "XX000",
            "drawbridge: internal error, session refused",
            "",
        )
        .await;
    };
    wire::auth_ok(&mut out);
    conn.status
        .iter()
        .for_each(|f| out.extend_from_slice(&f.raw));
    wire::backend_key_data(&mut out, pid, secret);
    out.extend_from_slice(&conn.ready.raw);
    let activity = Arc::new(Activity::default());
    let limits = Limits {
        idle_timeout: front.idle_timeout,
        max_session: Duration::ZERO,
    };
    tokio::spawn(enforce_limits(session.clone(), activity.clone(), limits));
    let reason = match write(&mut stream, &mut out).await {
        Ok(()) => {
            relay::run(
                relay::Ends {
                    stream,
                    pending: buf,
                },
                relay::Ends {
                    stream: conn.stream,
                    pending: conn.leftover,
                },
                &session,
                &activity,
                &front.parameters,
            )
            .await
        }
        Err(e) => format!("client left during login: {e}"),
    };
    session.finish(&reason).await;
    conn.login.release().await;
    Ok(())
}

/// Encryption first: TLS after SSLRequest or straight away, 'N' to GSSENCRequest
/// (libpq then asks for TLS). Returns the stream, whether it is TLS, and the
/// first packet already read on a plain connection.
async fn negotiate(
    front: &PostgresFront,
    mut tcp: TcpStream,
    buf: &mut BytesMut,
) -> Result<(Stream, bool, Option<Startup>), FrontError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
        let tls = front.tls.accept(tcp).await?;
        // Like PostgreSQL 17: direct TLS needs ALPN `postgresql`, so a TLS
        // connection meant for another protocol cannot be replayed into this one.
        let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(POSTGRESQL_ALPN);
        let mut stream: Stream = Box::new(tls);
        if !alpn_ok {
            refuse(
                &mut stream,
                "08P01",
                "direct TLS connections must use ALPN \"postgresql\"",
                "use sslnegotiation=direct with a PostgreSQL 17 client, or sslnegotiation=postgres",
            )
            .await?;
        }
        return Ok((stream, true, None));
    }
    loop {
        match read_startup(&mut tcp, buf).await? {
            Startup::SslRequest => {
                // Bytes sent before the TLS handshake would be trusted as if they
                // came through it (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(FrontError::Refused("data after SSLRequest".into()));
                }
                tcp.write_all(b"S").await?;
                let tls = front.tls.accept(tcp).await?;
                return Ok((Box::new(tls), true, None));
            }
            Startup::GssEncRequest => tcp.write_all(b"N").await?,
            other => return Ok((Box::new(tcp), false, Some(other))),
        }
    }
}

async fn read_startup(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<Startup, FrontError> {
    loop {
        if let Some(packet) = wire::parse_startup(buf)? {
            return Ok(packet);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrontError::Refused("client closed during startup".into()));
        }
    }
}

async fn read_password(stream: &mut Stream, buf: &mut BytesMut) -> Result<wire::Frame, FrontError> {
    loop {
        if let Some(frame) = wire::parse(buf, PASSWORD_FRAME_LIMIT)? {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrontError::Refused(
                "client left at the password prompt".into(),
            ));
        }
    }
}

/// A step of the login that waits on the client, cut off at `deadline` (before
/// TLS is up there is no way to tell the client why).
async fn before<T>(
    deadline: Instant,
    step: impl Future<Output = Result<T, FrontError>>,
) -> Result<T, FrontError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| FrontError::Refused("no startup within the login timeout".into()))?
}

async fn write(stream: &mut Stream, out: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(out).await?;
    out.clear();
    stream.flush().await
}

/// Sends a FATAL ErrorResponse and closes.
async fn refuse(
    stream: &mut Stream,
    code: &str,
    message: &str,
    hint: &str,
) -> Result<(), FrontError> {
    let mut out = BytesMut::new();
    wire::error_response(&mut out, "FATAL", code, message, hint);
    write(stream, &mut out).await?;
    let _ = stream.shutdown().await;
    Err(FrontError::Refused(message.to_string()))
}

/// `app_rw@orders-db` → role `app_rw`, target `orders-db` (split at the last `@`,
/// like the SSH front, so role names may hold an `@`).
fn split_user(user: &str) -> Option<(&str, &str)> {
    let (role, target) = user.rsplit_once('@')?;
    (!role.is_empty() && !target.is_empty()).then_some((role, target))
}

/// SQLSTATE, message and hint for a session the pipeline refused.
fn refusal(e: &SessionError) -> (&'static str, String, String) {
    match e {
        // 42501 insufficient_privilege: who you are is fine, this access is not.
        SessionError::Access(AccessError::Denied(denial)) => {
            ("42501", denial.reason.clone(), denial.hint.clone())
        }
        SessionError::Access(AccessError::UnknownTarget(_)) => (
            "28000",
            e.to_string(),
            "`drawbridge requests` lists what you have asked for; an admin registers targets"
                .into(),
        ),
        _ => match e.side() {
            Side::Downstream => ("42501", e.to_string(), String::new()),
            // 08001: the gateway could not establish the upstream connection.
            Side::Upstream => ("08001", e.client_message(), String::new()),
            Side::Internal => ("XX000", e.client_message(), String::new()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_split_into_role_and_target_at_the_last_at() {
        assert_eq!(
            split_user("app_rw@orders-db"),
            Some(("app_rw", "orders-db"))
        );
        assert_eq!(split_user("a@b@db"), Some(("a@b", "db")));
        assert_eq!(split_user("orders-db"), None);
        assert_eq!(split_user("@db"), None);
    }
}
