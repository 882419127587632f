//! Forwarding to the HTTP upstream: the pipeline's connect stage (one
//! connection to check reachability and TLS, the session's assertion minter and
//! injected headers), and per request the rewritten request, a pooled upstream
//! connection, a streamed response and one recording event (`exchange`). Websocket upgrades are relayed until either side closes or the
//! session ends.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{InvalidUriParts, PathAndQuery};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::exchange::{self, BodyCapture, Counted, Direction, Exchange};
use super::headers::{self, Forwarding};
use super::inject::Injection;
use super::json_error;
use super::relay::IdleConnections;
use super::sessions::HttpSession;
use super::tls::{self, UpstreamConnector};
use crate::credentials::{Credential, CredentialError, HttpCredential};
use crate::proxy::relay_runtimes::{self, relay_runtimes};
use crate::session::{Upstream, UpstreamError};
use crate::store::Target;
use crate::time;

/// How long an idle upstream connection is kept for the next request.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Header carrying the signed assertion to the upstream.
pub const ASSERTION_HEADER: &str = "x-drawbridge-assertion";

pub struct HttpUpstream {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl HttpUpstream {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        HttpUpstream {
            connect_timeout,
            response_timeout,
        }
    }

    /// Plain TCP, or TLS verified against the target's CA (the system bundle
    /// when none is set).
    fn connector(&self, target: &Target) -> Result<UpstreamConnector, UpstreamError> {
        let Some(settings) = target.http.as_ref().filter(|s| s.tls) else {
            return Ok(UpstreamConnector::plain(self.connect_timeout));
        };
        let ca = settings
            .tls_ca
            .as_deref()
            .unwrap_or(Path::new(tls::SYSTEM_CA_BUNDLE));
        let host = target
            .address
            .rsplit_once(':')
            .map_or(target.address.as_str(), |(host, _)| host);
        UpstreamConnector::tls(self.connect_timeout, ca, host).map_err(|reason| {
            UpstreamError::Protocol {
                target: target.name.clone(),
                reason: format!("TLS setup: {reason}"),
            }
        })
    }

    /// Opens one connection (TLS handshake included), so an unreachable app or
    /// a certificate that does not verify is a clear 502 at session start
    /// rather than on some later request.
    async fn probe(
        &self,
        target: &Target,
        connector: &UpstreamConnector,
        origin: &Uri,
    ) -> Result<(), UpstreamError> {
        match tokio::time::timeout(self.connect_timeout, connector.connect(origin.clone())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match tls::tls_failure(e.as_ref()) {
                Some(reason) => UpstreamError::Protocol {
                    target: target.name.clone(),
                    reason,
                },
                None => UpstreamError::Unreachable {
                    target: target.name.clone(),
                    address: target.address.clone(),
                    reason: tls::describe(e.as_ref()),
                },
            }),
            Err(_) => Err(UpstreamError::Timeout {
                target: target.name.clone(),
                address: target.address.clone(),
                secs: self.connect_timeout.as_secs(),
            }),
        }
    }
}

/// What a session needs to reach its upstream.
pub struct HttpConnection {
    /// `host:port` of the app, its `Host` header.
    host: HeaderValue,
    /// `http://host:port` or `https://host:port`, for rewriting redirects.
    pub(super) origin: String,
    /// `origin` parsed: what every upstream request's URI starts with, and
    /// where the relay's connections go.
    pub(super) origin_uri: Uri,
    /// The session's own pools, one per relay runtime (`relay_runtimes::current`):
    /// a pooled connection's task lives on the runtime that opened it, so a
    /// request only ever takes connections of its own thread. Its connections
    /// carry this target's TLS settings.
    clients: Vec<Client<UpstreamConnector, Body>>,
    /// Connections of the HTTP/1.1 relay (`relay`), which serves plain requests
    /// without the pooled client: how to open them, and the idle ones.
    pub(super) connector: UpstreamConnector,
    pub(super) idle: IdleConnections,
    pub(super) response_timeout: Duration,
    credential: HttpCredential,
    injection: Injection,
    /// Bytes of each body to record, when body recording is on.
    pub(super) record_bodies: Option<u64>,
    target: String,
}

impl Upstream for HttpUpstream {
    type Connection = HttpConnection;
    const PROTOCOL: &'static str = "http";

