//! Gateway vs direct OpenSSH, measured in the same run on the same machine:
//! bulk throughput (`cat > /dev/null`, `scp`), sequential session setup
//! (`ssh … true`), and concurrent session setup rate. Prints each figure and
//! the ratio gateway/direct (higher is better for throughput and rate; for
//! setup latency the ratio is direct/gateway so that higher is better too).
//!
//! `cargo bench --bench ssh_ratio` (release). Sizes and counts are bounded and
//! overridable: `BENCH_MIB` (default 512) × `BENCH_BULK_RUNS` (5, alternating paths,
//! medians reported), `BENCH_SCP_MIB` (256),
//! `BENCH_SEQ` (30 sessions), `BENCH_CONC` (8 clients) × `BENCH_CONC_EACH` (10),
//! `BENCH_ECHO` (100 terminal sessions per path, typing at the same time) ×
//! `BENCH_ECHO_EACH` (100 keys, one per `BENCH_ECHO_INTERVAL_MS`, 100: a fast typist),
//! `BENCH_IDLE` (500 idle sessions), `BENCH_ECHO_BULK=1` (a bulk upload on each path
//! while the terminals type), `BENCH_GATEWAY_EXTRA` (TOML added to the
//! gateway's config, e.g. a `[recording]` section, for A/B runs), `BENCH_GATEWAY_SSH`
//! (lines for its `[ssh]` section, e.g. `ciphers = "aes-gcm"`). `BENCH_PARTS` picks parts (comma list of
//! bulk, scp, setup, concurrent, echo, idle; default all).
//! Everything runs on loopback; the gateway records every session as usual,
//! with its default `[ssh] command_input_limit`: the bulk upload's first MiB of
//! stdin is kept and the rest counted, as file contents sent over SFTP are not
//! kept at all. `BENCH_GATEWAY_SSH='command_input_limit = "unlimited"'` keeps
//! every byte.
//!
//! The direct path logs in with a user certificate signed by the gateway's own
//! user CA for the engineer's key, so both paths use the same key type and the
//! same sshd; only the gateway hop differs.
//!
//! Both paths log in as a bench account with `/bin/sh` and no login scripts
//! (created for the run, removed after it). This machine's root runs
//! `pyenv init` from `~/.bashrc`, which sshd's `bash -c` sources: dozens of
//! processes and 300-500 ms for every `ssh … true`, which would drown what the
//! gateway adds. `BENCH_LOGIN=root` measures with root anyway.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How to reach the target: through the gateway or straight to sshd.
struct Route {
    name: &'static str,
    port: u16,
    dest: String,
    options: Vec<String>,
}

impl Route {
    fn ssh(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-p", &self.port.to_string()])
            .args(&self.options)
            .arg(&self.dest);
        cmd
    }

    fn scp(&self, file: &Path, remote: &str) -> Command {
        let mut cmd = Command::new("scp");
        cmd.args(["-q", "-P", &self.port.to_string()])
            .args(&self.options)
            .arg(file)
            .arg(format!("{}:{remote}", self.dest));
        cmd
    }
}

const BENCH_ACCOUNT: &str = "drawbridge-bench";

/// The login both paths use on the target, and a home folder it may write to.
struct Account {
    name: String,
    home: tempfile::TempDir,
    /// Made for this run, so removed after it.
    created: bool,
}

impl Account {
    fn prepare() -> Account {
        let home = tempfile::tempdir().expect("tempdir");
        if let Ok(name) = std::env::var("BENCH_LOGIN") {
            chown(&name, home.path());
            return Account {
                name,
                home,
                created: false,
            };
        }
        let exists = Command::new("id")
            .arg(BENCH_ACCOUNT)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mut useradd = Command::new(if exists { "usermod" } else { "useradd" });
        if !exists {
            useradd.args(["--system", "--no-create-home"]);
        }
        // `*`: no password, yet not locked (sshd without PAM refuses `!`).
        let status = useradd
            .args(["--shell", "/bin/sh", "--password", "*", "--home"])
            .arg(home.path())
            .arg(BENCH_ACCOUNT)
            .status()
            .expect("useradd");
        assert!(status.success(), "creating the bench account failed");
        chown(BENCH_ACCOUNT, home.path());
        Account {
            name: BENCH_ACCOUNT.into(),
            home,
            created: !exists,
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if self.created {
            // Sessions the bench opened may still be closing on the target.
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.name])
                .status();
            std::thread::sleep(Duration::from_millis(200));
            let _ = Command::new("userdel").arg(&self.name).status();
        }
    }
}

fn chown(owner: &str, path: &Path) {
    let status = Command::new("chown")
        .arg(owner)
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {owner} {}", path.display());
}

