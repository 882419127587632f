//! PostgreSQL: the gateway vs pgbouncer (session mode) vs direct, measured in
//! the same run against the same throwaway cluster, TLS on both legs of both
//! proxies, the gateway recording every statement as usual.
//!
//! - `pgbench -S` (select by key), 8 clients, simple and `-M prepared`: TPS;
//! - `pgbench -S -c 1`: average and p99 latency, and what each proxy adds;
//! - `COPY (…) TO STDOUT` through `psql`: MiB/s.
//!
//! Each figure is the median of `BENCH_PG_ROUNDS` (default 3) runs per route,
//! interleaved; the TPS rows also print the gateway / pgbouncer ratio of each
//! round, CPU per transaction (each proxy's, pgbench's and PostgreSQL's, the
//! whole machine's), TCP segments per transaction, and the most a proxy making
//! pgbouncer's system calls could reach (every core busy, no user space).
//!
//! `cargo bench --bench pg_ratio` (release). Knobs: `BENCH_PG_SECS` (seconds
//! per pgbench run, default 10), `BENCH_PG_SCALE` (pgbench scale, 1),
//! `BENCH_COPY_MIB` (COPY size, default 256; 1024 for the 1 GB figure),
//! `BENCH_PG_GATEWAY` (lines added to the gateway's `[postgres]` section, e.g.
//! `busy_poll = "0s"`), `BENCH_PG_PARTS` (which measurements to run, default
//! `tps,latency,copy`), `BENCH_PG_ROUNDS`.
//! pgbouncer is installed with apt-get when missing; if that fails its column
//! is skipped with a message.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::pg::{PgCluster, SUPERUSER_PASSWORD};
use support::*;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One way to reach the cluster: a libpq connection string and its password.
struct Route {
    name: &'static str,
    conninfo: String,
    password: String,
}

impl Route {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PGPASSWORD", &self.password)
            .env("PGSSLMODE", "require")
            .stdin(Stdio::null());
        cmd
    }
}

/// What one pgbench run reports.
struct Bench {
    tps: f64,
    /// Per-transaction latencies in µs, when logged.
    latencies: Vec<f64>,
}

fn pgbench(route: &Route, clients: usize, secs: usize, args: &[&str], log: Option<&Path>) -> Bench {
    let mut cmd = route.command("pgbench");
    cmd.args(["-n", "-S", "-T", &secs.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(args);
    if let Some(prefix) = log {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    let o = cmd.arg(&route.conninfo).output().expect("pgbench");
    assert!(o.status.success(), "{} pgbench: {}", route.name, stderr(&o));
    let tps = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("tps in pgbench output");
    let latencies = log.map(read_latencies).unwrap_or_default();
    Bench { tps, latencies }
}

/// The third column of pgbench's per-transaction log: latency in µs.
fn read_latencies(prefix: &Path) -> Vec<f64> {
    let (dir, stem) = (
        prefix.parent().expect("dir"),
        prefix.file_name().expect("name"),
    );
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("log dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.starts_with(&*stem.to_string_lossy()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("log");
        all.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
        let _ = std::fs::remove_file(path);
    }
    all
}

/// Runs `measure` once per route in each of `rounds` rounds, each round
/// starting with the next route. A VM's speed drifts by tens of percent over
/// a minute, more than the differences measured here, so every figure is the
/// median of interleaved runs rather than one run per route in a row.
fn interleaved(routes: &[&Route], rounds: usize, mut measure: impl FnMut(usize, &Route)) {
    for round in 0..rounds {
        for i in (0..routes.len()).map(|k| (k + round) % routes.len()) {
            measure(i, routes[i]);
        }
    }
}

/// What one route did over the interleaved rounds of a TPS measurement.
#[derive(Default)]
struct Runs {
    tps: Vec<f64>,
    transactions: f64,
    /// The proxy's own CPU (zero for direct).
    proxy: CpuTime,
    machine: CpuTime,
    /// TCP segments the machine sent (every leg is loopback).
    segments: u64,
    /// Interrupts one core sent another: to wake a thread, and to run a function there.
    reschedules: u64,
    function_calls: u64,
    /// pgbench's CPU, and PostgreSQL's (the postmaster and its backends).
    client: CpuTime,
    server: CpuTime,
}

impl Runs {
    /// `cpu`, one of this route's figures, spread over its transactions.
    fn us_per_transaction(&self, cpu: CpuTime) -> f64 {
        cpu.total() * 1e6 / self.transactions
    }
}

/// Each round's `a / b`, same order.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// `"1.02, 0.97, 1.10"`.
fn listed(ratios: &[f64]) -> String {
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    shown.join(", ")
}

/// The machine's count of TCP segments sent so far (`OutSegs` in
/// `/proc/net/snmp`, whose `Tcp:` lines are a header and its values).
fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Interrupts one core sent another, summed over all cores from one read of
/// `/proc/interrupts`: rescheduling (`RES`) and function calls (`CAL`).
fn interrupts_between_cores() -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let row = |name: &str| {
        table
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(':'))
            .map_or(0, |counts| {
                counts
                    .split_whitespace()
                    .map_while(|n| n.parse::<u64>().ok())
                    .sum()
            })
    };
    (row("RES"), row("CAL"))
}

fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn p99(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len() * 99 / 100)
        .copied()
        .unwrap_or(f64::NAN)
}

