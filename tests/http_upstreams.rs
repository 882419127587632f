//! What the HTTP gateway does toward apps, end to end: TLS to the app verified
//! against its CA, the per-target headers and vaulted static credential (and
//! that the secret never reaches a log or a recording), exact byte counts for
//! chunked bodies, and optional body recording. Real Python upstreams (plain and
//! TLS), the real gateway, stock curl.

mod support;

use base64ct::Encoding;
use support::web::*;
use support::*;

fn keys_of(seen: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = seen.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    keys
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}{}", stdout(o), stderr(o)))
}

#[test]
fn https_apps_are_verified_against_their_ca_and_an_unknown_issuer_is_a_clear_502() {
    let web = Web::new();
    let dir = web.w.gateway.path("tls");
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = tls_files(&dir, "app");
    let (other_ca, _, _) = tls_files(&dir, "other");
    let upstream = Upstream::start_tls(&cert, &key);
    let address = format!("https://127.0.0.1:{}", upstream.port);
    let add = |name: &str, ca: &std::path::Path| {
        web.w.gateway.admin_ok(&[
            "target",
            "add",
            name,
            "--protocol",
            "http",
            "--address",
            &address,
            "--tls-ca",
            ca.to_str().expect("path"),
        ])
    };
    assert!(add("secure", &ca).contains("TLS verified against the given CA"));
    add("wrongca", &other_ca);
    let listed = web.w.gateway.admin_ok(&["target", "list"]);
    assert!(
        listed.contains(&format!("secure\thttp\t{address}")),
        "{listed}"
    );

    web.grant_on("secure");
    let o = web.alice_get("secure", "/headers", &[]);
    let seen = json(&o);
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert_eq!(seen["host"], format!("127.0.0.1:{}", upstream.port));
    // The same over HTTP/1.1, which the gateway's own relay carries over its
    // own TLS connections to the app, kept alive across requests.
    let handed_before = web.w.gateway.log().matches(HANDED_TO_HYPER).count();
    let o = web.alice_get(
        "secure",
        "/headers",
        &[
            "--http1.1",
            "-w",
            "\n%{num_connects}",
            &web.url("secure.localhost", "/big?n=70000"),
            "-o",
            "/dev/null",
        ],
    );
    let out = stdout(&o);
    let (body, connects) = out.rsplit_once('\n').expect("two transfers");
    assert!(body.contains("\"x-forwarded-user\": \"alice\""), "{out}");
    assert_eq!(
        connects, "0",
        "the second request reuses the connection: {out}"
    );
    let handed = web.w.gateway.log().matches(HANDED_TO_HYPER).count();
    assert_eq!(handed, handed_before, "the relay served both");

    // The app's certificate does not chain to the configured CA: refused at
    // session start, with the reason.
    web.grant_on("wrongca");
    let o = web.alice_get("wrongca", "/headers", &["-w", "\n%{http_code}"]);
    let out = stdout(&o);
    assert!(
        out.ends_with("502")
            && out.contains("TLS with the target failed")
            && out.contains("UnknownIssuer"),
        "{out}"
    );

    // Registration refuses what cannot work.
    let bad = |args: &[&str], why: &str| {
        let mut all = vec!["target", "add", "nope", "--protocol", "http"];
        all.extend(args);
        let o = web.w.gateway.admin(&all);
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "{args:?}: {}",
            stderr(&o)
        );
    };
    let ca = ca.to_str().expect("path");
    bad(
        &["--address", "http://127.0.0.1:1", "--tls-ca", ca],
        "--tls-ca needs an https:// address",
    );
    bad(
        &[
            "--address",
            "https://127.0.0.1:1",
            "--tls-ca",
            "/nonexistent/ca.pem",
        ],
        "/nonexistent/ca.pem",
    );
    bad(
        &["--address", "https://127.0.0.1:1/admin"],
        "without a path",
    );
}

