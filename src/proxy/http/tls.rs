//! Connections to HTTP targets: plain TCP, or TLS verified against the target's
//! CA (rustls, `--tls-ca`) or the system's CA bundle. It is the connector of
//! hyper-util's pooled client, so keep-alive works the same either way.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where Debian-family systems keep the trusted CA bundle; used for `https://`
/// targets registered without `--tls-ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens plain or TLS connections to one target.
#[derive(Clone)]
pub struct UpstreamConnector {
    tcp: HttpConnector,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl UpstreamConnector {
    pub fn plain(connect_timeout: Duration) -> Self {
        UpstreamConnector {
            tcp: tcp_connector(connect_timeout),
            tls: None,
        }
    }

    /// TLS to `host`, whose certificate must chain to a CA in the PEM file `ca`
    /// and name `host` (a DNS name or an IP address).
    pub fn tls(connect_timeout: Duration, ca: &Path, host: &str) -> Result<Self, String> {
        let config = crate::proxy::postgres::tls::client_config(ca)?;
        // Upstreams are spoken to in HTTP/1.1 (see `upstream::forward`).
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = crate::proxy::postgres::tls::server_name(host)?;
        Ok(UpstreamConnector {
            tcp: tcp_connector(connect_timeout),
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// One connection to the authority of `uri`, TLS handshake included.
    pub async fn connect(&self, uri: Uri) -> Result<UpstreamStream, BoxError> {
        let mut tcp = self.tcp.clone();
        let stream = tower_service::Service::call(&mut tcp, uri)
            .await?
            .into_inner();
        match &self.tls {
            None => Ok(UpstreamStream::Plain(stream)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), stream).await?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
        }
    }
}

fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    // The scheme says whether to add TLS; the TCP part is the same.
    tcp.enforce_http(false);
    tcp
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Every call opens its own connection; nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(uri).await.map(TokioIo::new) })
    }
}

/// A connection to a target, with or without TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(tcp) => tcp.connected(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Why a request to a target failed, for the 502 page: a refused certificate
/// is named as such, anything else by its chain of causes.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    if let Some(tls) = tls_failure(error) {
        return tls;
    }
    let mut parts = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.join(": ")
}

/// `TLS with the target failed: …` when a TLS error (an unknown issuer, a
/// wrong name, an expired certificate) is somewhere in the chain.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        // tokio-rustls wraps the rustls error in an io::Error, whose `source`
        // skips it, so look inside as well.
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()?
                .get_ref()?
                .downcast_ref::<rustls::Error>()
        });
        if let Some(tls) = tls {
            return Some(format!("TLS with the target failed: {tls}"));
        }
        current = e.source();
    }
    None
}
