//! A throwaway PostgreSQL cluster: `initdb` with SCRAM-SHA-256 and TLS on (a
//! certificate made with rcgen), run as the `postgres` user on a free loopback
//! port in a temporary folder, stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use super::{Gateway, free_port, stderr, stdout, wait_for_port};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
pub const SUPERUSER_PASSWORD: &str = "pg-admin-secret";

pub struct PgCluster {
    pub dir: TempDir,
    pub port: u16,
    /// The server's self-signed certificate, which also serves as its CA.
    pub cert: PathBuf,
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        stdout(&o).trim().parse().expect("postgres user exists")
    };
    (id("-u"), id("-g"))
}

fn as_postgres(args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser")
}

fn chown(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        chown(dir.path());
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("pwfile");
        chown(&pwfile);
        let initdb = format!("{BIN_DIR}/initdb");
        let o = as_postgres(&[
            &initdb,
            "-D",
            data.to_str().expect("utf-8"),
            "-A",
            "scram-sha-256",
            "-U",
            "postgres",
            "--no-sync",
            &format!("--pwfile={}", pwfile.display()),
        ]);
        assert!(o.status.success(), "initdb: {}", stderr(&o));
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("cert");
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, certified.cert.pem()).expect("cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown(&cert);
        chown(&key);
        for attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
                 ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n\
                 fsync = off\nmax_connections = 30\nshared_buffers = '16MB'\n",
                dir = dir.path().display(),
                cert = cert.display(),
                key = key.display(),
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf).expect("conf");
            let log = dir.path().join("server.log");
            let o = as_postgres(&[
                &format!("{BIN_DIR}/pg_ctl"),
                "-D",
                data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "30",
                "start",
            ]);
            if o.status.success() && wait_for_port(port, Duration::from_secs(5)) {
                return PgCluster { dir, port, cert };
            }
            eprintln!(
                "postgres did not start on {port} (attempt {attempt}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("postgres failed to start");
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> u32 {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.lines().next()?.trim().parse().ok())
            .expect("postmaster.pid")
    }

    /// Registers this cluster as PostgreSQL target `name` on `gateway`: TLS
    /// verified against the cluster's certificate, the superuser as admin role
    /// with its password in a file; `extra` flags are added as given.
    pub fn register(&self, gateway: &Gateway, name: &str, extra: &[&str]) {
        let pw = gateway.path("pg-admin-password");
        std::fs::write(&pw, format!("{SUPERUSER_PASSWORD}\n")).expect("password file");
        let address = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["target", "add", name, "--protocol", "postgres"];
        args.extend(["--address", &address, "--admin-user", "postgres"]);
        args.extend(["--admin-password-file", pw.to_str().expect("utf-8")]);
        args.extend(["--tls-ca", self.cert.to_str().expect("utf-8")]);
        args.extend(extra);
        gateway.admin_ok(&args);
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db} sslmode=require",
            self.port
        )
    }

    /// Runs SQL as the superuser through stock `psql`; returns unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        let o = Command::new("psql")
            .arg(self.url("postgres", "postgres"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .expect("psql");
        assert!(o.status.success(), "psql {sql}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    }

    /// Session roles the gateway made, as the server sees them.
    pub fn drawbridge_roles(&self) -> Vec<String> {
        let out =
            self.sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'drawbridge\\_%' ORDER BY 1");
        out.lines().map(str::to_string).collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&[
            &format!("{BIN_DIR}/pg_ctl"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}
