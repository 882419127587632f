//! The HTTP gateway vs nginx as an HTTPS reverse proxy, measured in the same run
//! on the same machine: `wrk` keep-alive GETs of a small static page over HTTPS,
//! against an upstream nginx serving the file. Three rows: the upstream direct
//! (plain HTTP, the ceiling), nginx `proxy_pass` (2 workers, keep-alive
//! upstream), and the gateway authenticating a bearer token, checking the
//! grant, injecting the assertion and recording every request. Prints requests
//! per second, the ratio gateway/nginx, and p50/p99 latency.
//!
//! `cargo bench --bench http_ratio` (release). Needs `nginx` and `wrk`: installed
//! with apt-get when missing and possible, otherwise the bench says so and
//! skips. `BENCH_SECS` (default 10) per row, `BENCH_ROUNDS` (3) alternating
//! rounds of nginx and the gateway (medians are printed), `BENCH_CONNS` (50)
//! connections, `BENCH_THREADS` (2) wrk threads. A last row per path uses one
//! connection, for the latency each proxy adds when nothing queues.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::web::{bearer, tls_files};
use support::*;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx and wrk, installed with apt-get if missing (as root); false if they
/// cannot be had.
fn tools_available() -> bool {
    if have("nginx") && have("wrk") {
        return true;
    }
    println!("http_ratio: installing nginx and wrk (apt-get install -y nginx wrk)");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "nginx", "wrk"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    installed && have("nginx") && have("wrk")
}

/// One nginx master with its own prefix, config and logs; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(name: &str, body: impl Fn(u16) -> String) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("nginx.conf");
        let temp = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "daemon off;\nuser root;\npid {temp}/nginx.pid;\nerror_log {temp}/error.log warn;\n\
                 {}\n",
                body(port).replace(
                    "TEMP_PATHS",
                    &format!(
                        "client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; \
                         fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; \
                         scgi_temp_path {temp}/scgi;"
                    )
                )
            ),
        )
        .expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
            .spawn()
            .expect("nginx");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "{name} nginx did not start: {}{}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Nginx {
    /// CPU time used by the master and its workers so far.
    fn cpu(&self) -> CpuTime {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(process_cpu)
            .fold(process_cpu(pid), |sum, worker| sum + worker)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// What wrk measured.
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

fn wrk(url: &str, headers: &[String], secs: u64) -> Run {
    let (conns, threads) = (env_num("BENCH_CONNS", 50), env_num("BENCH_THREADS", 2));
    wrk_with(url, headers, secs, conns, threads)
}

fn wrk_with(url: &str, headers: &[String], secs: u64, conns: u64, threads: u64) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
    ])
    .args(["-d", &format!("{secs}s")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let o = cmd.arg(url).output().expect("wrk");
    let text = stdout(&o);
    assert!(o.status.success(), "wrk failed: {text}{}", stderr(&o));
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok());
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    Run {
        rps: rps.unwrap_or_else(|| panic!("no Requests/sec in: {text}")),
        p50_ms: field("50%").map_or(f64::NAN, millis),
        p99_ms: field("99%").map_or(f64::NAN, millis),
        errors,
    }
}

/// A wrk run, the CPU time the proxy under test used during it, and the whole
/// machine's (wrk, the upstream and the kernel's network work included).
struct Measured {
    run: Run,
    cpu: CpuTime,
    machine: CpuTime,
}

impl Measured {
    fn of(run: impl FnOnce() -> Run, cpu: impl Fn() -> CpuTime) -> Measured {
        let (before, machine_before) = (cpu(), machine_cpu());
        let run = run();
        Measured {
            run,
            cpu: cpu() - before,
            machine: machine_cpu() - machine_before,
        }
    }

    fn requests(&self, secs: u64) -> f64 {
        self.run.rps * secs as f64
    }

    fn cpu_per_request(&self, secs: u64) -> f64 {
        self.cpu.total() * 1e6 / self.requests(secs)
    }

    fn machine_per_request(&self, secs: u64) -> f64 {
        self.machine.total() * 1e6 / self.requests(secs)
    }
}

fn print_run(what: &str, run: &Run) {
    println!(
        "{what:<38} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   {}",
        run.rps, run.p50_ms, run.p99_ms, run.errors
    );
}