/// MiB/s of `COPY (…) TO STDOUT` of about `mib` MiB, read by psql into /dev/null.
fn copy_out(route: &Route, mib: usize) -> f64 {
    // 1000-byte lines plus the newline.
    let rows = mib * (1 << 20) / 1001;
    let sql = format!("COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT");
    let start = Instant::now();
    let o = route
        .command("psql")
        .arg(&route.conninfo)
        .args(["-X", "-q", "-c", &sql])
        .stdout(Stdio::null())
        .output()
        .expect("psql");
    let took = start.elapsed();
    assert!(o.status.success(), "{} COPY: {}", route.name, stderr(&o));
    mib as f64 / took.as_secs_f64()
}

/// pgbouncer in session mode with TLS on both legs, or `None` (with the reason
/// printed) when it is not installed and cannot be.
fn start_pgbouncer(pg: &PgCluster) -> Option<(Bouncer, Route)> {
    let installed = || Path::new("/usr/sbin/pgbouncer").exists();
    if !installed() {
        println!("pgbouncer missing: apt-get install -y pgbouncer");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    if !installed() {
        println!("pgbouncer could not be installed: its figures are skipped");
        return None;
    }
    let dir = pg.dir.path();
    let port = free_port();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (crt, key) = (dir.join("bouncer.crt"), dir.join("bouncer.key"));
    std::fs::write(&crt, cert.cert.pem()).expect("crt");
    std::fs::write(&key, cert.signing_key.serialize_pem()).expect("key");
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
    )
    .expect("userlist");
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\npool_mode = session\n\
             max_client_conn = 100\ndefault_pool_size = 20\nlogfile = {dir}/pgbouncer.log\n\
             client_tls_sslmode = require\nclient_tls_cert_file = {crt}\nclient_tls_key_file = {key}\n\
             server_tls_sslmode = verify-full\nserver_tls_ca_file = {ca}\n",
            pg_port = pg.port,
            dir = dir.display(),
            crt = crt.display(),
            key = key.display(),
            ca = pg.cert.display(),
        ),
    )
    .expect("pgbouncer.ini");
    // pgbouncer refuses to run as root: `-u` switches to the cluster's owner.
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    let child = Command::new("/usr/sbin/pgbouncer")
        .args(["-u", "postgres"])
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer");
    assert!(
        wait_for_port(port, std::time::Duration::from_secs(10)),
        "pgbouncer did not start: {}",
        std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
    );
    let route = Route {
        name: "pgbouncer",
        conninfo: format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        password: SUPERUSER_PASSWORD.into(),
    };
    Some((Bouncer(child), route))
}

