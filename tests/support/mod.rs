//! Test fixtures: a real throwaway OpenSSH `sshd`, the real `drawbridge` binary
//! as gateway, and users driven through the stock `ssh` client and the CLI.
//! Everything listens on 127.0.0.1 on free ports and is cleaned up on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

pub mod pg;
pub mod web;

pub const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls until something accepts TCP on `port` (readiness, not a fixed sleep).
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
}

/// A real OpenSSH server that trusts `ca_pub` for user certificates and nothing
/// else (`AuthorizedKeysFile none`).
pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
    pub host_key_pub: String,
    child: Child,
}

impl Sshd {
    pub fn start(ca_pub: &Path) -> Sshd {
        Sshd::start_with(ca_pub, |_| String::new())
    }

    /// An sshd presenting a host certificate for its key, signed by `host_ca` (a
    /// private key file) with `ssh-keygen -h -n PRINCIPALS -V VALIDITY`.
    pub fn start_with_host_cert(
        ca_pub: &Path,
        host_ca: &Path,
        principals: &str,
        validity: &str,
    ) -> Sshd {
        Sshd::start_with(ca_pub, |host_key| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(host_ca)
                .args(["-h", "-I", "test-host", "-n", principals, "-V", validity])
                .arg(host_key.with_extension("pub"))
                .status()
                .expect("ssh-keygen -s");
            assert!(status.success(), "signing the host key");
            let cert = host_key.with_file_name("host_key-cert.pub");
            format!("HostCertificate {}\n", cert.display())
        })
    }

    /// `extra` gets the host key's path and returns more sshd_config lines.
    fn start_with(ca_pub: &Path, extra: impl FnOnce(&Path) -> String) -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let host_key = dir.path().join("host_key");
        keygen(&host_key);
        let extra = extra(&host_key);
        for attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nUsePAM no\n\
                     TrustedUserCAKeys {ca}\nAuthorizedKeysFile none\nStrictModes no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\n\
                     LogLevel VERBOSE\nSubsystem sftp internal-sftp\n\
                     AcceptEnv LANG LC_* DRAWBRIDGE_TEST_*\nAllowTcpForwarding yes\n{extra}",
                    hk = host_key.display(),
                    pid = dir.path().join("sshd.pid").display(),
                    ca = ca_pub.display(),
                ),
            )
            .expect("sshd_config");
            let log = std::fs::File::create(dir.path().join("sshd.log")).expect("log");
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn sshd (is openssh-server installed?)");
            if wait_for_port(port, Duration::from_secs(5)) {
                let host_key_pub =
                    std::fs::read_to_string(host_key.with_extension("pub")).expect("host key pub");
                return Sshd {
                    dir,
                    port,
                    host_key_pub,
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("sshd did not start on port {port} (attempt {attempt})");
        }
        panic!("sshd failed to start: {}", self_log(&dir));
    }

    pub fn log(&self) -> String {
        self_log(&self.dir)
    }
}

