//! Header hygiene for the HTTP proxy, both ways: hop-by-hop headers go, any
//! header a client could use to claim an identity goes (the upstream must only
//! believe what the gateway injects), the gateway's own cookie and the bearer
//! token it consumed go, and the forwarding headers are set.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 connection-specific headers, plus the ones proxies commonly
/// treat the same way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers through which an upstream might accept an identity. Warpgate had a CVE
/// for passing these through; we drop every one of them before injecting ours.
fn claims_identity(name: &str) -> bool {
    name.starts_with("x-drawbridge-")
        || name.starts_with("x-forwarded-")
        || name.starts_with("x-auth-request-")
        || name.starts_with("x-remote-")
        || matches!(
            name,
            "forwarded" | "remote-user" | "x-real-ip" | "x-webauth-user"
        )
}

pub const SESSION_COOKIE: &str = "drawbridge_session";

/// Removes the headers named in `Connection` and the fixed hop-by-hop list.
/// `keep_upgrade` keeps `Upgrade`/`Connection: upgrade` for a websocket handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let kept =
        |name: &HeaderName| keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION);
    // One pass over the few headers a message has, rather than a lookup per
    // listed name: this runs twice on every proxied request.
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(&name.as_str()))
            .cloned(),
    );
    for name in doomed.iter().filter(|name| !kept(name)) {
        headers.remove(name);
    }
}

/// Request side: drop identity claims, the bearer token and our cookie.
pub fn strip_client_credentials(headers: &mut HeaderMap, consumed_authorization: bool) {
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| claims_identity(name.as_str()))
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
    if consumed_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(&format!("{SESSION_COOKIE}=")))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Our session cookie's value, if the client sent one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// The bearer token, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Masks the values of query parameters that commonly carry secrets, for the
/// recording.
pub fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_sensitive(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "token",
        "password",
        "passwd",
        "secret",
        "key",
        "auth",
        "code",
        "session",
        "signature",
    ]
    .iter()
    .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn identity_claims_our_cookie_and_the_token_are_stripped() {
        let mut h = map(&[
            ("x-forwarded-user", "admin"),
            ("X-Drawbridge-Assertion", "forged"),
            ("remote-user", "admin"),
            ("authorization", "Bearer dbt_x"),
            ("cookie", "a=1; drawbridge_session=dbt_y; b=2"),
            ("accept", "*/*"),
        ]);
        strip_client_credentials(&mut h, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        let mut ws = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws.len(), 2);
    }

    #[test]
    fn secrets_in_queries_are_masked() {
        assert_eq!(
            mask_query("q=1&api_key=abc&token=t&page=2"),
            "q=1&api_key=***&token=***&page=2"
        );
    }
}
