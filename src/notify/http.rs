//! A minimal HTTP/1.1 POST client for webhooks (hyper over TCP, rustls for
//! https), with a timeout on every delivery.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Target {
    host: String,
    port: u16,
    path: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // The path may hold a secret (Slack puts one there); never print it.
        write!(f, "{scheme}://{}:{}/…", self.host, self.port)
    }
}

impl Target {
    pub fn parse(url: &str, ca_file: &str) -> Result<Target, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("webhook url must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| "invalid port in webhook url".to_string())?,
            ),
            None => (authority, if https { 443 } else { 80 }),
        };
        let tls = if https {
            let pem = std::fs::read(ca_file).map_err(|e| format!("{ca_file}: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(cert);
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
            Some((Arc::new(config), name))
        } else {
            None
        };
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
            tls,
        })
    }

    pub async fn post_json(&self, body: &[u8]) -> Result<(), String> {
        tokio::time::timeout(TIMEOUT, self.post(body))
            .await
            .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
    }

    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let request = Request::post(self.path.as_str())
            .header("host", format!("{}:{}", self.host, self.port))
            .header("content-type", "application/json")
            .header("user-agent", "drawbridge")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let status = match &self.tls {
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                send(TokioIo::new(tls), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Drain the body so the connection closes cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}
