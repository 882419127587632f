//! Connecting to the target: TCP with a timeout, TLS when the target has a CA
//! configured (the certificate must chain to it), then a protocol 3.0 login as
//! the session's ephemeral role with SCRAM-SHA-256 (channel-bound under TLS).
//! The handshake's closing frames are kept for the client; everything after
//! that is the relay's.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::wire::{self, Frame};
use super::{Stream, UpstreamKey, tls};
use crate::credentials::{Credential, EphemeralRole};
use crate::session::{Upstream, UpstreamError};
use crate::store::Target;

/// Handshake messages from a target are small; a bigger one is not PostgreSQL.
const HANDSHAKE_FRAME_LIMIT: usize = 1 << 20;

/// One client's wishes for its upstream login: the database and the startup
/// parameters it sent (application_name, client_encoding, options, …).
pub struct PostgresUpstream {
    pub database: Option<String>,
    pub params: Vec<(String, String)>,
    pub connect_timeout: Duration,
}

/// A target session, logged in and ready for queries.
pub struct UpstreamConnection {
    pub stream: Stream,
    /// Bytes the target sent after ReadyForQuery (none unless it was early).
    pub leftover: BytesMut,
    /// ParameterStatus and NoticeResponse frames, for the client, in order.
    pub status: Vec<Frame>,
    /// The target's ReadyForQuery, which ends the client's login too.
    pub ready: Frame,
    pub key: UpstreamKey,
    pub role: EphemeralRole,
}

impl Upstream for PostgresUpstream {
    type Connection = UpstreamConnection;
    const PROTOCOL: &'static str = "postgres";

    async fn connect(
        &self,
        target: &Target,
        credential: Credential,
    ) -> Result<UpstreamConnection, UpstreamError> {
        let protocol = |reason: String| UpstreamError::Protocol {
            target: target.name.clone(),
            reason,
        };
        let Credential::Postgres(mut role) = credential else {
            return Err(protocol("not a PostgreSQL credential".into()));
        };
        let settings = target
            .postgres
            .as_ref()
            .ok_or_else(|| protocol("no PostgreSQL settings".into()))?;
        let database = self
            .database
            .clone()
            .or_else(|| settings.database.clone())
            .unwrap_or_else(|| "postgres".into());
        // Before logging in: if the login fails, dropping `role` cleans up there.
        role.set_database(&database);
        let login = self.login(target, &role, &database);
        match tokio::time::timeout(self.connect_timeout, login).await {
            Err(_) => Err(UpstreamError::Timeout {
                target: target.name.clone(),
                address: target.address.clone(),
                secs: self.connect_timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok((stream, handshake))) => Ok(UpstreamConnection {
                stream,
                leftover: handshake.leftover,
                status: handshake.status,
                ready: handshake.ready,
                key: UpstreamKey {
                    address: target.address.clone(),
                    pid: handshake.key.0,
                    secret: handshake.key.1,
                },
                role,
            }),
        }
    }
}

struct Handshake {
    leftover: BytesMut,
    status: Vec<Frame>,
    ready: Frame,
    key: (u32, u32),
}

impl PostgresUpstream {
    async fn login(
        &self,
        target: &Target,
        role: &EphemeralRole,
        database: &str,
    ) -> Result<(Stream, Handshake), UpstreamError> {
        let unreachable = |e: std::io::Error| UpstreamError::Unreachable {
            target: target.name.clone(),
            address: target.address.clone(),
            reason: e.to_string(),
        };
        let protocol = |reason: String| UpstreamError::Protocol {
            target: target.name.clone(),
            reason,
        };
        let mut tcp = TcpStream::connect(&target.address)
            .await
            .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let tls_ca = target.postgres.as_ref().and_then(|s| s.tls_ca.as_ref());
        let (mut stream, binding): (Stream, _) = match tls_ca {
            None => (Box::new(tcp), None),
            Some(ca) => {
                let config = tls::client_config(ca).map_err(protocol)?;
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                tcp.write_all(&request).await.map_err(unreachable)?;
                if tcp.read_u8().await.map_err(unreachable)? != b'S' {
                    return Err(protocol("the target does not accept TLS".into()));
                }
                let host = target.address.rsplit_once(':').map_or("", |(h, _)| h);
                let name = tls::server_name(host.trim_matches(['[', ']'])).map_err(protocol)?;
                let tls = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| protocol(format!("TLS: {e}")))?;
                let binding = tls::end_point_hash(&tls);
                (Box::new(tls), binding)
            }
        };
        let mut out = BytesMut::new();
        let params = [("user", role.name.as_str()), ("database", database)]
            .into_iter()
            .chain(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params, &mut out).map_err(|e| protocol(e.to_string()))?;
        stream.write_all(&out).await.map_err(unreachable)?;
        stream.flush().await.map_err(unreachable)?;
        authenticate(&mut stream, role, binding, target)
            .await
            .map(|handshake| (stream, handshake))
    }
}

