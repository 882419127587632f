//! The CLI's side of the REST API: an HTTPS client that trusts the gateway's
//! certificate explicitly, and the saved login (server, certificate, token) kept
//! 0600 in the user's config folder.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::api::types::ErrorBody;

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

/// What `drawbridge login` leaves behind for the other commands.
#[derive(Serialize, Deserialize)]
pub struct SavedLogin {
    pub server: String,
    /// The gateway's certificate, pinned at login.
    pub ca_pem: String,
    pub user: String,
    pub token: String,
    pub expires_at: i64,
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DRAWBRIDGE_HOME") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("drawbridge"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".config").join("drawbridge"))
}

fn login_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("login.json"))
}

impl SavedLogin {
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = login_file()?;
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| tmp.display().to_string())?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The pinned gateway certificate as a file (for clients such as psql that
    /// take a path), next to the saved login.
    pub fn write_ca_file(&self) -> anyhow::Result<PathBuf> {
        let path = config_dir()?.join("gateway-ca.pem");
        fs::write(&path, &self.ca_pem).with_context(|| path.display().to_string())?;
        Ok(path)
    }

    pub fn load() -> anyhow::Result<SavedLogin> {
        let path = login_file()?;
        let text = fs::read_to_string(&path)
            .map_err(|_| anyhow!("not logged in: run `drawbridge login --user NAME` first"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

pub struct ApiClient {
    addr: String,
    host: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(server: &str, ca_pem: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        let addr = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server must be an https:// URL, got {server:?}"))?
            .trim_end_matches('/')
            .to_string();
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => addr.as_str(),
        };
        let host =
            ServerName::try_from(host.to_string()).map_err(|e| anyhow!("server name: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("gateway certificate")?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let addr = if addr.contains(':') {
            addr
        } else {
            format!("{addr}:443")
        };
        Ok(ApiClient {
            addr,
            host,
            tls: Arc::new(tls),
            token,
        })
    }

    /// The client for a logged-in user: the saved login, with `DRAWBRIDGE_TOKEN`
    /// taking precedence over the saved token (for scripts and service accounts).
    pub fn from_saved_login() -> anyhow::Result<ApiClient> {
        let saved = SavedLogin::load()?;
        let token = std::env::var("DRAWBRIDGE_TOKEN").unwrap_or(saved.token);
        ApiClient::new(&saved.server, &saved.ca_pem, Some(token))
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.addr))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.host.clone(), tcp)
            .await
            .context("TLS with the gateway failed")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.as_str())
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(payload))?)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            if status == StatusCode::UNAUTHORIZED && self.token.is_some() {
                bail!("{message} (your login may have expired: run `drawbridge login`)");
            }
            bail!("{message}");
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