/// wrk's `1.23ms`, `456.00us`, `1.50s` in milliseconds.
fn millis(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let n: f64 = v[..split].parse().unwrap_or(f64::NAN);
    match &v[split..] {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn upstream(page: &Path) -> Nginx {
    let root = page.parent().expect("root").display().to_string();
    Nginx::start("upstream", move |port| {
        format!(
            "worker_processes 2;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; TEMP_PATHS keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}"
        )
    })
}

fn nginx_proxy(upstream_port: u16, cert: &Path, key: &Path) -> Nginx {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    Nginx::start("proxy", move |port| {
        format!(
            "worker_processes 2;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; TEMP_PATHS keepalive_requests 1000000;\n\
             upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {cert}; ssl_certificate_key {key};\n\
             location / {{ proxy_pass http://app; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; }} }} }}"
        )
    })
}

fn main() {
    if !tools_available() {
        println!(
            "http_ratio: SKIPPED: needs nginx and wrk (apt-get install -y nginx wrk), which are not installed and could not be"
        );
        return;
    }
    let secs = env_num("BENCH_SECS", 10);
    let work = tempfile::tempdir().expect("tempdir");
    let page: PathBuf = work.path().join("site/index.html");
    std::fs::create_dir_all(page.parent().expect("dir")).expect("site");
    // A small page, like an admin API's JSON answer.
    std::fs::write(&page, "x".repeat(612)).expect("page");
    let (_, cert, key) = tls_files(work.path(), "proxy");
    let upstream = upstream(&page);
    let proxy = nginx_proxy(upstream.port, &cert, &key);

    let w = World::new();
    w.gateway.admin_ok(&[
        "target",
        "add",
        "app",
        "--protocol",
        "http",
        "--address",
        &format!("127.0.0.1:{}", upstream.port),
    ]);
    w.alice.login_once();
    w.bob.login_once();
    let id = w.alice.request("app", "web", "1h");
    assert!(w.bob.cli(&["approve", &id.to_string()]).status.success());
    let port = w.gateway.api_addr.rsplit(':').next().expect("port");
    let gateway_headers = vec![bearer(&w.alice), format!("Host: app.localhost:{port}")];
    let gateway_url = format!("https://127.0.0.1:{port}/index.html");
    let proxy_url = format!("https://127.0.0.1:{}/index.html", proxy.port);
    let direct_url = format!("http://127.0.0.1:{}/index.html", upstream.port);

    // Warm up: the gateway's session, TLS session caches, upstream pools.
    for (url, headers) in [
        (&direct_url, &vec![]),
        (&proxy_url, &vec![]),
        (&gateway_url, &gateway_headers),
    ] {
        wrk(url, headers, 2);
    }
    let rounds = env_num("BENCH_ROUNDS", 3).max(1);
    let started = Instant::now();
    let direct = wrk(&direct_url, &[], secs);
    // The machine's speed drifts over a run (other tenants, frequency), so
    // nginx and the gateway alternate, each round in the other order, and each
    // round's ratio compares two neighbouring measurements.
    let measure_nginx = || Measured::of(|| wrk(&proxy_url, &[], secs), || proxy.cpu());
    let measure_gateway = || {
        Measured::of(
            || wrk(&gateway_url, &gateway_headers, secs),
            || w.gateway.cpu(),
        )
    };
    let mut rows: Vec<(Measured, Measured)> = Vec::new();
    for round in 0..rounds {
        rows.push(if round % 2 == 0 {
            let n = measure_nginx();
            (n, measure_gateway())
        } else {
            let g = measure_gateway();
            (measure_nginx(), g)
        });
    }
    assert!(
        started.elapsed() < Duration::from_secs(secs * (1 + 2 * rounds) + 120),
        "benchmark exceeded its time bound"
    );
    println!(
        "http_ratio: wrk {} connections, keep-alive, {}-byte page, {secs} s per row, {rounds} rounds",
        env_num("BENCH_CONNS", 50),
        612
    );
    print_run("upstream nginx direct (HTTP)", &direct);
    for (i, (nginx, gateway)) in rows.iter().enumerate() {
        print_run(
            &format!("round {}: nginx proxy_pass (HTTPS)", i + 1),
            &nginx.run,
        );
        print_run(
            &format!("round {}: drawbridge (HTTPS)", i + 1),
            &gateway.run,
        );
        println!(
            "round {}: ratio {:.2}; CPU per request: nginx {}, drawbridge {}",
            i + 1,
            gateway.run.rps / nginx.run.rps,
            nginx.cpu.per_event_us(nginx.requests(secs)),
            gateway.cpu.per_event_us(gateway.requests(secs))
        );
        println!(
            "round {}: whole machine per request: nginx path {:.1} µs, drawbridge path {:.1} µs",
            i + 1,
            nginx.machine_per_request(secs),
            gateway.machine_per_request(secs)
        );
    }
    let median = |f: &dyn Fn(&(Measured, Measured)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median ratio drawbridge/nginx {:.2}   nginx/direct {:.2}   drawbridge/direct {:.2}",
        median(&|(n, g)| g.run.rps / n.run.rps),
        median(&|(n, _)| n.run.rps) / direct.rps,
        median(&|(_, g)| g.run.rps) / direct.rps
    );
    println!(
        "median p99 added over direct: nginx {:.2} ms, drawbridge {:.2} ms",
        median(&|(n, _)| n.run.p99_ms) - direct.p99_ms,
        median(&|(_, g)| g.run.p99_ms) - direct.p99_ms
    );
    println!(
        "median CPU per request: nginx {:.1} µs, drawbridge {:.1} µs; whole machine: nginx path {:.1} µs, drawbridge path {:.1} µs",
        median(&|(n, _)| n.cpu_per_request(secs)),
        median(&|(_, g)| g.cpu_per_request(secs)),
        median(&|(n, _)| n.machine_per_request(secs)),
        median(&|(_, g)| g.machine_per_request(secs))
    );
    // One connection, one request at a time: what each proxy adds to a request
    // when nothing queues behind it (at 50 connections the machine is saturated
    // and latency is mostly waiting).
    let single = |url: &str, headers: &[String]| wrk_with(url, headers, secs, 1, 1);
    let (direct1, nginx1, gateway1) = (
        single(&direct_url, &[]),
        single(&proxy_url, &[]),
        single(&gateway_url, &gateway_headers),
    );
    print_run("1 connection: direct", &direct1);
    print_run("1 connection: nginx proxy_pass", &nginx1);
    print_run("1 connection: drawbridge", &gateway1);
    println!(
        "1 connection, added over direct: nginx p50 {:.3} / p99 {:.3} ms, drawbridge p50 {:.3} / p99 {:.3} ms",
        nginx1.p50_ms - direct1.p50_ms,
        nginx1.p99_ms - direct1.p99_ms,
        gateway1.p50_ms - direct1.p50_ms,
        gateway1.p99_ms - direct1.p99_ms
    );
    assert!(
        !w.gateway.log().contains("upstream request failed"),
        "the gateway failed requests during the run"
    );
}
