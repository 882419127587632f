//! Forwarding to the HTTP upstream: the pipeline's connect stage (reachability
//! check and the session's assertion minter), and per request the rewritten
//! request, a pooled upstream connection, a streamed response and one recording
//! event. Websocket upgrades are relayed until either side closes or the
//! session ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::headers;
use super::json_error;
use super::sessions::HttpSession;
use crate::credentials::{Credential, HttpCredential};
use crate::session::{Upstream, UpstreamError};
use crate::store::Target;
use crate::time;

/// Header carrying the signed assertion to the upstream.
pub const ASSERTION_HEADER: &str = "x-drawbridge-assertion";

pub struct HttpUpstream {
    client: Client<HttpConnector, Body>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl HttpUpstream {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        HttpUpstream {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            connect_timeout,
            response_timeout,
        }
    }
}

/// What a session needs to reach its upstream.
pub struct HttpConnection {
    address: String,
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
    credential: HttpCredential,
    target: String,
}

impl Upstream for HttpUpstream {
    type Connection = HttpConnection;
    const PROTOCOL: &'static str = "http";

    /// Checks the upstream accepts connections, so an unreachable app is a clear
    /// 502 at session start rather than on some later request.
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
        let probe = tokio::net::TcpStream::connect(target.address.as_str());
        match tokio::time::timeout(self.connect_timeout, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(UpstreamError::Unreachable {
                    target: target.name.clone(),
                    address: target.address.clone(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    target: target.name.clone(),
                    address: target.address.clone(),
                    secs: self.connect_timeout.as_secs(),
                });
            }
        }
        Ok(HttpConnection {
            address: target.address.clone(),
            client: self.client.clone(),
            response_timeout: self.response_timeout,
            credential: *credential,
            target: target.name.clone(),
        })
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub async fn forward(
    mut req: Request<Incoming>,
    session: &HttpSession,
    consumed_bearer: bool,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let conn = &session.connection;
    let upgrade = is_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(headers::mask_query);
    let original_host = super::request_host(&req).to_string();
    let request_bytes = content_length(req.headers());

    let assertion = match conn.credential.assertion(time::now()) {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::FORBIDDEN, &e.to_string()),
    };
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match Uri::try_from(format!("http://{}{path_and_query}", conn.address)) {
        Ok(uri) => uri,
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "invalid request target"),
    };
    // Upstreams are spoken to in HTTP/1.1 whatever the client used (HTTP/2
    // downstream is common); the pooled client sets the framing.
    parts.version = hyper::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::strip_client_credentials(&mut parts.headers, consumed_bearer);
    inject(&mut parts.headers, conn, &assertion, &original_host, peer);
    let upstream_req = Request::from_parts(parts, Body::new(body));

    let response = match tokio::time::timeout(
        conn.response_timeout,
        conn.client.request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!(target = conn.target, error = %e, "upstream request failed");
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("target {} did not answer: {e}", conn.target),
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "target {} did not answer within {}s",
                    conn.target,
                    conn.response_timeout.as_secs()
                ),
            );
        }
    };
    let status = response.status();
    let response_bytes = content_length(response.headers());
    let _ = session.handle.record(|r| {
        r.note(&format!(
            "http {method} {path}{} -> {} (in {} B, out {} B, {} ms)",
            query.map(|q| format!("?{q}")).unwrap_or_default(),
            status.as_u16(),
            request_bytes.map_or("?".into(), |b| b.to_string()),
            response_bytes.map_or("?".into(), |b| b.to_string()),
            started.elapsed().as_millis()
        ))
    });
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) = (status, downstream_upgrade) {
        return relay_websocket(response, downstream, session);
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    rewrite_location(&mut parts.headers, &conn.address, &original_host);
    Response::from_parts(parts, Body::new(body))
}

fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn inject(
    headers: &mut hyper::HeaderMap,
    conn: &HttpConnection,
    assertion: &str,
    host: &str,
    peer: SocketAddr,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(ASSERTION_HEADER, assertion.to_string());
    set("x-forwarded-user", conn.credential.user().to_string());
    set("x-forwarded-groups", conn.credential.groups().join(","));
    set("x-forwarded-for", peer.ip().to_string());
    set("x-forwarded-proto", "https".into());
    set("x-forwarded-host", host.to_string());
    set(
        "forwarded",
        format!("for=\"{}\";proto=https;host=\"{host}\"", peer.ip()),
    );
    set("host", conn.address.clone());
}

/// An upstream redirect to its own address becomes one to the gateway's name.
fn rewrite_location(headers: &mut hyper::HeaderMap, upstream: &str, public_host: &str) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(rest) = location.strip_prefix(&format!("http://{upstream}"))
        && let Ok(v) = HeaderValue::from_str(&format!("https://{public_host}{rest}"))
    {
        headers.insert(header::LOCATION, v);
    }
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
        let _ = handle.record(|r| r.note(&format!("http {outcome}")));
    });
    Response::from_parts(parts, Body::empty())
}