fn direct_path(w: &World, login: &str) -> Route {
    let key_pub = w.alice.key.with_extension("pub");
    let ca = w.gateway.path("data/keys/ssh_user_ca");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "bench", "-n", login, "-V", "+1h"])
        .arg(&key_pub)
        .status()
        .expect("ssh-keygen -s");
    assert!(status.success(), "signing the bench certificate failed");
    let cert = PathBuf::from(format!("{}-cert.pub", w.alice.key.display()));
    let known = w.gateway.path("known_hosts_direct");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}", w.sshd.port, w.sshd.host_key_pub),
    )
    .expect("known_hosts");
    let options = vec![
        "-i".into(),
        w.alice.key.display().to_string(),
        "-o".into(),
        format!("CertificateFile={}", cert.display()),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
    ];
    Route {
        name: "direct",
        port: w.sshd.port,
        dest: format!("{login}@127.0.0.1"),
        options,
    }
}

fn gateway_path(w: &World, login: &str) -> Route {
    Route {
        name: "gateway",
        port: w.alice.ssh_port,
        dest: format!("{login}@web-1@127.0.0.1"),
        options: w.alice.client_options(),
    }
}

/// MiB/s for `mib` MiB of zeroes piped into `cat > /dev/null` on the target.
fn bulk(path: &Route, mib: usize) -> f64 {
    let chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut child = path
        .ssh()
        .arg("cat > /dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    for _ in 0..mib {
        stdin.write_all(&chunk).expect("write");
    }
    drop(stdin);
    assert!(
        child.wait().expect("wait").success(),
        "{} bulk failed",
        path.name
    );
    mib as f64 / start.elapsed().as_secs_f64()
}

/// MiB/s for one `scp` upload of `file`.
fn scp(path: &Route, file: &Path, mib: usize, remote_dir: &Path) -> f64 {
    let remote = remote_dir.join(format!("scp-{}.bin", path.name));
    let start = Instant::now();
    let o = path
        .scp(file, &remote.display().to_string())
        .output()
        .expect("scp");
    let took = start.elapsed();
    assert!(o.status.success(), "{} scp: {}", path.name, stderr(&o));
    let _ = std::fs::remove_file(remote);
    mib as f64 / took.as_secs_f64()
}

/// Mean milliseconds per `ssh … true`, one after another.
fn sequential(path: &Route, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let o = path.ssh().arg("true").output().expect("ssh");
        assert!(o.status.success(), "{}: {}", path.name, stderr(&o));
    }
    start.elapsed().as_secs_f64() * 1000.0 / n as f64
}

/// Sessions per second with `clients` concurrent clients doing `each` each.
fn concurrent(path: &Route, clients: usize, each: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                for _ in 0..each {
                    let o = path.ssh().arg("true").output().expect("ssh");
                    assert!(o.status.success(), "{}: {}", path.name, stderr(&o));
                }
            });
        }
    });
    (clients * each) as f64 / start.elapsed().as_secs_f64()
}

/// A session kept open: an interactive terminal (echo) or `sleep` (idle).
struct OpenSession {
    child: Child,
}

impl OpenSession {
    /// Starts `command` on the target (with a terminal when `pty`) and waits
    /// until it has printed `ready`, so the session is fully set up, upstream
    /// included, when this returns.
    fn start(path: &Route, command: &str, pty: bool) -> OpenSession {
        let mut cmd = path.ssh();
        if pty {
            cmd.arg("-tt");
        }
        let mut child = cmd
            .arg(format!("echo ready; exec {command}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh");
        let stdout = child.stdout.as_mut().expect("stdout");
        // Login scripts on the target may print first (pyenv's rehash races
        // under concurrent logins here); skip lines up to our own.
        for _ in 0..50 {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte != *b"\n" {
                stdout.read_exact(&mut byte).expect("session ready");
                line.push(byte[0]);
            }
            if line.starts_with(b"ready") {
                return OpenSession { child };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{}: the session never printed ready", path.name);
    }

    /// One key typed into the terminal and its echo back.
    fn echo_round_trip(&mut self) -> Duration {
        let start = Instant::now();
        self.child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"x")
            .expect("write");
        let mut byte = [0u8; 1];
        self.child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut byte)
            .expect("echo");
        start.elapsed()
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `n` sessions running `command`, at most 8 being set up at a time
/// (sshd's MaxStartups throttles more).
fn open_sessions(path: &Route, n: usize, command: &str, pty: bool) -> Vec<OpenSession> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let sessions = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let session = OpenSession::start(path, command, pty);
                    sessions.lock().expect("sessions").push(session);
                }
            });
        }
    });
    sessions.into_inner().expect("sessions")
}

/// What the gateway spent while the terminals typed (sessions already open).
struct TypingCost {
    cpu_seconds: f64,
    context_switches: u64,
}