/// Answers the target's authentication requests, then collects what it sends up
/// to ReadyForQuery.
async fn authenticate(
    stream: &mut Stream,
    role: &EphemeralRole,
    binding: Option<Vec<u8>>,
    target: &Target,
) -> Result<Handshake, UpstreamError> {
    let protocol = |reason: String| UpstreamError::Protocol {
        target: target.name.clone(),
        reason,
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    let mut status = Vec::new();
    let mut key = None;
    loop {
        let frame = loop {
            match wire::parse(&mut buf, HANDSHAKE_FRAME_LIMIT)
                .map_err(|e| protocol(e.to_string()))?
            {
                Some(frame) => break frame,
                None => {
                    if stream
                        .read_buf(&mut buf)
                        .await
                        .map_err(|e| protocol(e.to_string()))?
                        == 0
                    {
                        return Err(protocol("closed the connection during login".into()));
                    }
                }
            }
        };
        let mut body = frame.body();
        let mut out = BytesMut::new();
        match frame.tag {
            b'R' if body.len() >= 4 => match body.get_i32() {
                0 => {}
                10 => {
                    let offered: Vec<&str> = body
                        .split(|b| *b == 0)
                        .filter_map(|m| std::str::from_utf8(m).ok())
                        .collect();
                    let (mechanism, channel) = match binding.clone() {
                        Some(hash) if offered.contains(&SCRAM_SHA_256_PLUS) => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash),
                        ),
                        Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                        None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    };
                    if !offered.contains(&mechanism) {
                        return Err(protocol(format!(
                            "offers SASL {offered:?}, not SCRAM-SHA-256"
                        )));
                    }
                    let client = ScramSha256::new(role.password.expose().as_bytes(), channel);
                    frontend::sasl_initial_response(mechanism, client.message(), &mut out)
                        .map_err(|e| protocol(e.to_string()))?;
                    scram = Some(client);
                }
                11 => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL out of order".into()))?;
                    client
                        .update(body)
                        .map_err(|e| protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(client.message(), &mut out)
                        .map_err(|e| protocol(e.to_string()))?;
                }
                12 => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL out of order".into()))?;
                    client.finish(body).map_err(|e| {
                        protocol(format!("SCRAM: the target's proof is wrong: {e}"))
                    })?;
                }
                other => {
                    return Err(protocol(format!(
                        "asks for authentication method {other}; drawbridge logs in with SCRAM-SHA-256 only"
                    )));
                }
            },
            b'E' => {
                let message = wire::error_message(frame.body());
                return Err(UpstreamError::CredentialRejected {
                    target: target.name.clone(),
                    principal: format!("{} ({message})", role.name),
                });
            }
            b'K' if body.len() == 8 => key = Some((body.get_u32(), body.get_u32())),
            b'S' | b'N' => status.push(frame),
            b'Z' => {
                let key = key.ok_or_else(|| protocol("sent no BackendKeyData".into()))?;
                return Ok(Handshake {
                    leftover: buf,
                    status,
                    ready: frame,
                    key,
                });
            }
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} during login",
                    other as char
                )));
            }
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .map_err(|e| protocol(e.to_string()))?;
            stream.flush().await.map_err(|e| protocol(e.to_string()))?;
        }
    }
}

/// Forwards a client's cancel to the target backend it maps to. Plain TCP: a
/// CancelRequest carries no credential and PostgreSQL takes it before any
/// pg_hba check.
pub(super) async fn cancel(key: &UpstreamKey, timeout: Duration) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid as i32, key.secret as i32, &mut out);
    let send = async {
        let mut tcp = TcpStream::connect(&key.address).await?;
        tcp.write_all(&out).await?;
        // The server closes without answering once it has the request.
        let _ = tcp.read_u8().await;
        Ok(())
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