    async fn connect(
        &self,
        target: &Target,
        credential: Credential,
    ) -> Result<HttpConnection, UpstreamError> {
        let Credential::Http(credential) = credential else {
            return Err(UpstreamError::Protocol {
                target: target.name.clone(),
                reason: "not an HTTP credential".into(),
            });
        };
        let connector = self.connector(target)?;
        let origin = format!("{}://{}", connector.scheme(), target.address);
        let bad_address = |e: &dyn std::fmt::Display| UpstreamError::Protocol {
            target: target.name.clone(),
            reason: format!("address {:?}: {e}", target.address),
        };
        let origin_uri = Uri::try_from(origin.as_str()).map_err(|e| bad_address(&e))?;
        let host = HeaderValue::from_str(&target.address).map_err(|e| bad_address(&e))?;
        if origin_uri.scheme().is_none() || origin_uri.authority().is_none() {
            return Err(bad_address(&"not host:port"));
        }
        self.probe(target, &connector, &origin_uri).await?;
        let injection = Injection::for_session(target.http.as_ref(), &credential).map_err(|e| {
            // The details may name a file; the client is only told where to look.
            tracing::error!(target = %target.name, error = %e, "cannot prepare the injected headers");
            UpstreamError::Protocol {
                target: target.name.clone(),
                reason: "the gateway cannot prepare its credential for this app (see the gateway log)"
                    .into(),
            }
        })?;
        Ok(HttpConnection {
            host,
            origin,
            clients: (0..relay_runtimes().count())
                .map(|_| {
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(IDLE_TIMEOUT)
                        .build(connector.clone())
                })
                .collect(),
            connector,
            origin_uri,
            idle: IdleConnections::new(relay_runtimes().count()),
            response_timeout: self.response_timeout,
            credential: *credential,
            injection,
            record_bodies: target.http.as_ref().and_then(|s| s.record_bodies),
            target: target.name.clone(),
        })
    }
}

impl HttpConnection {
    /// The signed assertion for the next request, when the target takes one
    /// (reused for its lifetime, see `HttpCredential::assertion`).
    pub(super) fn assertion(&self) -> Result<Option<HeaderValue>, CredentialError> {
        if !self.injection.assertion() {
            return Ok(None);
        }
        self.credential.assertion(time::now()).map(Some)
    }

    /// The pool of the relay runtime this request runs on.
    fn client(&self) -> &Client<UpstreamConnector, Body> {
        let i = relay_runtimes::current().unwrap_or(0);
        &self.clients[i % self.clients.len()]
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `GET /path?query` for the recording, sensitive query parameters masked.
pub(super) fn request_line(method: &str, path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{method} {path}?{}", headers::mask_query(query)),
        None => format!("{method} {path}"),
    }
}

/// The gateway answers itself (an error page); the exchange records why.
fn answer(exchange: &Exchange, status: StatusCode, message: &str) -> Response<Body> {
    exchange.set_outcome(format!("-> {} ({message})", status.as_u16()));
    exchange.delivered();
    json_error(status, message)
}

pub async fn forward(
    mut req: Request<Incoming>,
    session: &HttpSession,
    consumed_bearer: bool,
    forwarding: &Forwarding,
) -> Response<Body> {
    let conn = &session.connection;
    let upgrade = is_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let capture = conn.record_bodies.map(|limit| BodyCapture {
        channel: session.next_channel(),
        limit,
    });
    let line = request_line(req.method().as_str(), req.uri().path(), req.uri().query());
    let exchange = Exchange::new(session.handle.clone(), line, capture, Instant::now());
    let Some(original_host) = host_value(&req) else {
        return answer(
            &exchange,
            StatusCode::BAD_REQUEST,
            "missing or invalid Host",
        );
    };

    let assertion = match conn.assertion() {
        Ok(a) => a,
        Err(e) => return answer(&exchange, StatusCode::FORBIDDEN, &e.to_string()),
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = match upstream_uri(conn, std::mem::take(&mut parts.uri)) {
        Ok(uri) => uri,
        Err(_) => return answer(&exchange, StatusCode::BAD_REQUEST, "invalid request target"),
    };
    // Upstreams are spoken to in HTTP/1.1 whatever the client used (HTTP/2
    // downstream is common); the pooled client sets the framing.
    parts.version = hyper::Version::HTTP_11;
    let caller = Caller {
        consumed_bearer,
        forwarding,
        host: &original_host,
    };
    rewrite_request_headers(&mut parts.headers, conn, &caller, assertion, upgrade);
    let body = Counted::new(body, exchange.clone(), Direction::In);
    let upstream_req = Request::from_parts(parts, Body::new(body));

    let response = match tokio::time::timeout(
        conn.response_timeout,
        conn.client().request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let why = tls::describe(&e);
            tracing::info!(target = conn.target, error = %why, "upstream request failed");
            let message = format!("target {} did not answer: {why}", conn.target);
            return answer(&exchange, StatusCode::BAD_GATEWAY, &message);
        }
        Err(_) => {
            let message = format!(
                "target {} did not answer within {}s",
                conn.target,
                conn.response_timeout.as_secs()
            );
            return answer(&exchange, StatusCode::GATEWAY_TIMEOUT, &message);
        }
    };
    let status = response.status();
    exchange.set_outcome(format!("-> {}", status.as_u16()));
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) = (status, downstream_upgrade) {
        exchange.delivered();
        return relay_websocket(response, downstream, session);
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    rewrite_location(&mut parts.headers, &conn.origin, &original_host);
    headers::scope_set_cookies(&mut parts.headers);
    if hyper::body::Body::is_end_stream(&body) {
        exchange.delivered();
    }
    let body = Counted::new(body, exchange, Direction::Out);
    Response::from_parts(parts, Body::new(body))
}

/// The client's path and query on the app's origin.
fn upstream_uri(conn: &HttpConnection, client_uri: Uri) -> Result<Uri, InvalidUriParts> {
    let mut parts = conn.origin_uri.clone().into_parts();
    parts.path_and_query = Some(
        client_uri
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
}

/// Who sent a request and how, as its forwarded headers tell the app.
pub(super) struct Caller<'a> {
    /// The bearer token was the gateway's, so `Authorization` goes.
    pub consumed_bearer: bool,
    pub forwarding: &'a Forwarding,
    /// The host the client asked for.
    pub host: &'a HeaderValue,
}

/// A request's headers as the app gets them: hop-by-hop headers, identity
/// claims and the gateway's own credentials removed; the forwarding headers,
/// the assertion, the app's own `Host` and the target's injected headers set.
pub(super) fn rewrite_request_headers(
    headers: &mut hyper::HeaderMap,
    conn: &HttpConnection,
    caller: &Caller<'_>,
    assertion: Option<HeaderValue>,
    upgrade: bool,
) {
    headers::strip_hop_by_hop(headers, upgrade);
    headers::strip_client_credentials(headers, caller.consumed_bearer);
    caller.forwarding.apply(headers, caller.host);
    if let Some(assertion) = assertion {
        headers.insert(ASSERTION_HEADER, assertion);
    }
    headers.insert(header::HOST, conn.host.clone());
    conn.injection.apply(headers);
}

/// The host the client asked for, as a header value (HTTP/2 has no `Host`, only
/// the URI's authority).
fn host_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => HeaderValue::from_str(req.uri().authority()?.as_str()).ok(),
    }
}