fn self_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on its stdin, written from another thread while the
/// output is read, so a command that answers as it reads cannot block on full
/// pipes; killed after 60 s so a hang fails the test. A client that dies before
/// reading everything is for the caller to judge.
pub fn run_with_input(cmd: &mut Command, input: Vec<u8>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (finished, watched) = std::sync::mpsc::channel::<()>();
    let pid = child.id().to_string();
    let watchdog = std::thread::spawn(move || {
        let hung = matches!(
            watched.recv_timeout(Duration::from_secs(60)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if hung {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        hung
    });
    let o = child.wait_with_output().expect("output");
    drop(finished);
    assert!(
        !watchdog.join().expect("watchdog"),
        "client still running after 60 s"
    );
    o
}

/// CPU time used so far, split into user space and kernel, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// `"20.1 µs (7.6 user + 12.5 kernel)"`: this time spread over `count` events.
    pub fn per_event_us(self, count: f64) -> String {
        let us = |s: f64| s * 1e6 / count;
        format!(
            "{:.1} µs ({:.1} user + {:.1} kernel)",
            us(self.total()),
            us(self.user),
            us(self.system)
        )
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;
    fn add(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + o.user,
            system: self.system + o.system,
        }
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - o.user,
            system: self.system - o.system,
        }
    }
}

/// The CPU time a process (all its threads) has used so far.
pub fn process_cpu(pid: u32) -> CpuTime {
    stat_fields(&pid.to_string()).map_or(CpuTime::default(), |f| stat_cpu(&f, 11))
}

/// The CPU time of this process's children that have ended and been waited
/// for (a finished `pgbench`, say).
pub fn ended_children_cpu() -> CpuTime {
    stat_fields("self").map_or(CpuTime::default(), |f| stat_cpu(&f, 13))
}

/// The CPU time a server process and its children (live, and ended ones it
/// has waited for) have used so far: a postmaster and its backends, say.
pub fn process_tree_cpu(parent: u32) -> CpuTime {
    let mut total = stat_fields(&parent.to_string())
        .map_or(CpuTime::default(), |f| stat_cpu(&f, 11) + stat_cpu(&f, 13));
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // The parent's pid is the second field after the command name.
        match stat_fields(&pid) {
            Some(f) if f.get(1) == Some(&u64::from(parent)) => total = total + stat_cpu(&f, 11),
            _ => {}
        }
    }
    total
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (the
/// state, which does not parse, reads as 0).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect(),
    )
}

/// The user and kernel times at `fields[user]` and the next one, in clock
/// ticks (100 per second): utime and stime at 11, cutime and cstime at 13.
fn stat_cpu(fields: &[u64], user: usize) -> CpuTime {
    let seconds = |i: usize| fields.get(i).copied().unwrap_or(0) as f64 / 100.0;
    CpuTime {
        user: seconds(user),
        system: seconds(user + 1),
    }
}

/// CPU time the whole machine has spent busy so far, all cores and processes
/// together (`/proc/stat`: user and nice as user; system, interrupts and
/// softirqs as kernel; idle, iowait and steal left out).
pub fn machine_cpu() -> CpuTime {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / 100.0;
    CpuTime {
        user: ticks(0) + ticks(1),
        system: ticks(2) + ticks(5) + ticks(6),
    }
}

/// The real gateway binary with its own data, recordings and ports.
pub struct Gateway {
    pub dir: TempDir,
    pub config: PathBuf,
    pub ssh_port: u16,
    pub pg_port: u16,
    pub api_addr: String,
    /// Extra config sections appended after `[ssh]` and `[api]`.
    extra_config: String,
    child: Child,
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// Starts with `extra` (TOML: top-level keys and whole tables, e.g. a
    /// `[recording]` section) put before the test's own listener settings.
    pub fn start_with(extra: &str) -> Gateway {
        Gateway::start_configured(extra, "")
    }

    /// A gateway whose config's `[ssh]` section ends with `ssh_extra` (TOML lines).
    pub fn start_with_ssh(ssh_extra: &str) -> Gateway {
        Gateway::start_configured("", ssh_extra)
    }

    /// A gateway whose config's `[postgres]` section ends with `pg_extra` (TOML lines).
    pub fn start_with_postgres(pg_extra: &str) -> Gateway {
        Gateway::start_configured("", &format!("{PG_EXTRA_MARK}{pg_extra}"))
    }

    /// A gateway whose `[postgres]` and `[api]` sections end with these lines.
    pub fn start_with_listeners(pg_extra: &str, api_extra: &str) -> Gateway {
        Gateway::start_configured(
            "",
            &format!("{PG_EXTRA_MARK}{pg_extra}{API_EXTRA_MARK}{api_extra}"),
        )
    }

    /// Both: `extra` before the listener settings, `ssh_extra` at the end of `[ssh]`.
    pub fn start_configured(extra: &str, ssh_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("drawbridge.toml");
        let any = "127.0.0.1:0";
        let extra = format!("{extra}\n{SSH_EXTRA_MARK}{ssh_extra}");
        write_config(&config, (any, any, any), &extra);
        let (child, ports) = spawn_gateway(dir.path(), &config);
        Gateway {
            config,
            ssh_port: ports.ssh,
            pg_port: ports.pg,
            api_addr: ports.api,
            extra_config: extra,
            child,
            dir,
        }
    }