/// Echo round-trip times (µs, sorted) of `n` interactive terminal sessions
/// on each path, all typing at once (one key every `interval`, `each` keys
/// per session), so both paths see the same machine load: `(direct, gateway)`,
/// and what the typing cost `gw`.
fn echo_latency(
    gw: &Gateway,
    direct: &Route,
    gateway: &Route,
    n: usize,
    each: usize,
    interval: Duration,
) -> (Vec<f64>, Vec<f64>, TypingCost) {
    // `cat` in canonical mode: the terminal's own echo is what comes back.
    let mut sessions = [
        open_sessions(direct, n, "cat", true),
        open_sessions(gateway, n, "cat", true),
    ];
    let samples = [
        std::sync::Mutex::new(Vec::with_capacity(n * each)),
        std::sync::Mutex::new(Vec::with_capacity(n * each)),
    ];
    let (cpu_before, switches_before) = (gw.cpu_seconds(), gw.context_switches());
    let typing = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        // `BENCH_ECHO_BULK=1`: one bulk upload on each path the whole time, so the
        // keystrokes share the gateway with a busy session.
        if env_num("BENCH_ECHO_BULK", 0) > 0 {
            for path in [direct, gateway] {
                let typing = &typing;
                s.spawn(move || {
                    while typing.load(std::sync::atomic::Ordering::Relaxed) {
                        bulk(path, 64);
                    }
                });
            }
        }
        let mut typists = Vec::new();
        // Sessions are borrowed, not moved: they all stay open until every one
        // has finished typing, so no sample includes other sessions' teardown.
        for (path, sessions) in sessions.iter_mut().enumerate() {
            for (i, session) in sessions.iter_mut().enumerate() {
                let samples = &samples[path];
                typists.push(s.spawn(move || {
                    // Spread the sessions' keystrokes over the typing interval.
                    let spread = interval.as_micros() as u64;
                    std::thread::sleep(Duration::from_micros((i as u64 * 7919) % spread.max(1)));
                    session.echo_round_trip();
                    let mut mine = Vec::with_capacity(each);
                    for _ in 0..each {
                        std::thread::sleep(interval);
                        mine.push(session.echo_round_trip().as_secs_f64() * 1e6);
                    }
                    samples.lock().expect("samples").extend(mine);
                }));
            }
        }
        for typist in typists {
            typist.join().expect("typist");
        }
        typing.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    let cost = TypingCost {
        cpu_seconds: gw.cpu_seconds() - cpu_before,
        context_switches: gw.context_switches().saturating_sub(switches_before),
    };
    let [d, g] = samples.map(|m| {
        let mut v = m.into_inner().expect("samples");
        v.sort_by(f64::total_cmp);
        v
    });
    (d, g, cost)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Gateway RSS growth per idle session, KiB, with `n` sessions open at once.
fn idle_memory(w: &World, path: &Route, n: usize) -> (u64, u64, f64) {
    let before = w.gateway.rss_kib();
    let sessions = open_sessions(path, n, "sleep 3600", false);
    // Let per-session tasks settle (first checkpoints, upstream buffers).
    std::thread::sleep(Duration::from_secs(2));
    let after = w.gateway.rss_kib();
    drop(sessions);
    (
        before,
        after,
        after.saturating_sub(before) as f64 / n as f64,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let mib = env_num("BENCH_MIB", 512);
    let scp_mib = env_num("BENCH_SCP_MIB", 256);
    let seq = env_num("BENCH_SEQ", 30);
    let (conc, each) = (env_num("BENCH_CONC", 8), env_num("BENCH_CONC_EACH", 10));
    let (echo, echo_each) = (env_num("BENCH_ECHO", 100), env_num("BENCH_ECHO_EACH", 100));
    let idle = env_num("BENCH_IDLE", 500);
    let parts = std::env::var("BENCH_PARTS")
        .unwrap_or_else(|_| "bulk,scp,setup,concurrent,echo,idle".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);

    let account = Account::prepare();
    let w = World::with_gateway(Gateway::start_configured(
        &std::env::var("BENCH_GATEWAY_EXTRA").unwrap_or_default(),
        &std::env::var("BENCH_GATEWAY_SSH").unwrap_or_default(),
    ));
    w.grant_alice("web-1", &account.name, "1h");
    let direct = direct_path(&w, &account.name);
    let gateway = gateway_path(&w, &account.name);

    // Warm both paths (page cache, sshd's first fork) before measuring.
    for p in [&direct, &gateway] {
        sequential(p, 2);
    }
    let deadline = Instant::now() + Duration::from_secs(1200);
    println!("ssh_ratio: gateway vs direct OpenSSH on this machine (recording on)");
    if let Some(extra) = std::env::var("BENCH_GATEWAY_SSH")
        .ok()
        .filter(|s| !s.is_empty())
    {
        println!(
            "ssh_ratio: gateway [ssh] settings: {}",
            extra.replace('\n', "; ")
        );
    }
    let row = |what: &str, unit: &str, d: f64, g: f64, higher_better: bool| {
        let ratio = if higher_better { g / d } else { d / g };
        println!(
            "{what:<34} direct {d:>9.1} {unit:<10} gateway {g:>9.1} {unit:<10} ratio {ratio:.2}"
        );
        assert!(
            Instant::now() < deadline,
            "benchmark exceeded its time bound"
        );
    };
    if part("bulk") {
        let cpu_before = w.gateway.cpu_seconds();
        // A 512 MiB run takes about a second, so one run is at the mercy of
        // whatever else the two cores do: alternate the paths and take medians.
        let runs = env_num("BENCH_BULK_RUNS", 5);
        let mut d = Vec::with_capacity(runs);
        let mut g = Vec::with_capacity(runs);
        for _ in 0..runs {
            d.push(bulk(&direct, mib));
            g.push(bulk(&gateway, mib));
        }
        let (d, g) = (median(d), median(g));
        // CPU is steadier than wall time on a shared machine: the gateway's own cost.
        let cpu = w.gateway.cpu_seconds() - cpu_before;
        println!(
            "gateway CPU for the bulk runs: {cpu:.2} s ({:.2} s per GiB, recording included)",
            cpu * 1024.0 / (mib * runs) as f64
        );
        row(
            &format!("bulk {mib} MiB cat >/dev/null, ×{runs}"),
            "MiB/s",
            d,
            g,
            true,
        );
    }
    if part("scp") {
        let file = account.home.path().join("scp.bin");
        std::fs::write(&file, vec![0x5a; scp_mib << 20]).expect("scp file");
        let (d, g) = (
            scp(&direct, &file, scp_mib, account.home.path()),
            scp(&gateway, &file, scp_mib, account.home.path()),
        );
        row(&format!("scp {scp_mib} MiB upload"), "MiB/s", d, g, true);
    }
    if part("setup") {
        let (d, g) = (sequential(&direct, seq), sequential(&gateway, seq));
        row(
            &format!("sequential setup ×{seq}"),
            "ms/session",
            d,
            g,
            false,
        );
        // OpenSSH 9.2 picks sntrup761x25519 with sshd but curve25519 with the
        // gateway (russh has no sntrup), which costs the client and sshd ~100 ms of
        // CPU each here; the same key exchange on both paths, like for like:
        let mut same_kex = direct_path(&w, &account.name);
        same_kex
            .options
            .extend(["-o".into(), "KexAlgorithms=curve25519-sha256".into()]);
        let d = sequential(&same_kex, seq);
        row("  same, direct also curve25519", "ms/session", d, g, false);
    }
    if part("concurrent") {
        let d = concurrent(&direct, conc, each);
        let cpu_before = w.gateway.cpu_seconds();
        let g = concurrent(&gateway, conc, each);
        // Both paths are bound by the stock client and sshd (their key exchanges,
        // sshd's fork and re-exec, the login shell) on the same two cores; the
        // gateway's own CPU per session says how many it could set up by itself.
        let per_session = (w.gateway.cpu_seconds() - cpu_before) / (conc * each) as f64;
        row(
            &format!("concurrent setup {conc}×{each}"),
            "sessions/s",
            d,
            g,
            true,
        );
        println!(
            "gateway CPU per session setup: {:.2} ms (capacity {:.0} sessions/s per core)",
            per_session * 1e3,
            1.0 / per_session
        );
    }
    if part("echo") {
        let interval = Duration::from_millis(env_num("BENCH_ECHO_INTERVAL_MS", 100) as u64);
        let (d, g, cost) = echo_latency(&w.gateway, &direct, &gateway, echo, echo_each, interval);
        // Every terminal types one warm-up key, then `echo_each`.
        let keys = (echo * (echo_each + 1)) as f64;
        // With the bulk uploads on, the gateway's CPU is mostly theirs.
        if env_num("BENCH_ECHO_BULK", 0) == 0 {
            println!(
                "gateway per keystroke while typing: {:.0} µs CPU, {:.1} context switches (echo and recording included)",
                cost.cpu_seconds / keys * 1e6,
                cost.context_switches as f64 / keys
            );
        }
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            let (dp, gp) = (percentile(&d, p), percentile(&g, p));
            println!(
                "echo {name}, {echo}+{echo} terminals       direct {dp:>9.0} µs         gateway {gp:>9.0} µs         added {:.0} µs",
                gp - dp
            );
        }
        assert!(
            Instant::now() < deadline,
            "benchmark exceeded its time bound"
        );
    }
    if part("idle") {
        let (before, after, per) = idle_memory(&w, &gateway, idle);
        println!(
            "idle sessions ×{idle}                 gateway RSS {before} KiB → {after} KiB: {per:.0} KiB per session"
        );
    }
}