/// The pgbouncer process, stopped on drop.
struct Bouncer(std::process::Child);

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway with target `pg-1` (TLS verified) and alice granted `app_rw`.
fn start_gateway(pg: &PgCluster) -> (Gateway, Route) {
    let extra = std::env::var("BENCH_PG_GATEWAY").unwrap_or_default();
    let gateway = Gateway::start_with_postgres(&extra);
    pg.register(&gateway, "pg-1", &[]);
    let alice = gateway.add_user("alice", &["dev"]);
    let bob = gateway.add_user("bob", &["approvers"]);
    alice.login();
    let id = alice.request("pg-1", "app_rw", "1h");
    bob.login();
    let o = bob.cli(&["approve", &id.to_string()]);
    assert!(o.status.success(), "approve: {}", stderr(&o));
    let saved = std::fs::read_to_string(alice.home.join("cli/login.json")).expect("login");
    let json: serde_json::Value = serde_json::from_str(&saved).expect("json");
    let route = Route {
        name: "gateway",
        conninfo: format!(
            "host=127.0.0.1 port={} user=app_rw@pg-1 dbname=postgres",
            gateway.pg_port
        ),
        password: json["token"].as_str().expect("token").to_string(),
    };
    (gateway, route)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let secs = env_num("BENCH_PG_SECS", 10);
    let rounds = env_num("BENCH_PG_ROUNDS", 3).max(1);
    let scale = env_num("BENCH_PG_SCALE", 1);
    let copy_mib = env_num("BENCH_COPY_MIB", 256);
    let parts = std::env::var("BENCH_PG_PARTS").unwrap_or_else(|_| "tps,latency,copy".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);

    let pg = PgCluster::start();
    let postmaster = pg.postmaster_pid();
    let direct = Route {
        name: "direct",
        conninfo: format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port
        ),
        password: SUPERUSER_PASSWORD.into(),
    };
    let o = direct
        .command("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(&direct.conninfo)
        .output()
        .expect("pgbench -i");
    assert!(o.status.success(), "pgbench -i: {}", stderr(&o));
    pg.sql("CREATE ROLE app_rw NOLOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_rw");
    let bouncer = start_pgbouncer(&pg);
    let (gateway, via_gateway) = start_gateway(&pg);
    let mut routes = vec![&direct];
    if let Some((_, route)) = &bouncer {
        routes.push(route);
    }
    routes.push(&via_gateway);
    let logs = tempfile::tempdir().expect("tempdir");

    println!(
        "pg_ratio: medians of {rounds} interleaved {secs} s runs, scale {scale}, \
         TLS on every leg, gateway recording on"
    );
    // What `busy_poll = "auto"` measured at startup and chose (absent with a set window).
    let log = gateway.log();
    if let Some(at) = log.find("measured a wake-up") {
        println!("gateway: {}", log[at..].lines().next().unwrap_or_default());
    }
    // Warm every route (caches, the gateway's admin connection) before measuring.
    for r in &routes {
        pgbench(r, 2, 1, &[], None);
    }
    let header = || {
        let names: Vec<String> = routes.iter().map(|r| format!("{:>12}", r.name)).collect();
        println!("{:<36}{}   ratios to direct", "", names.join(""));
    };
    header();
    let row = |what: &str, values: &[f64]| {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:>12.1}")).collect();
        let ratios: Vec<String> = values[1..]
            .iter()
            .zip(&routes[1..])
            .map(|(v, r)| format!("{} {:.2}", r.name, v / values[0]))
            .collect();
        println!("{what:<36}{}   {}", cells.join(""), ratios.join(", "));
    };
    // The proxies' own CPU per transaction says how much of the gap is their
    // work rather than scheduling: all processes share the same two cores. The
    // whole machine's per transaction (pgbench, PostgreSQL, the proxy and the
    // kernel's loopback work) is the budget a proxy competes for.
    let proxy_cpu = |name: &str| match name {
        "pgbouncer" => bouncer
            .as_ref()
            .map_or(CpuTime::default(), |(b, _)| process_cpu(b.0.id())),
        "gateway" => gateway.cpu(),
        _ => CpuTime::default(),
    };
    let tps_runs = [
        ("pgbench -S -c 8, simple (TPS)", &[][..]),
        ("pgbench -S -c 8, prepared (TPS)", &["-M", "prepared"][..]),
    ];
    for (what, args) in tps_runs.into_iter().filter(|_| part("tps")) {
        let mut runs: Vec<Runs> = routes.iter().map(|_| Runs::default()).collect();
        interleaved(&routes, rounds, |i, r| {
            let (before, machine_before) = (proxy_cpu(r.name), machine_cpu());
            let segments_before = tcp_segments_sent();
            let (reschedules_before, calls_before) = interrupts_between_cores();
            let (client_before, server_before) =
                (ended_children_cpu(), process_tree_cpu(postmaster));
            let b = pgbench(r, 8, secs, args, None);
            let run = &mut runs[i];
            run.proxy = run.proxy + (proxy_cpu(r.name) - before);
            run.machine = run.machine + (machine_cpu() - machine_before);
            run.segments += tcp_segments_sent().saturating_sub(segments_before);
            let (reschedules, calls) = interrupts_between_cores();
            run.reschedules += reschedules.saturating_sub(reschedules_before);
            run.function_calls += calls.saturating_sub(calls_before);
            // Backends that ended with the run are reaped by then.
            std::thread::sleep(std::time::Duration::from_millis(300));
            run.client = run.client + (ended_children_cpu() - client_before);
            run.server = run.server + (process_tree_cpu(postmaster) - server_before);
            run.transactions += b.tps * secs as f64;
            run.tps.push(b.tps);
        });
        let medians: Vec<f64> = runs.iter().map(|r| median(&r.tps)).collect();
        row(what, &medians);
        let runs_by_name = |name| routes.iter().position(|r| r.name == name).map(|i| &runs[i]);
        if let (Some(bouncer), Some(gw)) = (runs_by_name("pgbouncer"), runs_by_name("gateway")) {
            let per_round = ratios(&gw.tps, &bouncer.tps);
            println!(
                "  gateway / pgbouncer, round by round: {} (median {:.2})",
                listed(&per_round),
                median(&per_round)
            );
        }
        let proxies: Vec<String> = routes
            .iter()
            .zip(&runs)
            .filter(|(_, run)| run.proxy.total() > 0.0)
            .map(|(r, run)| format!("{} {}", r.name, run.proxy.per_event_us(run.transactions)))
            .collect();
        println!("  proxy CPU per transaction: {}", proxies.join(", "));
        // "direct 72.1, pgbouncer 110.4, gateway 122.4": one figure per route.
        let per_route = |figure: &dyn Fn(&Runs) -> String| {
            let cells: Vec<String> = routes
                .iter()
                .zip(&runs)
                .map(|(r, run)| format!("{} {}", r.name, figure(run)))
                .collect();
            cells.join(", ")
        };
        println!(
            "  whole machine's CPU per transaction, µs: {}",
            per_route(&|run| format!("{:.1}", run.us_per_transaction(run.machine)))
        );
        // A proxy's cost does not stop at its own CPU: PostgreSQL and pgbench
        // spend more per transaction behind one too.
        println!(
            "  pgbench + PostgreSQL CPU per transaction, µs: {}",
            per_route(&|run| format!(
                "{:.1} + {:.1}",
                run.us_per_transaction(run.client),
                run.us_per_transaction(run.server)
            ))
        );
        println!(
            "  TCP segments per transaction: {}",
            per_route(&|run| format!("{:.2}", run.segments as f64 / run.transactions))
        );
        // On a VM each one is a trip through the hypervisor: a wake-up across cores.
        println!(
            "  interrupts between cores per transaction, rescheduling + function call: {}",
            per_route(&|run| format!(
                "{:.2} + {:.2}",
                run.reschedules as f64 / run.transactions,
                run.function_calls as f64 / run.transactions
            ))
        );
        // Every core busy with pgbouncer's path less pgbouncer's user time: the
        // most a proxy that makes the same system calls could reach, whatever
        // its own code costs.
        if let Some(bouncer) = runs_by_name("pgbouncer") {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let wall = (secs * rounds) as f64;
            let bound = cores * wall / (bouncer.machine.total() - bouncer.proxy.user);
            println!(
                "  pgbouncer's path used {:.2} of {cores} cores; with every core busy and no \
                 user-space CPU, a proxy on it would reach {bound:.2}× pgbouncer's TPS",
                bouncer.machine.total() / wall
            );
        }
    }
    if part("latency") {
        let mut round_means: Vec<Vec<f64>> = routes.iter().map(|_| Vec::new()).collect();
        let mut round_p99s = round_means.clone();
        interleaved(&routes, rounds, |i, r| {
            let prefix = logs.path().join(r.name);
            let b = pgbench(r, 1, secs, &[], Some(&prefix));
            round_means[i].push(mean(&b.latencies));
            round_p99s[i].push(p99(&b.latencies));
        });
        let means: Vec<f64> = round_means.iter().map(|m| median(m)).collect();
        let p99s: Vec<f64> = round_p99s.iter().map(|p| median(p)).collect();
        row("pgbench -S -c 1, mean latency (µs)", &means);
        row("pgbench -S -c 1, p99 latency (µs)", &p99s);
        for (i, r) in routes.iter().enumerate().skip(1) {
            println!(
                "  {} adds {:.1} µs on average, {:.1} µs at p99",
                r.name,
                means[i] - means[0],
                p99s[i] - p99s[0]
            );
        }
    }
    if part("copy") {
        let cpu_before = gateway.cpu_seconds();
        let mut round_rates: Vec<Vec<f64>> = routes.iter().map(|_| Vec::new()).collect();
        interleaved(&routes, rounds, |i, r| {
            round_rates[i].push(copy_out(r, copy_mib))
        });
        let rates: Vec<f64> = round_rates.iter().map(|r| median(r)).collect();
        row(&format!("COPY {copy_mib} MiB TO STDOUT (MiB/s)"), &rates);
        if let Some(gw) = routes.iter().position(|r| r.name == "gateway") {
            println!(
                "  gateway / direct, round by round: {}",
                listed(&ratios(&round_rates[gw], &round_rates[0]))
            );
        }
        println!(
            "gateway CPU over the COPY runs: {:.2} s",
            gateway.cpu_seconds() - cpu_before
        );
    }
}