    /// `kill -9`: the gateway gets no chance to seal anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the gateway again on the same folder and the same ports, so saved logins and
    /// known_hosts files stay valid.
    pub fn restart(&mut self) {
        self.kill9();
        let ssh = format!("127.0.0.1:{}", self.ssh_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        write_config(
            &self.config,
            (&ssh, &pg, &self.api_addr),
            &self.extra_config,
        );
        let (child, ports) = spawn_gateway(self.dir.path(), &self.config);
        assert_eq!(
            (ports.ssh, ports.pg, &ports.api),
            (self.ssh_port, self.pg_port, &self.api_addr)
        );
        self.child = child;
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Resident memory of the gateway process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU seconds (user + system) the gateway process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu().total()
    }

    /// The CPU time the gateway process has used so far.
    pub fn cpu(&self) -> CpuTime {
        process_cpu(self.child.id())
    }

    /// Context switches (voluntary and not) of the gateway's threads alive now.
    pub fn context_switches(&self) -> u64 {
        self.thread_counts(
            |_| true,
            &["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"],
        )
    }

    /// How often the relay runtimes' threads alive now went to sleep (voluntary
    /// context switches): an event loop sleeps whenever it runs out of work.
    pub fn relay_sleeps(&self) -> u64 {
        self.thread_counts(
            |comm| comm.starts_with("relay-"),
            &["voluntary_ctxt_switches"],
        )
    }

    /// The sum, over the gateway's threads whose name passes `threads`, of these
    /// `/proc/…/status` fields.
    fn thread_counts(&self, threads: impl Fn(&str) -> bool, fields: &[&str]) -> u64 {
        self.thread_statuses(threads)
            .iter()
            .flat_map(|status| {
                status
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(name, _)| fields.contains(name))
                    .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Voluntary context switches of the relay threads, by the cores each may
    /// run on (`/proc/…/status` `Cpus_allowed_list`, e.g. "1", or "0-1" when
    /// not pinned).
    pub fn relay_sleeps_by_core(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_core = std::collections::BTreeMap::new();
        for status in self.thread_statuses(|comm| comm.starts_with("relay-")) {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string()
            };
            let sleeps: u64 = field("voluntary_ctxt_switches").parse().unwrap_or(0);
            *by_core.entry(field("Cpus_allowed_list")).or_insert(0) += sleeps;
        }
        by_core
    }

    /// `/proc/…/status` of each of the gateway's threads whose name passes `threads`.
    fn thread_statuses(&self, threads: impl Fn(&str) -> bool) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(tasks) = std::fs::read_dir(tasks) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| threads(&c)))
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    /// `drawbridge ARGS` as the operator on the gateway host.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("DRAWBRIDGE_CONFIG", &self.config)
            .env("DRAWBRIDGE_HOME", self.path("admin-home"))
            .output()
            .expect("run drawbridge")
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(
            o.status.success(),
            "drawbridge {args:?} failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// Registers an SSH target pointing at `sshd`, pinned to its real host key.
    pub fn add_target(&self, name: &str, sshd: &Sshd, labels: &[&str]) {
        let address = format!("127.0.0.1:{}", sshd.port);
        let mut args = vec![
            "target",
            "add",
            name,
            "--address",
            &address,
            "--host-key",
            sshd.host_key_pub.trim(),
        ];
        for l in labels {
            args.extend(["--label", l]);
        }
        self.admin_ok(&args);
    }

    pub fn add_user(&self, name: &str, groups: &[&str]) -> User {
        self.add_user_with(name, groups, &[])
    }

    /// `add_user` with more `user add` options, e.g. `["--email", "e@x"]`.
    pub fn add_user_with(&self, name: &str, groups: &[&str], extra: &[&str]) -> User {
        let home = self.path(&format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("home");
        let key = home.join("id_ed25519");
        keygen(&key);
        let key_pub = key.with_extension("pub");
        let mut cmd = Command::new(BIN);
        cmd.args(["user", "add", name, "--password-stdin", "--ssh-key"])
            .arg(&key_pub)
            .current_dir(self.dir.path())
            .env("DRAWBRIDGE_CONFIG", &self.config);
        for g in groups {
            cmd.args(["--group", g]);
        }
        cmd.args(extra);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("user add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("pw-{name}\n").as_bytes())
            .expect("write password");
        let o = child.wait_with_output().expect("wait");
        assert!(o.status.success(), "user add: {}", stderr(&o));
        let secret = stdout(&o)
            .lines()
            .find_map(|l| l.strip_prefix("TOTP secret: ").map(str::to_string))
            .expect("TOTP secret printed");
        User {
            name: name.to_string(),
            home,
            key,
            totp: drawbridge::identity::TotpSecret::from_base32(&secret).expect("base32"),
            ssh_port: self.ssh_port,
            known_hosts: self.known_hosts(),
            gateway_dir: self.dir.path().to_path_buf(),
            api: format!("https://{}", self.api_addr),
        }
    }

    /// A known_hosts file pinning the gateway's own host key.
    fn known_hosts(&self) -> PathBuf {
        let path = self.path("known_hosts");
        let key = std::fs::read_to_string(self.path("data/keys/ssh_host_ed25519.pub"))
            .expect("gateway host key");
        std::fs::write(&path, format!("[127.0.0.1]:{} {}", self.ssh_port, key))
            .expect("known_hosts");
        path
    }

    pub fn recording(&self, session: &str) -> PathBuf {
        self.path(&format!("recordings/{session}.dbr"))
    }
}

/// Separates the top-level extra config from the lines that go into `[ssh]`.
const SSH_EXTRA_MARK: &str = "#ssh-extra\n";
/// Separates the `[ssh]` lines from those that go into `[postgres]`.
const PG_EXTRA_MARK: &str = "#pg-extra\n";
/// Separates the `[postgres]` lines from those that go into `[api]`.
const API_EXTRA_MARK: &str = "#api-extra\n";

/// Listen addresses: (ssh, postgres, https). `extra` is the top-level extra,
/// then `SSH_EXTRA_MARK` and lines for `[ssh]`, then optionally `PG_EXTRA_MARK`
/// and lines for `[postgres]`, then `API_EXTRA_MARK` and lines for `[api]`.
fn write_config(path: &Path, (ssh, pg, api): (&str, &str, &str), extra: &str) {
    let (top, ssh_extra) = extra.split_once(SSH_EXTRA_MARK).unwrap_or((extra, ""));
    let (ssh_extra, pg_extra) = ssh_extra
        .split_once(PG_EXTRA_MARK)
        .unwrap_or((ssh_extra, ""));
    let (pg_extra, api_extra) = pg_extra
        .split_once(API_EXTRA_MARK)
        .unwrap_or((pg_extra, ""));
    std::fs::write(
        path,
        format!(
            "{top}\n[ssh]\nlisten = \"{ssh}\"\nconnect_timeout = \"3s\"\n{ssh_extra}\n\
             [postgres]\nlisten = \"{pg}\"\nconnect_timeout = \"5s\"\n{pg_extra}\n\
             [api]\nlisten = \"{api}\"\n{api_extra}"
        ),
    )
    .expect("config");
}

/// The ports a gateway printed.
struct Ports {
    ssh: u16,
    pg: u16,
    api: String,
}

/// Runs `drawbridge serve` in `dir` and waits for it to print both listening addresses.
fn spawn_gateway(dir: &Path, config: &Path) -> (Child, Ports) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir)
        .env("DRAWBRIDGE_CONFIG", config)
        .env("DRAWBRIDGE_LOG", "info,drawbridge=debug,russh=warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let (mut ssh_port, mut pg_port, mut api_addr) = (None, None, None);
    while ssh_port.is_none() || pg_port.is_none() || api_addr.is_none() {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "gateway exited: {}",
                    std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
                )
            })
            .expect("read");
        if let Some(addr) = line.strip_prefix("drawbridge: ssh listening on ") {
            ssh_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(addr) = line.strip_prefix("drawbridge: postgres listening on ") {
            pg_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(addr) = line.strip_prefix("drawbridge: https listening on ") {
            api_addr = Some(addr.to_string());
        }
    }
    // Keep draining stdout so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let ports = Ports {
        ssh: ssh_port.expect("ssh port"),
        pg: pg_port.expect("postgres port"),
        api: api_addr.expect("api addr"),
    };
    (child, ports)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An engineer or approver: SSH key, password, TOTP secret, own CLI config folder.
pub struct User {
    pub name: String,
    pub home: PathBuf,
    pub key: PathBuf,
    pub totp: drawbridge::identity::TotpSecret,
    pub ssh_port: u16,
    pub known_hosts: PathBuf,
    pub gateway_dir: PathBuf,
    pub api: String,
}

impl User {
    pub fn code(&self) -> String {
        drawbridge::identity::totp_code(self.totp.bytes(), unix_now())
    }

