//! A real browser through the HTTP gateway: headless Chromium, driven over
//! WebDriver (chromedriver's HTTP JSON API, spoken with stock curl), opens an
//! app, is sent to the login page, logs in with password + TOTP and lands on
//! the app with the gateway's cookie. Skipped, saying so, only when Chromium or
//! chromedriver is not installed (Debian: `apt-get install -y chromium
//! chromium-driver`).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::web::*;
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One chromedriver and one browser session; both end on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "chromedriver did not start"
        );
        let profile = tempfile::tempdir().expect("tempdir");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                // The gateway's local CA is not in the browser's store; curl
                // tests verify TLS, this one the login flow and cookies.
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                    ],
                },
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-X", method, &url]);
        if method == "POST" {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "-d",
                &body.to_string(),
            ]);
        }
        let o = cmd.output().expect("curl");
        let reply: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{method} {path}: {}{}", stdout(&o), stderr(&o)));
        reply["value"].clone()
    }

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn text(&self) -> String {
        // A JSON answer is shown in a <pre> (Chromium adds its own controls around it).
        let script = json!({
            "script": "return (document.querySelector('pre') || document.body).innerText",
            "args": [],
        });
        self.command("POST", "/execute/sync", script)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {css} on the page: {found}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Waits for the page at a URL starting with `prefix`.
    fn wait_for_url(&self, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            let url = self.url();
            if url.starts_with(prefix) {
                return url;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "still at {url}, waiting for {prefix}: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_text(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {needle:?} on {}: {text}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_in(&self, user: &str, password: &str, totp: &str) {
        self.type_into("input[name=user]", user);
        self.type_into("input[name=password]", password);
        self.type_into("input[name=totp]", totp);
        self.click("button[type=submit]");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.command("DELETE", "", Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn a_real_browser_logs_in_on_the_gateway_page_and_lands_on_the_app() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install -y chromium chromium-driver)"
        );
        return;
    }
    let web = Web::new();
    web.grant_web();
    let browser = Browser::start();
    let app = web.url("app.localhost", "/headers");
    browser.open(&app);
    let login = browser.wait_for_url(&web.url("localhost", "/login?next="));

    // A wrong code: the form again, with the reason, and no way on.
    browser.log_in("alice", "pw-alice", "000000");
    browser.wait_for_text("invalid credentials");
    assert!(browser.url().starts_with(&web.url("localhost", "/login")));
    let no_cookie = browser.command("GET", "/cookie", Value::Null);
    assert_eq!(no_cookie, json!([]), "a failed login sets no cookie");

    browser.open(&login);
    // grant_web's CLI login used this step's code; codes are single use.
    let code = drawbridge::identity::totp_code(web.w.alice.totp.bytes(), unix_now() + 30);
    browser.log_in("alice", "pw-alice", &code);
    assert_eq!(browser.wait_for_url(&app), app);
    let seen: Value = serde_json::from_str(&browser.text())
        .unwrap_or_else(|_| panic!("not the app's JSON: {}", browser.text()));
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert!(seen.get("x-drawbridge-assertion").is_some(), "{seen}");
    assert!(
        seen.get("cookie").is_none(),
        "our cookie reached the app: {seen}"
    );

    // The app host's cookie, as the browser holds it.
    let cookies = browser.command("GET", "/cookie", Value::Null);
    let ours = cookies
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "drawbridge_session"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert_eq!(ours["secure"], true, "{ours}");
    assert_eq!(ours["httpOnly"], true, "{ours}");
    assert_eq!(ours["sameSite"], "Lax", "{ours}");
    assert_eq!(ours["domain"], "app.localhost", "host-only: {ours}");

    // Another visit goes straight through on the cookie.
    browser.open(&web.url("app.localhost", "/headers?again=1"));
    browser.wait_for_url(&web.url("app.localhost", "/headers?again=1"));
    assert!(browser.text().contains("\"x-forwarded-user\": \"alice\""));
}
