//! The REST API on the HTTPS listener: login, requests, approvals, revocation,
//! sessions. The CLI is its main client; the web UI will be another.
//!
//! Architecture invariant: handlers translate between HTTP and the `identity` /
//! `access` modules and do nothing else; no decision is made here.

mod certs;
mod tls;
pub mod types;
mod web;

pub use certs::{LocalCa, new_ca};
pub use tls::{HttpsFront, serve_tls, server_tls_config};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::access::{Access, AccessError, NewAccess};
use crate::identity::{self, FailureLimiter, Identity, IdentityError, Subject};
use crate::secret::Secret;
use crate::session::{EndReason, Registry};
use crate::store::{RequestState, Store, StoreError};
use crate::time;
use types::*;

/// The TCP peer of the HTTPS connection a request came on.
#[derive(Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

pub struct ApiState {
    pub limiter: Arc<FailureLimiter>,
    pub store: Arc<dyn Store>,
    pub access: Arc<Access>,
    pub registry: Registry,
    pub token_ttl: Duration,
    /// Browsers' session cookie is scoped to this domain.
    pub apps_domain: String,
    /// The HTTP assertion keys, served at `/.well-known/jwks.json`.
    pub jwks: serde_json::Value,
    /// One-time codes that carry a browser login over to an app.
    pub handoff: Arc<crate::proxy::http::Handoff>,
    pub audit: crate::recording::AuditLog,
    /// Signs engineers' own SSH keys (`POST /api/v1/ssh-certificates`).
    pub engineer_ca: Arc<identity::EngineerCa>,
}

impl ApiState {
    /// Writes one audit record; a failure is logged, never shown to the client.
    pub fn audit_event(&self, kind: &str, actor: &str, subject: &str, details: &str) {
        if let Err(e) = self.audit.event(kind, actor, subject, details) {
            tracing::error!(error = %e, kind, "cannot write the audit record");
        }
    }
}

type Shared = State<Arc<ApiState>>;

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/requests", post(create_request).get(list_requests))
        .route("/api/v1/requests/{id}", get(get_request))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/requests/{id}/cancel", post(cancel))
        .route("/api/v1/grants", get(list_grants))
        .route("/api/v1/grants/{id}/revoke", post(revoke))
        .route("/api/v1/grants/{id}/release", post(release))
        .route("/api/v1/break-glass", post(break_glass))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/ssh-certificates", post(sign_ssh_key))
        .route("/login", get(web::login_page).post(web::login_submit))
        .route("/.well-known/jwks.json", get(web::jwks))
        .route("/api/v1/sessions/{id}/kill", post(kill))
        .with_state(state)
}

/// An error as the client sees it: a status and a sentence.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::InvalidCredentials
            | IdentityError::Disabled(_)
            | IdentityError::Certificate(_)
            | IdentityError::CertificatePrincipals(_)
            | IdentityError::CertificateUser(_) => {
                // A disabled user gets the same answer as a wrong password.
                ApiError(StatusCode::UNAUTHORIZED, "invalid credentials".into())
            }
            other => internal(other),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match &e {
            AccessError::Denied(_)
            | AccessError::SelfApproval
            | AccessError::NotAllowed { .. }
            | AccessError::ForwardDenied { .. } => StatusCode::FORBIDDEN,
            AccessError::NotFound(_) | AccessError::UnknownTarget(_) => StatusCode::NOT_FOUND,
            AccessError::WrongState { .. } => StatusCode::CONFLICT,
            AccessError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccessError::Store(_) => return internal(e),
        };
        ApiError(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        internal(e)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "api internal error");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// The caller, identified by `Authorization: Bearer <token>`.
pub struct Caller(Identity);

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "missing bearer token".into()))?;
        let identity = identity::by_token(state.store.as_ref(), token.trim(), time::now()).await?;
        Ok(Caller(identity))
    }
}

