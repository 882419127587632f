//! The gateway's own pages on the bare host: the browser login form (password +
//! TOTP → session cookie valid for every app under the apps domain), logout, and
//! the JWKS that HTTP upstreams use to verify assertions.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::ApiState;
use crate::identity;
use crate::proxy::http::{CALLBACK_PATH, SESSION_COOKIE};
use crate::secret::Secret;
use crate::time;

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    totp: String,
    next: Option<String>,
}

/// Only https URLs on the apps domain (or its subdomains), or a local path, are
/// followed after login: never an open redirect.
pub fn safe_next(next: Option<&str>, apps_domain: &str) -> String {
    let Some(next) = next else { return "/".into() };
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        return next.to_string();
    }
    let host = next
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .map(|authority| authority.rsplit_once(':').map_or(authority, |(h, _)| h));
    match host {
        Some(h)
            if !h.contains('@')
                && (h == apps_domain || h.ends_with(&format!(".{apps_domain}"))) =>
        {
            next.to_string()
        }
        _ => "/".into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(next: &str, message: Option<&str>) -> Html<String> {
    let message = message
        .map(|m| format!("<p class=\"error\">{}</p>", escape(m)))
        .unwrap_or_default();
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Drawbridge login</title>
<style>body{{font-family:sans-serif;max-width:22rem;margin:4rem auto}}label{{display:block;margin:.6rem 0}}input{{width:100%}}.error{{color:#b00}}</style>
</head><body><h1>Drawbridge</h1>{message}
<form method="post" action="/login">
<label>User <input name="user" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<label>TOTP code <input name="totp" inputmode="numeric" autocomplete="one-time-code" required></label>
<input type="hidden" name="next" value="{}">
<button type="submit">Log in</button></form></body></html>"#,
        escape(next)
    ))
}

/// Where to send a logged-in browser: an app URL goes through the app's
/// callback with a one-time code (so the app gets its own cookie); anything
/// else is a local path.
fn after_login(s: &ApiState, next: &str, token: &str) -> String {
    let Some(rest) = next.strip_prefix("https://") else {
        return next.to_string();
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if name == s.apps_domain {
        return path.to_string();
    }
    match s.handoff.issue(token, host) {
        Some(code) => {
            let query = serde_urlencoded::to_string([("code", code.as_str()), ("path", path)])
                .unwrap_or_default();
            format!("https://{host}{CALLBACK_PATH}?{query}")
        }
        None => "/".into(),
    }
}

fn redirect(location: &str, cookie: Option<String>) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response();
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The form, or straight on when the browser already has a valid session.
pub async fn login_page(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<Next>,
    headers: HeaderMap,
) -> Response {
    let next = safe_next(q.next.as_deref(), &s.apps_domain);
    if let Some(token) = crate::proxy::http::session_cookie(&headers)
        && identity::by_token(s.store.as_ref(), token, time::now())
            .await
            .is_ok()
    {
        return redirect(&after_login(&s, &next, token), None);
    }
    page(&next, None).into_response()
}

pub async fn login_submit(State(s): State<Arc<ApiState>>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref(), &s.apps_domain);
    let now = time::now();
    let password = Secret::new(form.password);
    let identity =
        match identity::by_password_totp(s.store.as_ref(), &form.user, &password, &form.totp, now)
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                tracing::info!(user = form.user, error = %e, "web login refused");
                s.audit_event("login.failed", &form.user, "web", &e.to_string());
                return (
                    StatusCode::UNAUTHORIZED,
                    page(&next, Some("invalid credentials")),
                )
                    .into_response();
            }
        };
    let ttl = s.token_ttl.as_secs() as i64;
    let token = match identity::issue_token(s.store.as_ref(), &identity, ttl, now).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot issue web session");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    tracing::info!(user = identity.name(), "web login");
    s.audit_event("login.ok", identity.name(), "web", "password+totp");
    // Host-only: apps get their own cookie through the one-time-code handoff.
    // HttpOnly keeps scripts away from it; Lax keeps it off cross-site subrequests.
    let token = token.value().expose();
    let cookie =
        format!("{SESSION_COOKIE}={token}; Path=/; Max-Age={ttl}; Secure; HttpOnly; SameSite=Lax");
    redirect(&after_login(&s, &next, token), Some(cookie))
}

pub async fn jwks(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(s.jwks.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_same_site_redirects_are_followed() {
        let d = "localhost";
        assert_eq!(
            safe_next(Some("https://grafana.localhost:8443/d/x?y=1"), d),
            "https://grafana.localhost:8443/d/x?y=1"
        );
        assert_eq!(safe_next(Some("/sessions"), d), "/sessions");
        for evil in [
            "https://evil.com/",
            "//evil.com/",
            "https://localhost.evil.com/",
            "https://evil.com@grafana.localhost/",
            "http://grafana.localhost/",
            "javascript:alert(1)",
            "/\\evil.com",
        ] {
            assert_eq!(safe_next(Some(evil), d), "/", "{evil}");
        }
    }
}
