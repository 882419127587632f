//! Header hygiene for the HTTP proxy, both ways: hop-by-hop headers go, any
//! header a client could use to claim an identity goes (the upstream must only
//! believe what the gateway injects), the gateway's own cookie and the bearer
//! token it consumed go, and the forwarding headers are set.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

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

/// Whether `name` (any case) is one of the fixed hop-by-hop headers.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// RFC 7239's word for an address it cannot give; every IP address is a valid
/// header value, so this is never sent in practice.
const UNKNOWN: HeaderValue = HeaderValue::from_static("unknown");

/// The forwarding headers for one client connection, made once rather than
/// formatted for every request: the client's address
/// does not change, and the host rarely does (HTTP/2 may reuse a connection for
/// another app, which then gets its own `Forwarded`).
pub struct Forwarding {
    peer: SocketAddr,
    /// `X-Forwarded-For`.
    client: HeaderValue,
    /// The host of the first forwarded request and its `Forwarded`.
    first_host: OnceLock<(HeaderValue, HeaderValue)>,
}

impl Forwarding {
    pub fn new(peer: SocketAddr) -> Self {
        Forwarding {
            peer,
            client: HeaderValue::try_from(peer.ip().to_string()).unwrap_or(UNKNOWN),
            first_host: OnceLock::new(),
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sets `X-Forwarded-For/Host/Proto` and `Forwarded` for a request to `host`
    /// (what the client asked for), replacing whatever the client sent.
    pub fn apply(&self, headers: &mut HeaderMap, host: &HeaderValue) {
        headers.insert(X_FORWARDED_FOR, self.client.clone());
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let (first, forwarded) = self
            .first_host
            .get_or_init(|| (host.clone(), self.forwarded(host)));
        let forwarded = if first == host {
            forwarded.clone()
        } else {
            self.forwarded(host)
        };
        headers.insert(header::FORWARDED, forwarded);
    }

    /// `for="ADDRESS";proto=https;host="HOST"`, an IPv6 address in brackets
    /// (RFC 7239 §6).
    fn forwarded(&self, host: &HeaderValue) -> HeaderValue {
        let client = match self.peer.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut value = format!("for=\"{client}\";proto=https;host=\"").into_bytes();
        value.extend_from_slice(host.as_bytes());
        value.push(b'"');
        HeaderValue::from_bytes(&value).unwrap_or(UNKNOWN)
    }
}

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
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let ours = |c: &str| {
        c.strip_prefix(SESSION_COOKIE)
            .is_some_and(|rest| rest.starts_with('='))
    };
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !ours(c))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Response side: an app's cookies stay on the app's own public host.
///
/// A `Domain` attribute names either the app's internal host, which the browser
/// never sees and so drops the cookie for, or a parent domain, which would send
/// the cookie to sibling apps and to the gateway itself. Without it the cookie is
/// host-only for the app's public host, like the gateway's own. A cookie named
/// like the gateway's session cookie is dropped: an app must not replace or
/// clear the login the gateway checks on its host.
pub fn scope_set_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let scoped: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(scoped_cookie)
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in scoped {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// One `Set-Cookie` value without its `Domain` attributes, or `None` for the
/// gateway's own cookie name. Works on bytes: cookie values may hold bytes that
/// are not text.
pub fn scoped_cookie(value: &HeaderValue) -> Option<HeaderValue> {
    let mut parts = value.as_bytes().split(|&b| b == b';');
    let pair = parts.next().unwrap_or_default();
    let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
    if name.trim_ascii() == SESSION_COOKIE.as_bytes() {
        return None;
    }
    let is_domain = |attribute: &&[u8]| {
        let name = attribute.split(|&b| b == b'=').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"domain")
    };
    if !parts.clone().any(|a| is_domain(&a)) {
        return Some(value.clone());
    }
    let mut kept = pair.to_vec();
    for attribute in parts.filter(|a| !is_domain(a)) {
        kept.extend_from_slice(b"; ");
        kept.extend_from_slice(attribute.trim_ascii());
    }
    HeaderValue::from_bytes(&kept).ok()
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
    fn app_cookies_lose_their_domain_and_cannot_replace_the_gateway_cookie() {
        let mut h = map(&[
            ("set-cookie", "a=1; Domain=127.0.0.1; Path=/"),
            ("set-cookie", "b=2;path=/b; domain=.example.com ;HttpOnly"),
            ("set-cookie", "c=3; Path=/; Secure"),
            ("set-cookie", "drawbridge_session=evil; Path=/"),
            ("set-cookie", " drawbridge_session =; Max-Age=0"),
            ("set-cookie", "drawbridge_sessions=kept"),
            ("content-type", "text/html"),
        ]);
        scope_set_cookies(&mut h);
        let cookies: Vec<&str> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(
            cookies,
            [
                "a=1; Path=/",
                "b=2; path=/b; HttpOnly",
                "c=3; Path=/; Secure",
                "drawbridge_sessions=kept"
            ]
        );
        assert_eq!(h["content-type"], "text/html");
        // No Set-Cookie at all: nothing changes.
        let mut plain = map(&[("content-type", "text/plain")]);
        scope_set_cookies(&mut plain);
        assert_eq!(plain.len(), 1);
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
    fn forwarding_headers_replace_the_clients_and_follow_the_host() {
        let forwarding = Forwarding::new("[2001:db8::7]:50000".parse().expect("address"));
        let mut headers = map(&[("x-forwarded-for", "10.0.0.1"), ("forwarded", "for=evil")]);
        let grafana = HeaderValue::from_static("grafana.localhost:8443");
        forwarding.apply(&mut headers, &grafana);
        assert_eq!(headers["x-forwarded-for"], "2001:db8::7");
        assert_eq!(headers["x-forwarded-host"], "grafana.localhost:8443");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"grafana.localhost:8443\""
        );
        assert_eq!(headers.get_all("forwarded").iter().count(), 1);
        // The same connection used for another app (HTTP/2), then the first again.
        let wiki = HeaderValue::from_static("wiki.localhost:8443");
        forwarding.apply(&mut headers, &wiki);
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"wiki.localhost:8443\""
        );
        forwarding.apply(&mut headers, &grafana);
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"grafana.localhost:8443\""
        );
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