async fn login(
    State(s): Shared,
    axum::Extension(PeerAddr(peer)): axum::Extension<PeerAddr>,
    Json(body): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let now = time::now();
    let subjects = [
        Subject::User(body.user.clone()),
        Subject::Address(peer.ip()),
    ];
    if let Err(wait) = s.limiter.check(&subjects, std::time::Instant::now()) {
        tracing::warn!(user = body.user, %peer, "login refused: too many failed attempts");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins; try again in {}s",
                wait.as_secs().max(1)
            ),
        ));
    }
    let password = Secret::new(body.password);
    let identity =
        match identity::by_password_totp(s.store.as_ref(), &body.user, &password, &body.totp, now)
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                if matches!(
                    e,
                    IdentityError::InvalidCredentials | IdentityError::Disabled(_)
                ) {
                    s.limiter.failed(&subjects, std::time::Instant::now());
                }
                tracing::info!(user = body.user, error = %e, "login refused");
                s.audit_event("login.failed", &body.user, "api", &e.to_string());
                return Err(e.into());
            }
        };
    let token = identity::issue_token(
        s.store.as_ref(),
        &identity,
        s.token_ttl.as_secs() as i64,
        now,
    )
    .await?;
    tracing::info!(user = identity.name(), "login");
    s.audit_event("login.ok", identity.name(), "api", "password+totp");
    Ok(Json(LoginResponse {
        user: identity.name().to_string(),
        token: token.value().expose().clone(),
        expires_at: token.expires_at(),
    }))
}

/// Signs the caller's own SSH public key with the engineer CA, so stock `ssh`
/// logs in to the gateway with it (the gateway's SSH front trusts that CA; targets
/// do not). Every certificate issued is in the audit log with its serial.
async fn sign_ssh_key(
    State(s): Shared,
    Caller(who): Caller,
    Json(body): Json<SshCertificateRequest>,
) -> Result<(StatusCode, Json<SshCertificateResponse>), ApiError> {
    let key = crate::keys::parse_public_key(&body.public_key)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let issued = s.engineer_ca.issue(&who, &key, time::now())?;
    let certificate = issued.certificate.to_openssh().map_err(internal)?;
    let (valid_after, valid_before) = (
        issued.certificate.valid_after() as i64,
        issued.certificate.valid_before() as i64,
    );
    let details = format!(
        "serial {} id {:?} for key {} valid until {}",
        issued.serial,
        issued.key_id,
        identity::fingerprint(&key),
        time::format(valid_before)
    );
    tracing::info!(
        user = who.name(),
        serial = issued.serial,
        "ssh certificate issued"
    );
    s.audit_event("ssh_cert.issued", who.name(), &issued.key_id, &details);
    Ok((
        StatusCode::CREATED,
        Json(SshCertificateResponse {
            certificate,
            serial: issued.serial,
            key_id: issued.key_id,
            valid_after,
            valid_before,
        }),
    ))
}

async fn whoami(Caller(who): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: who.name().to_string(),
        groups: who.user().groups.clone(),
        admin: who.user().admin,
    })
}

fn new_access(body: &NewAccessRequest) -> Result<NewAccess<'_>, ApiError> {
    Ok(NewAccess {
        target: &body.target,
        login: &body.login,
        duration: time::parse_duration(&body.duration)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?,
        reason: &body.reason,
        ticket: body.ticket.as_deref().filter(|t| !t.is_empty()),
    })
}

async fn create_request(
    State(s): Shared,
    Caller(who): Caller,
    Json(body): Json<NewAccessRequest>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    let row = s
        .access
        .request(&who, new_access(&body)?, time::now())
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn break_glass(
    State(s): Shared,
    Caller(who): Caller,
    Json(body): Json<NewAccessRequest>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    let row = s
        .access
        .break_glass(&who, new_access(&body)?, time::now())
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Deserialize)]
struct ListFilter {
    state: Option<String>,
    /// Only the caller's own requests.
    #[serde(default)]
    mine: bool,
}

