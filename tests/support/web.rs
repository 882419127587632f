//! HTTP gateway fixtures: the Python upstream (`tests/fixtures/http_upstream.py`,
//! plain or TLS), a world with an HTTP target `app` in front of it, and stock
//! `curl` trusting the gateway's certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{User, World};

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/http_upstream.py"
);

pub struct Upstream {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::spawn(&[])
    }

    /// Serves TLS with the certificate chain and key in these PEM files.
    pub fn start_tls(cert: &Path, key: &Path) -> Upstream {
        Upstream::spawn(&[cert, key])
    }

    fn spawn(tls: &[&Path]) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .args([FIXTURE, "server"])
            .arg(&port_file)
            .args(tls)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let start = Instant::now();
        while !port_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "upstream did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = std::fs::read_to_string(&port_file)
            .expect("port")
            .trim()
            .parse()
            .expect("port number");
        Upstream {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Web {
    pub w: World,
    pub upstream: Upstream,
    pub https_port: u16,
}

impl Web {
    /// A world plus an HTTP target `app` (env=prod) in front of the Python upstream.
    pub fn new() -> Web {
        Web::with_app_args(&[])
    }

    /// Like `new`, with `extra` added to `target add app`.
    pub fn with_app_args(extra: &[&str]) -> Web {
        let w = World::new();
        let upstream = Upstream::start();
        let address = format!("127.0.0.1:{}", upstream.port);
        let mut args = vec![
            "target",
            "add",
            "app",
            "--protocol",
            "http",
            "--address",
            &address,
            "--label",
            "env=prod",
        ];
        args.extend(extra);
        w.gateway.admin_ok(&args);
        let https_port = w
            .gateway
            .api_addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Web {
            w,
            upstream,
            https_port,
        }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https_port)
    }

    /// Stock curl, trusting the gateway's certificate, `*.localhost` to loopback.
    pub fn curl(&self, args: &[&str]) -> Output {
        let resolve = |h: &str| format!("{h}:{}:127.0.0.1", self.https_port);
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(self.w.gateway.path("data/keys/tls.crt"))
            .args([
                "--resolve",
                &resolve("app.localhost"),
                "--resolve",
                &resolve("localhost"),
            ])
            .args(args)
            .output()
            .expect("curl")
    }

    /// `curl` as a browser: cookies saved in `jar`, response headers on stdout,
    /// the body dropped.
    pub fn curl_saving_cookies(&self, jar: &str, args: &[&str]) -> Output {
        let mut all = vec!["-c", jar, "-D", "-", "-o", "/dev/null"];
        all.extend(args);
        self.curl(&all)
    }

    /// `curl ARGS https://APP.localhost:PORT/PATH` as alice with her bearer
    /// token, resolving the app's name to loopback.
    pub fn alice_get(&self, app: &str, path: &str, args: &[&str]) -> Output {
        let host = format!("{app}.localhost");
        let resolve = format!("{host}:{}:127.0.0.1", self.https_port);
        let auth = bearer(&self.w.alice);
        let url = self.url(&host, path);
        let mut all = vec!["--resolve", &resolve, "-H", &auth];
        all.extend(args);
        all.push(&url);
        self.curl(&all)
    }

    /// alice asks for `web` on `target`, bob approves; returns the grant id.
    pub fn grant_on(&self, target: &str) -> i64 {
        self.w.alice.login_once();
        self.w.bob.login_once();
        let id = self.w.alice.request(target, "web", "30m");
        assert!(
            self.w
                .bob
                .cli(&["approve", &id.to_string()])
                .status
                .success()
        );
        id
    }

    pub fn grant_web(&self) -> i64 {
        self.grant_on("app")
    }

    /// The `note` texts of alice's http session on `target` so far.
    pub fn notes(&self, target: &str) -> Vec<String> {
        recorded(self, target)
            .into_iter()
            .filter_map(|(kind, text)| (kind == "note").then_some(text))
            .collect()
    }

    /// Every recorded (kind, text) of alice's http session on `target` so far:
    /// notes, and `input N`/`output N` data as text.
    pub fn records(&self, target: &str) -> Vec<(String, String)> {
        recorded(self, target)
    }
}

fn recorded(web: &Web, target: &str) -> Vec<(String, String)> {
    use drawbridge::recording::proto::record::Body;
    let sessions = web.w.alice.cli(&["sessions", "--json", "--target", target]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&sessions.stdout).expect("json");
    let Some(id) = list
        .iter()
        .find(|s| s["protocol"] == "http" && s["user"] == "alice")
        .and_then(|s| s["id"].as_str())
    else {
        return Vec::new();
    };
    // Readable while the writer appends: a torn tail is simply not returned yet.
    let Ok(rec) = drawbridge::recording::read_file(&web.w.gateway.recording(id)) else {
        return Vec::new();
    };
    rec.records
        .iter()
        .filter_map(|r| match &r.body {
            Some(Body::Note(n)) => Some(("note".to_string(), n.text.clone())),
            Some(Body::Input(d)) => Some((
                format!("input {}", d.channel),
                String::from_utf8_lossy(&d.data).into_owned(),
            )),
            Some(Body::Output(d)) => Some((
                format!("output {}", d.channel),
                String::from_utf8_lossy(&d.data).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn token(user: &User) -> String {
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(user.home.join("cli/login.json")).expect("login"),
    )
    .expect("json");
    saved["token"].as_str().expect("token").to_string()
}

pub fn bearer(user: &User) -> String {
    format!("Authorization: Bearer {}", token(user))
}

/// Waits until `check` holds for what `read` returns (records reach the file
/// at the next checkpoint, within a second).
pub fn eventually<T: std::fmt::Debug>(read: impl Fn() -> T, check: impl Fn(&T) -> bool) -> T {
    let start = Instant::now();
    loop {
        let value = read();
        if check(&value) {
            return value;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{value:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A throwaway CA and a leaf for 127.0.0.1 and localhost signed by it, as PEM
/// files in `dir`: (ca.pem, leaf chain, leaf key).
pub fn tls_files(dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names, so another CA is an unknown issuer rather than a bad signature.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{prefix} test CA"));
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let path = |name: &str| dir.join(format!("{prefix}-{name}"));
    std::fs::write(path("ca.pem"), ca.pem()).expect("write");
    std::fs::write(path("cert.pem"), leaf.pem() + &ca.pem()).expect("write");
    std::fs::write(path("key.pem"), leaf_key.serialize_pem()).expect("write");
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}
