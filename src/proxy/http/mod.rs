//! The HTTP front: admin web apps behind the gateway at
//! `https://TARGET.<apps domain>:8443/`. Each request is identified (bearer token
//! or the gateway's session cookie), checked against a live session (opened
//! through the pipeline on first use, one per user and target), stripped of
//! anything claiming identity, given a signed assertion and forwarded.
//!
//! - `headers`: what is removed and added on the way through.
//! - `inject`: what each target is told about the caller (assertion, header
//!   templates, a vaulted static credential).
//! - `upstream`: the [`Upstream`](crate::session::Upstream) impl and forwarding,
//!   websockets included; `tls`: plain or verified TLS connections to targets.
//! - `relay`: the HTTP/1.1 fast path for bodiless `GET`/`HEAD` requests, served
//!   without hyper; everything else goes through hyper and `upstream`.
//! - `exchange`: byte counts, optional bodies and the note each request records.
//! - `sessions`: the per-user-and-target session cache; `tokens`: tokens
//!   verified within the last second.

mod exchange;
mod handoff;
mod headers;
pub mod inject;
mod relay;
mod sessions;
pub mod tls;
mod tokens;
mod upstream;

pub use handoff::{CALLBACK_PATH, Handoff};
pub use headers::{Forwarding, SESSION_COOKIE, session_cookie};
pub use relay::{Rewound, Served};
pub use upstream::HttpUpstream;

use std::sync::Arc;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};

use crate::identity::Identity;
use crate::session::Pipeline;
use crate::store::Store;

pub struct HttpFront {
    store: Arc<dyn Store>,
    handoff: Arc<Handoff>,
    sessions: sessions::Sessions,
    tokens: tokens::RecentTokens,
    upstream: HttpUpstream,
    apps_domain: String,
    /// The gateway's public HTTPS port, for redirects to its login page.
    public_port: u16,
}

impl HttpFront {
    pub fn new(
        pipeline: Arc<Pipeline>,
        store: Arc<dyn Store>,
        apps_domain: String,
        public_port: u16,
        upstream: HttpUpstream,
        handoff: Arc<Handoff>,
    ) -> Self {
        HttpFront {
            sessions: sessions::Sessions::new(pipeline),
            tokens: tokens::RecentTokens::default(),
            store,
            handoff,
            upstream,
            apps_domain,
            public_port,
        }
    }

    /// The target a request is for, from its Host header: `grafana` for
    /// `grafana.localhost:8443` when the apps domain is `localhost`.
    pub fn target_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let target = name.strip_suffix(&self.apps_domain)?.strip_suffix('.')?;
        (!target.is_empty() && !target.contains('.')).then_some(target)
    }

    fn login_url(&self, next: &str) -> String {
        let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
        format!(
            "https://{}:{}/login?{query}",
            self.apps_domain, self.public_port
        )
    }

    /// Relays an HTTP/1.1 connection's plain app requests (see `relay`) until
    /// one is not for it; hyper serves the rest of the connection.
    pub async fn relay_http1<S>(
        &self,
        client: &mut S,
        forwarding: &Forwarding,
        header_timeout: std::time::Duration,
    ) -> Served
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        relay::serve(self, client, forwarding, header_timeout).await
    }

    /// Handles one request for `target`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        target: &str,
        forwarding: &Forwarding,
    ) -> Response<Body> {
        if req.uri().path() == CALLBACK_PATH {
            return self.callback(&req);
        }
        let had_bearer = headers::bearer(req.headers()).is_some();
        let Some(identity) = self.identify(req.headers()).await else {
            return self.unauthenticated(&req, had_bearer);
        };
        let session = match self
            .sessions
            .get_or_open(&identity, target, &self.upstream)
            .await
        {
            Ok(session) => session,
            Err(refusal) => return refusal,
        };
        upstream::forward(req, &session, had_bearer, forwarding).await
    }

    /// The caller, by their bearer token or else the gateway's cookie; `None`
    /// for neither or a token that does not verify.
    async fn identify(&self, headers: &hyper::HeaderMap) -> Option<Arc<Identity>> {
        let token = headers::bearer(headers).or_else(|| headers::session_cookie(headers))?;
        self.tokens.identify(self.store.as_ref(), token).await
    }

    /// Exchanges a one-time code from the login page for this app host's own
    /// session cookie, then sends the browser where it was going.
    fn callback(&self, req: &Request<Incoming>) -> Response<Body> {
        #[derive(serde::Deserialize)]
        struct Callback {
            code: String,
            path: Option<String>,
        }
        let query = req.uri().query().unwrap_or_default();
        let Ok(callback) = serde_urlencoded::from_str::<Callback>(query) else {
            return json_error(StatusCode::BAD_REQUEST, "missing code");
        };
        let Some(token) = self.handoff.redeem(&callback.code, request_host(req)) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid or expired login code; log in again",
            );
        };
        let path = callback
            .path
            .filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\'))
            .unwrap_or_else(|| "/".into());
        // Host-only (no Domain), so each app's cookie stays on that app.
        let cookie = format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax",
            token.expose()
        );
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, path)
            .header(header::SET_COOKIE, cookie)
            .body(Body::empty())
            .unwrap_or_default()
    }

    /// API clients get 401 JSON; browsers are sent to the login page and come back.
    fn unauthenticated(&self, req: &Request<Incoming>, had_bearer: bool) -> Response<Body> {
        let browser = !had_bearer
            && req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
        if !browser {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid token: run `drawbridge login` and send `Authorization: Bearer <token>`",
            );
        }
        let host = request_host(req);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let next = format!("https://{host}{path}");
        Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, self.login_url(&next))
            .body(Body::empty())
            .unwrap_or_default()
    }
}

/// The host the client asked for: the Host header (HTTP/1.1) or the URI's
/// authority (HTTP/2 `:authority`).
pub fn request_host<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}
