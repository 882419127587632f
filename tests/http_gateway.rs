//! The HTTP gateway end to end: a real upstream (Python's http.server with a
//! websocket echo), the real gateway, stock `curl` as browser and API client.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::web::*;
use support::*;

/// The values of header `name` in curl's `-D -` output, in order.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
        .collect()
}

#[test]
fn bearer_requests_reach_the_app_with_a_verifiable_assertion_and_no_spoofed_identity() {
    let web = Web::new();
    let grant = web.grant_web();
    let o = web.curl(&[
        "-H",
        &bearer(&web.w.alice),
        "-H",
        "X-Forwarded-User: admin",
        "-H",
        "X-Drawbridge-Assertion: forged",
        "-H",
        "Remote-User: admin",
        "-H",
        "Cookie: theme=dark; drawbridge_session=stolen",
        &web.url("app.localhost", "/headers"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stdout(&o)));
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert!(seen.get("remote-user").is_none(), "{seen}");
    assert!(
        seen.get("authorization").is_none(),
        "the gateway's token must not reach the app: {seen}"
    );
    assert_eq!(seen["cookie"], "theme=dark", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    let host = format!("app.localhost:{}", web.https_port);
    assert_eq!(seen["x-forwarded-host"], host.as_str());
    assert_eq!(
        seen["forwarded"],
        format!("for=\"127.0.0.1\";proto=https;host=\"{host}\"")
    );

    // The assertion verifies with an independent JWT library against the JWKS.
    let jwks = web.curl(&[&web.url("localhost", "/.well-known/jwks.json")]);
    let jwks: serde_json::Value = serde_json::from_slice(&jwks.stdout).expect("jwks");
    let jwt = seen["x-drawbridge-assertion"].as_str().expect("assertion");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).expect("jwk");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["app"]);
    validation.set_issuer(&["drawbridge"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .expect("valid assertion")
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["login"], "web");
    assert_eq!(claims["grant"], grant);
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert!((1..=300).contains(&lifetime), "{lifetime}");
    // A forged signature does not verify.
    let mut forged = jwt.to_string();
    forged.pop();
    forged.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &validation).is_err());

    // Redirects to the upstream's own address come back under the gateway's name.
    let o = web.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        "-H",
        &bearer(&web.w.alice),
        &web.url("app.localhost", "/redirect"),
    ]);
    assert_eq!(stdout(&o), web.url("app.localhost", "/headers"));
}

#[test]
fn app_cookies_stay_on_the_app_host_and_never_replace_the_gateway_cookie() {
    let web = Web::new();
    web.grant_web();
    let jar = web.w.gateway.path("app-cookies.txt");
    let jar = jar.to_str().expect("path");
    // The app sets a cookie for its internal address, one for a parent domain
    // and one named like the gateway's session cookie.
    let o = web.curl_saving_cookies(
        jar,
        &[
            "-H",
            &bearer(&web.w.alice),
            &web.url("app.localhost", "/cookies"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        header_values(&stdout(&o), "set-cookie"),
        ["app_sid=s1; Path=/; HttpOnly", "app_theme=dark; Path=/"],
        "{}",
        stdout(&o)
    );
    // As a browser would: the jar holds both for the app's public host only,
    // and sends them back to the app.
    let saved = std::fs::read_to_string(jar).expect("jar");
    assert!(!saved.contains("from-the-app"), "{saved}");
    let o = web.curl(&[
        "-b",
        jar,
        "-H",
        &bearer(&web.w.alice),
        &web.url("app.localhost", "/headers"),
    ]);
    let seen: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let cookie = seen["cookie"].as_str().unwrap_or_default();
    assert!(
        cookie.contains("app_sid=s1") && cookie.contains("app_theme=dark"),
        "{seen}"
    );
}

#[test]
fn every_refusal_is_clear_and_api_clients_never_get_a_redirect() {
    let web = Web::new();
    // No token: JSON 401 for API clients, a login redirect for browsers.
    let o = web.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &web.url("app.localhost", "/headers"),
    ]);
    assert_eq!(stdout(&o), "401");
    let o = web.curl(&[
        "-H",
        "Authorization: Bearer dbt_0000",
        "-w",
        "%{http_code}",
        &web.url("app.localhost", "/headers"),
    ]);
    assert!(
        stdout(&o).ends_with("401") && stdout(&o).contains("\"error\""),
        "{}",
        stdout(&o)
    );
    let o = web.curl(&[
        "-H",
        "Accept: text/html",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &web.url("app.localhost", "/headers?x=1"),
    ]);
    let out = stdout(&o);
    assert!(
        out.starts_with("302 ") && out.contains("/login?next=https%3A%2F%2Fapp.localhost"),
        "{out}"
    );
    // A token but no grant: 403 saying how to ask.
    web.w.alice.login();
    let o = web.curl(&[
        "-H",
        &bearer(&web.w.alice),
        "-w",
        "\n%{http_code}",
        &web.url("app.localhost", "/headers"),
    ]);
    let out = stdout(&o);
    assert!(
        out.ends_with("403") && out.contains("drawbridge request app --login web"),
        "{out}"
    );
    // An unknown app.
    let o = web.curl(&[
        "--resolve",
        &format!("nope.localhost:{}:127.0.0.1", web.https_port),
        "-H",
        &bearer(&web.w.alice),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &web.url("nope.localhost", "/"),
    ]);
    assert_eq!(stdout(&o), "404");
}

