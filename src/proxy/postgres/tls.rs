//! TLS toward PostgreSQL servers (rustls with ring): the client config that
//! verifies a target against its configured CA, the SCRAM channel-binding hash,
//! and the small adaptor that lets tokio-postgres (admin connections) use it.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as RustlsStream;

/// A client config trusting only the CA certificates in the PEM file at `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate found", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How to reach one target over TLS: a config trusting its CA, and the name
/// (host or address) its certificate must be valid for.
#[derive(Clone)]
pub struct TargetTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl TargetTls {
    /// For a target at `address` (`HOST:PORT`) whose certificate chains to `ca`.
    pub fn new(address: &str, ca: &Path) -> Result<TargetTls, String> {
        let host = address.rsplit_once(':').map_or("", |(h, _)| h);
        Ok(TargetTls {
            config: client_config(ca)?,
            name: server_name(host.trim_matches(['[', ']']))?,
        })
    }
}

/// The `tls-server-end-point` binding (RFC 5929) of the server's certificate:
/// its SHA-256 hash, which is right for the SHA-256 signed certificates
/// PostgreSQL deployments use. Binds SCRAM to this TLS session, so a machine in
/// the middle cannot relay the login.
pub fn end_point_hash<S>(stream: &RustlsStream<S>) -> Option<Vec<u8>> {
    let (_, conn) = stream.get_ref();
    let cert = conn.peer_certificates()?.first()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// The host name or address the certificate must be valid for.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host:?}: {e}"))
}

/// tokio-postgres' TLS hook, backed by [`client_config`].
#[derive(Clone)]
pub struct MakeRustls(pub Arc<rustls::ClientConfig>);

pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

pub struct PgTlsStream(RustlsStream<Socket>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = PgTlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: server_name(domain),
        })
    }
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(io::Error::other)?;
            let tls = TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(PgTlsStream(tls))
        })
    }
}

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        match end_point_hash(&self.0) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
