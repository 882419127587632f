//! The REST API on the HTTPS listener: login, requests, approvals, revocation,
//! sessions. The CLI is its main client; the web UI will be another.
//!
//! Architecture invariant: handlers translate between HTTP and the `identity` /
//! `access` modules and do nothing else; no decision is made here.

mod tls;
pub mod types;

pub use tls::{serve_tls, server_tls_config};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::access::{Access, AccessError};
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
}

type Shared = State<Arc<ApiState>>;

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/requests", post(create_request).get(list_requests))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/grants/{id}/revoke", post(revoke))
        .route("/api/v1/sessions", get(sessions))
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
            IdentityError::InvalidCredentials | IdentityError::Disabled(_) => {
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
        identity::by_password_totp(s.store.as_ref(), &body.user, &password, &body.totp, now)
            .await
            .inspect_err(|e| {
                if matches!(
                    e,
                    IdentityError::InvalidCredentials | IdentityError::Disabled(_)
                ) {
                    s.limiter.failed(&subjects, std::time::Instant::now());
                }
                tracing::info!(user = body.user, error = %e, "login refused")
            })?;
    let token = identity::issue_token(
        s.store.as_ref(),
        &identity,
        s.token_ttl.as_secs() as i64,
        now,
    )
    .await?;
    tracing::info!(user = identity.name(), "login");
    Ok(Json(LoginResponse {
        user: identity.name().to_string(),
        token: token.value().expose().clone(),
        expires_at: token.expires_at(),
    }))
}

async fn whoami(Caller(who): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: who.name().to_string(),
        groups: who.user().groups.clone(),
        admin: who.user().admin,
    })
}

async fn create_request(
    State(s): Shared,
    Caller(who): Caller,
    Json(body): Json<NewAccessRequest>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    let duration =
        time::parse_duration(&body.duration).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let row = s
        .access
        .request(
            &who,
            &body.target,
            &body.login,
            duration,
            &body.reason,
            time::now(),
        )
        .await?;
    tracing::info!(
        request = row.id,
        user = who.name(),
        target = row.target,
        login = row.login,
        "access requested"
    );
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Deserialize)]
struct ListFilter {
    state: Option<String>,
}

async fn list_requests(
    State(s): Shared,
    Caller(_): Caller,
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
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

async fn approve(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Comment>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s
        .access
        .approve(&who, id, body.comment.as_deref(), time::now())
        .await?;
    tracing::info!(request = id, approver = who.name(), "request approved");
    Ok(Json(row.into()))
}

async fn deny(
    State(s): Shared,
    Caller(who): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Comment>,
) -> Result<Json<RequestView>, ApiError> {
    let row = s.access.deny(&who, id, body.comment.as_deref()).await?;
    tracing::info!(request = id, approver = who.name(), "request denied");
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
