//! Connecting to the target: TCP with a timeout, TLS when the target has a CA
//! configured (the certificate must chain to it), then a protocol 3.0 login as
//! the session's ephemeral role (or the target's static login) with
//! SCRAM-SHA-256, channel-bound under TLS. Cancel requests take the same road.
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

use super::tls::{self, TargetTls};
use super::wire::{self, Frame};
use super::{Stream, UpstreamKey};
use crate::credentials::{Credential, PgLogin};
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
    pub login: PgLogin,
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
        let Credential::Postgres(mut login) = credential else {
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
        // Before logging in: if the login fails, dropping `login` cleans up there.
        login.set_database(&database);
        let tls = match &settings.tls_ca {
            Some(ca) => Some(TargetTls::new(&target.address, ca).map_err(protocol)?),
            None => None,
        };
        let logged_in = self.login(target, tls.as_ref(), &login, &database);
        match tokio::time::timeout(self.connect_timeout, logged_in).await {
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
                    tls,
                },
                login,
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
        tls: Option<&TargetTls>,
        login: &PgLogin,
        database: &str,
    ) -> Result<(Stream, Handshake), UpstreamError> {
        let (mut stream, binding) = open(&target.address, tls)
            .await
            .map_err(|e| e.for_target(target))?;
        let unreachable = |e: std::io::Error| UpstreamError::Unreachable {
            target: target.name.clone(),
            address: target.address.clone(),
            reason: e.to_string(),
        };
        let mut out = BytesMut::new();
        let params = [("user", login.name.as_str()), ("database", database)]
            .into_iter()
            .chain(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params, &mut out).map_err(|e| UpstreamError::Protocol {
            target: target.name.clone(),
            reason: e.to_string(),
        })?;
        stream.write_all(&out).await.map_err(unreachable)?;
        stream.flush().await.map_err(unreachable)?;
        authenticate(&mut stream, login, binding, target)
            .await
            .map(|handshake| (stream, handshake))
    }
}

/// Why a connection to a target could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

impl OpenError {
    fn for_target(self, target: &Target) -> UpstreamError {
        match self {
            OpenError::Io(e) => UpstreamError::Unreachable {
                target: target.name.clone(),
                address: target.address.clone(),
                reason: e.to_string(),
            },
            OpenError::Refused(reason) => UpstreamError::Protocol {
                target: target.name.clone(),
                reason,
            },
        }
    }
}

/// TCP to `address`, then TLS after an SSLRequest when `tls` is given. Returns
/// the stream and, under TLS, the SCRAM channel-binding hash.
async fn open(
    address: &str,
    tls: Option<&TargetTls>,
) -> Result<(Stream, Option<Vec<u8>>), OpenError> {
    let mut tcp = TcpStream::connect(address).await?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Box::new(tcp), None));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    if tcp.read_u8().await? != b'S' {
        return Err(OpenError::Refused("the target does not accept TLS".into()));
    }
    let stream = TlsConnector::from(tls.config.clone())
        .connect(tls.name.clone(), tcp)
        .await
        .map_err(|e| OpenError::Refused(format!("TLS: {e}")))?;
    let binding = tls::end_point_hash(&stream);
    Ok((Box::new(stream), binding))
}

/// Answers the target's authentication requests, then collects what it sends up
/// to ReadyForQuery.
async fn authenticate(
    stream: &mut Stream,
    login: &PgLogin,
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
                    let client = ScramSha256::new(login.password.expose().as_bytes(), channel);
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
                    principal: format!("{} ({message})", login.name),
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

/// Forwards a client's cancel to the target backend it maps to, over TLS when
/// the session's own connection uses it: the backend key is a secret that must
/// not cross the network in clear any more than the session's traffic does.
pub(super) async fn cancel(key: &UpstreamKey, timeout: Duration) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid as i32, key.secret as i32, &mut out);
    let send = async {
        let (mut stream, _) = open(&key.address, key.tls.as_ref())
            .await
            .map_err(|e| match e {
                OpenError::Io(e) => e,
                OpenError::Refused(reason) => std::io::Error::other(reason),
            })?;
        stream.write_all(&out).await?;
        stream.flush().await?;
        // The server closes without answering once it has the request.
        let _ = stream.read_u8().await;
        Ok(())
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
