//! Serving the API over TLS (rustls, ring) with HTTP/1.1 and HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::certs::LocalCa;
use crate::proxy::http::{Forwarding, HttpFront, Rewound, Served};
use crate::proxy::relay_runtimes::relay_runtimes;

/// The HTTPS listener's TLS: certificates minted per server name by the
/// gateway's local CA (see `certs`); HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_tls_config(ca: LocalCa) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(ca));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Everything served on the HTTPS listener: apps behind the gateway by host name
/// (`TARGET.<apps domain>`), the API and the gateway's own pages otherwise.
pub struct HttpsFront {
    pub api: Router,
    pub apps: Arc<HttpFront>,
}

impl HttpsFront {
    async fn dispatch(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: Arc<Forwarding>,
    ) -> Result<Response<Body>, Infallible> {
        let host = crate::proxy::http::request_host(&req).to_string();
        if let Some(target) = self.apps.target_of(&host) {
            return Ok(self.apps.handle(req, target, &client).await);
        }
        let mut req = req;
        // Handlers that rate-limit by address read it from this extension.
        req.extensions_mut().insert(super::PeerAddr(client.peer()));
        TowerToHyperService::new(self.api.clone()).call(req).await
    }
}

/// Accepts TLS connections and serves `front` on each until `shutdown`. A
/// client gets `header_timeout` for its TLS handshake and for each request's
/// headers (an idle HTTP/1.1 connection too), so stalled clients are let go.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    front: Arc<HttpsFront>,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Each connection, and the upstream connections its requests use, on one
    // relay runtime: a proxied request never hops threads.
    let relays = relay_runtimes();
    loop {
        // Accept is cancel-safe; in-flight requests finish on their own tasks.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let acceptor = acceptor.clone();
        let front = front.clone();
        let spawned = relays.spawn(stream, move |stream| async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = Arc::new(Forwarding::new(peer));
            // ALPN already chose the protocol (HTTP/2 over TLS requires it), so
            // the connection is not sniffed for a preface.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let mut tls = tls;
            let read_ahead = if h2 {
                Bytes::new()
            } else {
                match front
                    .apps
                    .relay_http1(&mut tls, &client, header_timeout)
                    .await
                {
                    Served::Closed => return,
                    Served::HandOff(read) => read,
                }
            };
            let service = service_fn(move |req| front.clone().dispatch(req, client.clone()));
            let io = TokioIo::new(Rewound::new(read_ahead, tls));
            let served = if h2 {
                http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "https connection error");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "https accept failed");
        }
    }
}