    /// `drawbridge ARGS` as this user (their own saved login).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, "")
    }

    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(&self.gateway_dir)
            .env("DRAWBRIDGE_HOME", self.home.join("cli"))
            // `drawbridge login` signs `$HOME/.ssh/id_ed25519.pub` when it exists:
            // never the real user's.
            .env("HOME", &self.home)
            .env_remove("DRAWBRIDGE_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("drawbridge");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin");
        child.wait_with_output().expect("wait")
    }

    pub fn login_with(&self, password: &str, code: &str) -> Output {
        self.cli_stdin(
            &[
                "login",
                "--user",
                &self.name,
                "--server",
                &self.api,
                "--ca-cert",
                "data/keys/tls.crt",
                "--password-stdin",
                "--totp",
                code,
            ],
            &format!("{password}\n"),
        )
    }

    pub fn login(&self) {
        let o = self.login_with(&format!("pw-{}", self.name), &self.code());
        assert!(o.status.success(), "login {}: {}", self.name, stderr(&o));
    }

    /// Files a request and returns its id.
    pub fn request(&self, target: &str, login: &str, duration: &str) -> i64 {
        let o = self.cli(&[
            "request",
            target,
            "--login",
            login,
            "--for",
            duration,
            "--reason",
            "INC-1 testing",
        ]);
        assert!(o.status.success(), "request: {}", stderr(&o));
        stdout(&o)
            .split_whitespace()
            .nth(1)
            .and_then(|id| id.parse().ok())
            .expect("request id")
    }

    /// The `-o`/`-i` options every stock client (ssh, scp, sftp, rsync's ssh)
    /// needs: this user's key only, non-interactive, the gateway's host key pinned.
    pub fn client_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ]
    }

    /// `scp -P PORT …` (add `-O` for the legacy protocol).
    pub fn scp(&self) -> Command {
        let mut cmd = Command::new("scp");
        cmd.args(["-P", &self.ssh_port.to_string()])
            .args(self.client_options())
            .stdin(Stdio::null());
        cmd
    }

    /// `sftp -P PORT -b BATCH LOGIN@TARGET@127.0.0.1`.
    pub fn sftp(&self, user_at_target: &str, batch: &Path) -> Command {
        let mut cmd = Command::new("sftp");
        cmd.args(["-P", &self.ssh_port.to_string()])
            .args(self.client_options())
            .arg("-b")
            .arg(batch)
            .arg(format!("{user_at_target}@127.0.0.1"))
            .stdin(Stdio::null());
        cmd
    }

    /// `rsync -e 'ssh -p PORT …'`; the caller adds flags and paths.
    pub fn rsync(&self) -> Command {
        let mut cmd = Command::new("rsync");
        let ssh = format!(
            "ssh -p {} {}",
            self.ssh_port,
            self.client_options().join(" ")
        );
        cmd.arg("-e").arg(ssh).stdin(Stdio::null());
        cmd
    }

    /// Stock OpenSSH client, non-interactive, pinned to the gateway's host key.
    pub fn ssh(&self, user_at_target: &str) -> Command {
        self.ssh_via(self.ssh_port, user_at_target)
    }

    /// The same, connecting to `port` on loopback (a proxy in front of the gateway).
    pub fn ssh_via(&self, port: u16, user_at_target: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-p", &port.to_string()])
            .args(self.client_options())
            // The pinned host key is filed under the gateway's own port.
            .arg("-o")
            .arg(format!("HostKeyAlias=[127.0.0.1]:{}", self.ssh_port))
            .arg(format!("{user_at_target}@127.0.0.1"))
            .stdin(Stdio::null());
        cmd
    }

    pub fn ssh_run(&self, user_at_target: &str, command: &str) -> Output {
        self.ssh(user_at_target).arg(command).output().expect("ssh")
    }
}