async fn list_requests(
    State(s): Shared,
    Caller(who): Caller,
    Query(filter): Query<ListFilter>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    let state =
        match filter.state.as_deref() {
            None => None,
            Some(name) => Some(RequestState::parse(name).ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, format!("unknown state {name:?}"))
            })?),
        };
    let rows = s.store.list_requests(state).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| !filter.mine || r.user_id == who.user().id)
            .map(Into::into)
            .collect(),
    ))
}

async fn get_request(
    State(s): Shared,
    Caller(_): Caller,
    Path(id): Path<i64>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s
        .store
        .request(id)
        .await?
        .ok_or(AccessError::NotFound(id))?;
    Ok(Json(row.into()))
}

/// Active grants: approved and inside their window.
async fn list_grants(
    State(s): Shared,
    Caller(who): Caller,
    Query(filter): Query<ListFilter>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    let now = time::now();
    let rows = s.store.list_requests(Some(RequestState::Approved)).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| r.grant_end.is_some_and(|end| end > now))
            .filter(|r| !filter.mine || r.user_id == who.user().id)
            .map(Into::into)
            .collect(),
    ))
}

async fn approve(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Comment>,
) -> Result<Json<RequestView>, ApiError> {
    let (row, _) = s
        .access
        .approve(&who, id, body.comment.as_deref(), time::now())
        .await?;
    Ok(Json(row.into()))
}

async fn deny(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Comment>,
) -> Result<Json<RequestView>, ApiError> {
    let comment = body.comment.unwrap_or_default();
    let row = s.access.deny(&who, id, &comment, time::now()).await?;
    Ok(Json(row.into()))
}

async fn cancel(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s.access.cancel(&who, id, time::now()).await?;
    Ok(Json(row.into()))
}

async fn revoke(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Comment>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s
        .access
        .revoke(&who, id, body.comment.as_deref(), time::now())
        .await?;
    let ended = s
        .registry
        .end_where(|i| i.grant_id == Some(id), EndReason::GrantRevoked(id));
    tracing::info!(
        grant = id,
        by = who.name(),
        sessions_ended = ended,
        "grant revoked"
    );
    Ok(Json(row.into()))
}

async fn release(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s.access.release(&who, id, time::now()).await?;
    let ended = s
        .registry
        .end_where(|i| i.grant_id == Some(id), EndReason::GrantReleased(id));
    tracing::info!(grant = id, sessions_ended = ended, "grant released");
    Ok(Json(row.into()))
}

/// Ends a live session on this gateway now. Only admins and members of the
/// `approvers` group may, the same people who may end access by revoking.
async fn kill(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(body): Json<Comment>,
) -> Result<Json<Killed>, ApiError> {
    let user = who.user();
    if !user.admin && !user.groups.iter().any(|g| g == "approvers") {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not kill sessions (admins and approvers may)",
                who.name()
            ),
        ));
    }
    let by = match body.comment.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("{} ({c})", who.name()),
        _ => who.name().to_string(),
    };
    let reason = EndReason::Killed(by);
    if s.registry.end_where(|i| i.id == id, reason.clone()) == 0 {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no live session {id} on this gateway"),
        ));
    }
    tracing::info!(session = id, by = who.name(), "session killed");
    Ok(Json(Killed {
        id,
        reason: reason.to_string(),
    }))
}

async fn sessions(State(s): Shared, Caller(_): Caller) -> Result<Json<Vec<SessionView>>, ApiError> {
    let live = s.registry.list();
    let rows = s.store.list_sessions().await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SessionView::from_row(r, &live))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document must list every route the router serves.
    #[test]
    fn openapi_lists_every_route() {
        let spec = include_str!("../../proto/openapi.yaml");
        let source = include_str!("mod.rs");
        let routes: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert!(routes.len() >= 10, "{routes:?}");
        for route in routes {
            assert!(
                spec.contains(&format!("  {route}:")),
                "{route} missing from proto/openapi.yaml"
            );
        }
    }
}