/// An upstream redirect to its own address becomes one to the gateway's name.
fn rewrite_location(headers: &mut hyper::HeaderMap, origin: &str, public_host: &HeaderValue) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(public) = public_location(location, origin, public_host)
        && let Ok(v) = HeaderValue::from_str(&public)
    {
        headers.insert(header::LOCATION, v);
    }
}

/// `location` on the gateway's name when it points at the app's own `origin`.
pub(super) fn public_location(
    location: &str,
    origin: &str,
    public_host: &HeaderValue,
) -> Option<String> {
    let rest = location.strip_prefix(origin)?;
    let public_host = public_host.to_str().ok()?;
    Some(format!("https://{public_host}{rest}"))
}

/// Counts a websocket as closed however its task ends.
struct Decrement(tokio::sync::watch::Sender<usize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Completes the 101 to the client and splices the two upgraded connections
/// until one closes or the session ends.
fn relay_websocket(
    mut response: Response<Incoming>,
    downstream: hyper::upgrade::OnUpgrade,
    session: &HttpSession,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    parts.extensions = Default::default();
    headers::scope_set_cookies(&mut parts.headers);
    let handle = session.handle.clone();
    let open = session.websockets.clone();
    open.send_modify(|n| *n += 1);
    tokio::spawn(async move {
        let _counted = Decrement(open);
        let (Ok(up), Ok(down)) = (upstream.await, downstream.await) else {
            return;
        };
        let (mut up, mut down) = (TokioIo::new(up), TokioIo::new(down));
        let mut live = handle.live();
        // copy_bidirectional is cancel-safe to drop; the session's end wins.
        let outcome = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut down, &mut up) => match copied {
                Ok((to_upstream, to_client)) => format!("websocket closed (in {to_upstream} B, out {to_client} B)"),
                Err(e) => format!("websocket failed: {e}"),
            },
            reason = live.ended() => format!("websocket closed: {reason}"),
        };
        exchange::record(&handle, |r| r.note(format!("http {outcome}")));
    });
    Response::from_parts(parts, Body::empty())
}