/// A gateway, one target `web-1` (env=prod) on a real sshd, and four users:
/// alice (engineer), bob and dave (approvers), carol (no groups).
pub struct World {
    pub gateway: Gateway,
    pub sshd: Sshd,
    pub alice: User,
    pub bob: User,
    pub carol: User,
    pub dave: User,
}

impl World {
    pub fn new() -> World {
        World::with_gateway(Gateway::start())
    }

    /// alice's long-running `ssh root@web-1 'sleep 60'`, once the gateway lists it
    /// as live; its stdout and stderr are piped for the test to read.
    pub fn alice_live_session(&self) -> Child {
        let child = self
            .alice
            .ssh("root@web-1")
            .arg("echo started; sleep 60")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        self.wait_for_live(1);
        child
    }

    /// A world whose gateway config has `ssh_extra` at the end of its `[ssh]` section.
    pub fn with_ssh_config(ssh_extra: &str) -> World {
        World::with_gateway(Gateway::start_with_ssh(ssh_extra))
    }

    pub fn with_gateway(gateway: Gateway) -> World {
        let sshd = Sshd::start(&gateway.path("data/keys/ssh_user_ca.pub"));
        gateway.add_target("web-1", &sshd, &["env=prod"]);
        let alice = gateway.add_user("alice", &["dev"]);
        let bob = gateway.add_user("bob", &["approvers"]);
        let carol = gateway.add_user("carol", &[]);
        let dave = gateway.add_user("dave", &["approvers"]);
        World {
            gateway,
            sshd,
            alice,
            bob,
            carol,
            dave,
        }
    }