#[test]
fn browsers_log_in_once_with_a_secure_cookie_and_are_sent_back_only_on_site() {
    let web = Web::new();
    web.grant_web();
    let jar = web.w.gateway.path("cookies.txt");
    let jar = jar.to_str().expect("path");
    let next = web.url("app.localhost", "/headers");
    // grant_web's CLI login used this step's code; codes are single use.
    let code = drawbridge::identity::totp_code(web.w.alice.totp.bytes(), unix_now() + 30);
    let o = web.curl_saving_cookies(
        jar,
        &[
            "--data-urlencode",
            "user=alice",
            "--data-urlencode",
            "password=pw-alice",
            "--data-urlencode",
            &format!("totp={code}"),
            "--data-urlencode",
            &format!("next={next}"),
            &web.url("localhost", "/login"),
        ],
    );
    let head = stdout(&o);
    assert!(
        head.starts_with("HTTP/1.1 303") || head.starts_with("HTTP/2 303"),
        "{head}"
    );
    let cookies = header_values(&head, "set-cookie");
    let cookie = cookies.first().expect("cookie");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // The app gets the session through a one-time code on its own host.
    let code_url = header_values(&head, "location").pop().expect("location");
    assert!(
        code_url.starts_with(&web.url("app.localhost", "/.drawbridge/callback?code=")),
        "{code_url}"
    );
    // Follow it as a browser does, keeping cookies per host.
    let o = web.curl(&["-L", "-b", jar, "-c", jar, &code_url]);
    let seen: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stdout(&o)));
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert!(
        seen.get("cookie").is_none(),
        "our cookie must not reach the app: {seen}"
    );
    // A login code is single use.
    let o = web.curl(&["-o", "/dev/null", "-w", "%{http_code}", &code_url]);
    assert_eq!(stdout(&o), "400");
    // With the gateway's cookie, another visit to the login page goes straight
    // through to the app: one login covers every app.
    let again = web.url("localhost", &format!("/login?next={}", urlencode(&next)));
    let o = web.curl(&["-L", "-b", jar, "-c", jar, &again]);
    let seen: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stdout(&o)));
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");

    // Off-site targets after login are refused: no open redirect.
    let code = web.w.carol.code();
    let o = web.curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--data-urlencode",
        "user=carol",
        "--data-urlencode",
        "password=pw-carol",
        "--data-urlencode",
        &format!("totp={code}"),
        "--data-urlencode",
        "next=https://evil.example/",
        &web.url("localhost", "/login"),
    ]);
    assert!(
        stdout(&o).to_ascii_lowercase().contains("location: /\r"),
        "{}",
        stdout(&o)
    );
    // Wrong credentials: 401 and the form again, no cookie.
    let o = web.curl(&[
        "-D",
        "-",
        "--data-urlencode",
        "user=alice",
        "--data-urlencode",
        "password=nope",
        "--data-urlencode",
        "totp=000000",
        &web.url("localhost", "/login"),
    ]);
    let out = stdout(&o);
    assert!(
        out.contains(" 401") && !out.to_ascii_lowercase().contains("set-cookie"),
        "{out}"
    );
}

#[test]
fn large_bodies_stream_both_ways() {
    let web = Web::new();
    web.grant_web();
    let size = 64 * 1024 * 1024;
    let o = web.curl(&[
        "-H",
        &bearer(&web.w.alice),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &web.url("app.localhost", &format!("/big?n={size}")),
    ]);
    assert_eq!(stdout(&o), size.to_string());
    let file: PathBuf = web.w.gateway.path("upload.bin");
    std::fs::write(&file, vec![7u8; 48 * 1024 * 1024]).expect("write");
    let o = web.curl(&[
        "-H",
        &bearer(&web.w.alice),
        "-T",
        file.to_str().expect("path"),
        &web.url("app.localhost", "/upload"),
    ]);
    let reply: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stdout(&o)));
    assert_eq!(reply["received"], 48 * 1024 * 1024);
}

#[test]
fn websockets_relay_and_a_revoke_closes_them_and_refuses_the_next_request() {
    let web = Web::new();
    let grant = web.grant_web();
    let mut ws = Command::new("python3")
        .args([FIXTURE, "client", &web.url("app.localhost", "/ws")])
        .arg(web.w.gateway.path("data/keys/tls.crt"))
        .arg("app.localhost")
        .env("TOKEN", token(&web.w.alice))
        .stdout(Stdio::piped())
        .spawn()
        .expect("ws client");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(ws.stdout.take().expect("stdout")));
    assert!(
        lines
            .next()
            .expect("status")
            .expect("line")
            .contains(" 101 ")
    );
    assert_eq!(lines.next().expect("echo").expect("line"), "ping-1");
    let at = Instant::now();
    assert!(
        web.w
            .bob
            .cli(&["revoke", &grant.to_string()])
            .status
            .success()
    );
    assert_eq!(lines.next().expect("close").expect("line"), "closed");
    assert!(
        at.elapsed() < Duration::from_millis(1500),
        "websocket closed after {:?}",
        at.elapsed()
    );
    let _ = ws.wait();
    let o = web.curl(&[
        "-H",
        &bearer(&web.w.alice),
        "-w",
        "\n%{http_code}",
        &web.url("app.localhost", "/headers"),
    ]);
    assert!(
        stdout(&o).ends_with("403") && stdout(&o).contains("was revoked"),
        "{}",
        stdout(&o)
    );

    // Every request is in the session's recording, with secrets masked.
    let sessions = web.w.alice.cli(&["sessions", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&sessions.stdout).expect("json");
    let id = list
        .iter()
        .find(|s| s["protocol"] == "http")
        .expect("http session")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let _ = web.upstream.port;
    let start = Instant::now();
    loop {
        let export = web.w.gateway.admin(&["export", &id, "--format", "jsonl"]);
        let text = stdout(&export);
        if text.contains("websocket closed") {
            assert!(text.contains("http GET /ws"), "{text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