#[test]
fn apps_receive_exactly_the_configured_headers_and_credential_and_the_secret_never_leaks() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = "s3cr3t-basic-pw";
    let password_file = secrets.path().join("app-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write");
    let token_value = "tok-0123456789abcdef";
    let token_file = secrets.path().join("api-token");
    std::fs::write(&token_file, token_value).expect("write");
    let web = Web::with_app_args(&[
        "--no-assertion",
        "--header",
        "X-Forwarded-Email={email}",
        "--header",
        "X-Who={user} as {login} on {target} ({groups})",
        "--basic-user",
        "svc",
        "--basic-password-file",
        password_file.to_str().expect("path"),
    ]);
    let address = format!("127.0.0.1:{}", web.upstream.port);
    let token_path = token_file.to_str().expect("path");
    web.w.gateway.admin_ok(&[
        "target",
        "add",
        "api",
        "--protocol",
        "http",
        "--address",
        &address,
        "--bearer-file",
        token_path,
    ]);
    web.w.gateway.admin_ok(&[
        "target",
        "add",
        "broken",
        "--protocol",
        "http",
        "--address",
        &address,
        "--bearer-file",
        "/nonexistent/token",
    ]);

    // alice (no email) authenticates with her cookie and sends an Authorization
    // of her own: the vaulted credential replaces it.
    web.grant_web();
    let cookie = format!("Cookie: drawbridge_session={}", token(&web.w.alice));
    let o = web.curl(&[
        "-H",
        &cookie,
        "-H",
        "Authorization: Basic Zm9vOmJhcg==",
        &web.url("app.localhost", "/headers"),
    ]);
    let seen = json(&o);
    let basic = format!(
        "Basic {}",
        base64ct::Base64::encode_string(format!("svc:{password}").as_bytes())
    );
    assert_eq!(seen["authorization"], basic, "{seen}");
    assert_eq!(seen["x-who"], "alice as web on app (dev)", "{seen}");
    assert_eq!(
        keys_of(&seen),
        [
            "accept",
            "authorization",
            "forwarded",
            "host",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-who"
        ],
        "no assertion, no default identity headers, no email header for a user without one: {seen}"
    );

    // erin has an email address; a malformed one is refused.
    let o = web
        .w
        .gateway
        .admin(&["user", "add", "frank", "--email", "frank at example"]);
    assert!(
        stderr(&o).contains("is not an email address"),
        "{}",
        stderr(&o)
    );
    let erin = web
        .w
        .gateway
        .add_user_with("erin", &[], &["--email", "erin@example.com"]);
    erin.login();
    let id = erin.request("app", "web", "30m");
    assert!(
        web.w
            .bob
            .cli(&["approve", &id.to_string()])
            .status
            .success()
    );
    let o = web.curl(&["-H", &bearer(&erin), &web.url("app.localhost", "/headers")]);
    let seen = json(&o);
    assert_eq!(seen["x-forwarded-email"], "erin@example.com", "{seen}");
    assert_eq!(seen["x-who"], "erin as web on app ()", "{seen}");

    // A bearer credential; default identity headers and the assertion.
    web.grant_on("api");
    let seen = json(&web.alice_get("api", "/headers", &[]));
    assert_eq!(
        seen["authorization"],
        format!("Bearer {token_value}"),
        "{seen}"
    );
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert_eq!(seen["x-forwarded-groups"], "dev", "{seen}");
    assert!(seen.get("x-drawbridge-assertion").is_some(), "{seen}");

    // A credential that cannot be read refuses the session without saying more
    // than where to look.
    web.grant_on("broken");
    let o = web.alice_get("broken", "/headers", &["-w", "\n%{http_code}"]);
    let out = stdout(&o);
    assert!(
        out.ends_with("502")
            && out.contains("see the gateway log")
            && !out.contains("/nonexistent"),
        "{out}"
    );
    assert!(web.w.gateway.log().contains("/nonexistent/token"));

    // The secret is in no log, recording or listing.
    let b64 = basic.trim_start_matches("Basic ");
    let listed = web.w.gateway.admin_ok(&["target", "list", "--json"]);
    let records = eventually(
        || web.records("app"),
        |r| r.iter().any(|(_, t)| t.contains("http GET /headers")),
    );
    let mut everything = web.w.gateway.log() + &listed;
    for (_, text) in records.iter().chain(&web.records("api")) {
        everything.push_str(text);
    }
    for secret in [password, b64, token_value] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }

    // Templates and credentials are checked when the target is registered.
    for (args, why) in [
        (
            &["--header", "X-Who={nickname}"][..],
            "unknown placeholder {nickname}",
        ),
        (
            &["--header", "Authorization={user}"][..],
            "set by the gateway itself",
        ),
        (&["--header", "X-Who"][..], "NAME=TEMPLATE"),
        (
            &["--basic-user", "svc"][..],
            "--basic-user needs --basic-password-env",
        ),
        (&["--record-bodies", "0"][..], "positive number of bytes"),
    ] {
        let mut all = vec![
            "target",
            "add",
            "nope",
            "--protocol",
            "http",
            "--address",
            &address,
        ];
        all.extend(args);
        let o = web.w.gateway.admin(&all);
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = web.w.gateway.admin(&[
        "target",
        "add",
        "nope",
        "--address",
        "127.0.0.1:22",
        "--host-key",
        "x",
        "--header",
        "X-Who={user}",
    ]);
    assert!(
        stderr(&o).contains("need --protocol http"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn chunked_bodies_are_counted_exactly_both_ways_and_bodies_are_not_recorded_by_default() {
    let web = Web::new();
    web.grant_web();
    let o = web.alice_get(
        "app",
        "/chunked?n=123457",
        &["--http1.1", "-o", "/dev/null", "-w", "%{size_download}"],
    );
    assert_eq!(stdout(&o), "123457");
    let file = web.w.gateway.path("upload.bin");
    std::fs::write(&file, vec![5u8; 200_003]).expect("write");
    let upload = format!("@{}", file.display());
    // Chunked from curl over HTTP/1.1, and over HTTP/2 without a length.
    for version in ["--http1.1", "--http2"] {
        let o = web.alice_get(
            "app",
            "/upload",
            &[
                version,
                "-X",
                "PUT",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &upload,
            ],
        );
        let reply = json(&o);
        assert_eq!(reply["received"], 200_003, "{version}: {reply}");
        assert_eq!(reply["chunked"], true, "{version}: {reply}");
    }
    let notes = eventually(
        || web.notes("app"),
        |n| n.iter().filter(|t| t.contains("PUT /upload")).count() == 2,
    );
    let get = notes
        .iter()
        .find(|t| t.contains("GET /chunked"))
        .expect("download note");
    assert!(get.contains("-> 200 (in 0 B, out 123457 B,"), "{get}");
    for put in notes.iter().filter(|t| t.contains("PUT /upload")) {
        assert!(put.contains("-> 200 (in 200003 B, out "), "{put}");
    }
    assert!(
        web.records("app").iter().all(|(kind, _)| kind == "note"),
        "no bodies unless asked"
    );
}

#[test]
fn bodies_are_recorded_when_asked_up_to_the_cap_and_marked_truncated() {
    let web = Web::with_app_args(&["--record-bodies", "32"]);
    web.grant_web();
    let body = "hello-request-body-".repeat(10);
    let o = web.alice_get("app", "/upload", &["-X", "PUT", "--data-binary", &body]);
    assert_eq!(json(&o)["received"], body.len());
    let small = web.alice_get("app", "/upload", &["-X", "PUT", "--data-binary", "tiny"]);
    assert_eq!(json(&small)["received"], 4);

    let records = eventually(
        || web.records("app"),
        |r| r.iter().filter(|(_, t)| t.contains("PUT /upload")).count() == 2,
    );
    let notes: Vec<&String> = records
        .iter()
        .filter(|(k, t)| k == "note" && t.contains("PUT /upload"))
        .map(|(_, t)| t)
        .collect();
    let channel = |note: &str| -> String {
        note.split("bodies on channel ")
            .nth(1)
            .and_then(|rest| rest.split([',', ')']).next())
            .expect("channel")
            .to_string()
    };
    let (big, tiny) = (notes[0], notes[1]);
    assert!(
        big.contains("request body truncated at 32 B")
            && big.contains("response body truncated at 32 B"),
        "{big}"
    );
    assert!(!tiny.contains("request body truncated"), "{tiny}");
    let data = |kind: &str, ch: &str| -> String {
        records
            .iter()
            .filter(|(k, _)| *k == format!("{kind} {ch}"))
            .map(|(_, t)| t.as_str())
            .collect()
    };
    let big_channel = channel(big);
    assert_eq!(data("input", &big_channel), body[..32]);
    let out = data("output", &big_channel);
    assert!(
        out.len() == 32 && out.starts_with("{\"received\": 190"),
        "{out}"
    );
    assert_eq!(data("input", &channel(tiny)), "tiny");
}

/// What the gateway logs (at debug) when its HTTP/1.1 relay hands a connection
/// to hyper.
const HANDED_TO_HYPER: &str = "http/1.1 connection handed to hyper";

/// Bodiless `GET`/`HEAD` over HTTP/1.1 take the gateway's own relay rather than
/// hyper; this drives every kind of response through it on one kept-alive
/// connection, then a `PUT` that hands the connection over to hyper.
#[test]
fn plain_http11_requests_are_relayed_by_the_same_rules_on_one_connection() {
    let web = Web::new();
    web.grant_web();
    let auth = bearer(&web.w.alice);
    let resolve = format!("app.localhost:{}:127.0.0.1", web.https_port);
    let url = |path: &str| web.url("app.localhost", path);
    let file = web.w.gateway.path("put.bin");
    std::fs::write(&file, vec![7u8; 70_001]).expect("write");
    let upload = format!("@{}", file.display());
    let (headers, chunked, big, redirect, cookies, head, dropped, after, until_close, put) = (
        url("/headers"),
        url("/chunked?n=300001"),
        url("/big?n=1000000"),
        url("/redirect"),
        url("/cookies"),
        url("/big?n=5"),
        url("/drop"),
        url("/headers?after=drop"),
        url("/until-close"),
        url("/upload"),
    );
    // One curl, one connection: each transfer prints its status, its size and
    // how many new connections it made.
    let w = "%{http_code} %{size_download} %{num_connects}\\n";
    let each = |u: &str| -> Vec<String> {
        vec![
            "-H".into(),
            auth.clone(),
            "-H".into(),
            "X-Forwarded-User: admin".into(),
            "-H".into(),
            "Cookie: theme=dark; drawbridge_session=stolen".into(),
            "-w".into(),
            w.into(),
            "-o".into(),
            "/dev/null".into(),
            u.into(),
        ]
    };
    let cacert = web
        .w
        .gateway
        .path("data/keys/tls.crt")
        .display()
        .to_string();
    // `--next` forgets every option, the CA and the name included.
    let next = || -> Vec<String> {
        [
            "--next",
            "--http1.1",
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut args: Vec<String> = vec!["--http1.1".into(), "--resolve".into(), resolve.clone()];
    for u in [
        &headers, &chunked, &big, &redirect, &cookies, &dropped, &after,
    ] {
        args.extend(each(u));
    }
    args.extend(next());
    args.extend([
        "-I".into(),
        "-H".into(),
        auth.clone(),
        "-w".into(),
        w.into(),
        head.clone(),
    ]);
    args.extend(next());
    args.extend(each(&until_close));
    args.extend(next());
    args.extend(each(&headers));
    args.extend(next());
    args.extend([
        "-X".into(),
        "PUT".into(),
        "--data-binary".into(),
        upload,
        "-H".into(),
        auth.clone(),
        "-w".into(),
        w.into(),
        "-o".into(),
        "/dev/null".into(),
        put,
    ]);
    // Setup (logins, the grant) went through the API on the bare host,
    // which hyper serves: those connections were handed over too.
    let handed_before = web.w.gateway.log().matches(HANDED_TO_HYPER).count();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = web.curl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let transfers: Vec<(&str, &str, &str)> = out
        .lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let status = words
                .next()
                .filter(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))?;
            Some((status, words.next()?, words.next()?))
        })
        .collect();
    let statuses: Vec<&str> = transfers.iter().map(|t| t.0).collect();
    assert_eq!(
        statuses,
        [
            "200", "200", "200", "302", "200", "200", "200", "200", "200", "200", "200"
        ],
        "{out}"
    );
    let sizes: Vec<&str> = transfers.iter().map(|t| t.1).collect();
    assert_eq!(&sizes[1..3], ["300001", "1000000"], "{out}");
    assert_eq!(&sizes[5..6], ["17"], "{out}");
    assert_eq!(&sizes[7..9], ["0", "5000"], "{out}");
    // One connection throughout, but for the one after the app's close-delimited
    // body, which closes the client's connection too.
    let connects: Vec<&str> = transfers.iter().map(|t| t.2).collect();
    assert_eq!(
        connects,
        ["1", "0", "0", "0", "0", "0", "0", "0", "0", "1", "0"],
        "{out}"
    );
    let handed = web.w.gateway.log().matches(HANDED_TO_HYPER).count();
    assert_eq!(handed - handed_before, 1, "only the PUT went to hyper");

    // The relay applies the same header rules as hyper's path, both ways.
    let http11 = |path: &str, extra: &[&str]| {
        let mut args = vec!["--http1.1", "-H", "X-Forwarded-User: admin", "-H"];
        args.extend(["Cookie: theme=dark; drawbridge_session=stolen"]);
        args.extend(extra);
        web.alice_get("app", path, &args)
    };
    let seen = json(&http11("/headers", &[]));
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["cookie"], "theme=dark", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert!(seen["x-drawbridge-assertion"].is_string(), "{seen}");
    let head = stdout(&http11("/redirect", &["-D", "-", "-o", "/dev/null"]));
    let location = format!("location: https://app.localhost:{}/headers", web.https_port);
    assert!(head.to_ascii_lowercase().contains(&location), "{head}");
    let head = stdout(&http11("/cookies", &["-D", "-", "-o", "/dev/null"]));
    assert!(!head.to_ascii_lowercase().contains("domain="), "{head}");
    assert!(!head.contains("drawbridge_session"), "{head}");
    assert!(head.contains("app_sid=s1"), "{head}");

    // And records each request the same way.
    let notes = eventually(
        || web.notes("app"),
        |n| n.iter().any(|t| t.contains("GET /cookies")),
    );
    for expected in [
        "http GET /chunked?n=300001 -> 200 (in 0 B, out 300001 B,",
        "http GET /big?n=1000000 -> 200 (in 0 B, out 1000000 B,",
        "http HEAD /big?n=5 -> 200 (in 0 B, out 0 B,",
        "http GET /until-close -> 200 (in 0 B, out 5000 B,",
        "http PUT /upload -> 200 (in 70001 B,",
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(expected)),
            "{expected}: {notes:#?}"
        );
    }
}