    /// alice asks, bob approves, and dave too where policy wants two (root on
    /// prod); returns the grant id.
    pub fn grant_alice(&self, target: &str, login: &str, duration: &str) -> i64 {
        self.alice.login_once();
        let id = self.alice.request(target, login, duration);
        for approver in [&self.bob, &self.dave] {
            approver.login_once();
            let o = approver.cli(&["approve", &id.to_string()]);
            assert!(o.status.success(), "approve: {}", stderr(&o));
            if !stdout(&o).contains("approval counted") {
                break;
            }
        }
        id
    }
}

impl User {
    /// Logs in unless a saved login exists (a TOTP step can be used only once).
    pub fn login_once(&self) {
        if !self.home.join("cli/login.json").exists() {
            self.login();
        }
    }
}

impl World {
    /// The live sessions as `drawbridge sessions --live --json` lists them,
    /// once there are at least `n`.
    pub fn wait_for_live(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let o = self.bob.cli(&["sessions", "--live", "--json"]);
            let list: Vec<serde_json::Value> =
                serde_json::from_slice(&o.stdout).unwrap_or_default();
            if list.len() >= n {
                return list;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no live session: {}",
                self.gateway.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `note` records of all recordings, once `n` sessions are sealed.
    pub fn wait_for_notes(&self, n: usize) -> Vec<String> {
        let w = self;
        use drawbridge::recording::proto::record::Body;
        let start = std::time::Instant::now();
        loop {
            let mut sealed = 0;
            let mut notes = Vec::new();
            for entry in std::fs::read_dir(w.gateway.path("recordings")).expect("dir") {
                let path = entry.expect("entry").path();
                let Ok(rec) = drawbridge::recording::read_file(&path) else {
                    continue;
                };
                sealed += usize::from(rec.seal().is_some());
                for r in &rec.records {
                    if let Some(Body::Note(note)) = &r.body {
                        notes.push(note.text.clone());
                    }
                }
            }
            if sealed >= n {
                return notes;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "recordings not sealed: {}",
                w.gateway.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