/// A kept-alive HTTP/1.1 connection whose grant is revoked between two
/// requests: the second one is refused on the same connection.
#[test]
fn a_revoke_refuses_the_next_request_on_a_kept_alive_http11_connection() {
    const CLIENT: &str = r#"
import os, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="app.localhost")
f = s.makefile("rb")
for _ in range(2):
    s.sendall(f"GET /headers HTTP/1.1\r\nHost: app.localhost:{port}\r\nAuthorization: Bearer {os.environ['TOKEN']}\r\n\r\n".encode())
    status, length = f.readline().split()[1].decode(), 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        length = int(value) if name.lower() == "content-length" else length
    body = f.read(length).decode()
    print(status, "revoked" if "was revoked" in body else "", flush=True)
    sys.stdin.readline()
"#;
    let web = Web::new();
    let grant = web.grant_web();
    let mut client = std::process::Command::new("python3")
        .args(["-c", CLIENT, &web.https_port.to_string()])
        .arg(web.w.gateway.path("data/keys/tls.crt"))
        .env("TOKEN", token(&web.w.alice))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut input = client.stdin.take().expect("stdin");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        client.stdout.take().expect("stdout"),
    ));
    let mut next = || lines.next().expect("a line").expect("text");
    assert_eq!(next().trim(), "200");
    let revoke = web.w.bob.cli(&["revoke", &grant.to_string()]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::io::Write::write_all(&mut input, b"\n").expect("go on");
    assert_eq!(next().trim(), "403 revoked");
    drop(input);
    let _ = client.wait();
}
