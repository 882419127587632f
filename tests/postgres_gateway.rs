//! End to end over PostgreSQL: stock `psql` and tokio-postgres → drawbridge →
//! a throwaway PostgreSQL cluster (SCRAM-SHA-256, TLS), with grants made
//! through the real CLI and REST API.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::pg::{PgCluster, SUPERUSER_PASSWORD};
use support::*;

/// A gateway, a cluster registered as target `pg-1` (env=prod, TLS verified,
/// role `app_rw` with a table it may read and write), alice and bob.
struct PgWorld {
    gateway: Gateway,
    pg: PgCluster,
    alice: User,
    bob: User,
}

impl PgWorld {
    fn new() -> PgWorld {
        let gateway = Gateway::start();
        let pg = PgCluster::start();
        pg.sql(
            "CREATE ROLE app_rw NOLOGIN; CREATE ROLE app_ro NOLOGIN; \
             CREATE TABLE items (id int, name text); GRANT SELECT, INSERT ON items TO app_rw; \
             GRANT CREATE ON SCHEMA public TO app_rw",
        );
        let pw = gateway.path("pg-admin-password");
        std::fs::write(&pw, format!("{SUPERUSER_PASSWORD}\n")).expect("password file");
        let address = format!("127.0.0.1:{}", pg.port);
        gateway.admin_ok(&[
            "target",
            "add",
            "pg-1",
            "--protocol",
            "postgres",
            "--address",
            &address,
            "--admin-user",
            "postgres",
            "--admin-password-file",
            pw.to_str().expect("utf-8"),
            "--database",
            "postgres",
            "--tls-ca",
            pg.cert.to_str().expect("utf-8"),
            "--label",
            "env=prod",
        ]);
        let alice = gateway.add_user("alice", &["dev"]);
        let bob = gateway.add_user("bob", &["approvers"]);
        PgWorld {
            gateway,
            pg,
            alice,
            bob,
        }
    }

    /// alice asks for `role` on pg-1, bob approves; returns the grant id.
    fn grant(&self, role: &str, duration: &str) -> i64 {
        self.alice.login_once();
        let id = self.alice.request("pg-1", role, duration);
        self.bob.login_once();
        let o = self.bob.cli(&["approve", &id.to_string()]);
        assert!(o.status.success(), "approve: {}", stderr(&o));
        id
    }

    fn token(&self, user: &User) -> String {
        user.login_once();
        let saved = std::fs::read_to_string(user.home.join("cli/login.json")).expect("login");
        let json: serde_json::Value = serde_json::from_str(&saved).expect("json");
        json["token"].as_str().expect("token").to_string()
    }

    fn conninfo(&self, user: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={sslmode} connect_timeout=10",
            self.gateway.pg_port
        )
    }

    /// Stock psql through the gateway, with `password` as PGPASSWORD.
    fn psql(&self, user: &str, password: &str, sslmode: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.arg(self.conninfo(user, sslmode))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", password)
            .current_dir(self.gateway.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn psql_run(&self, user: &str, password: &str, sql: &str) -> Output {
        self.psql(user, password, "require")
            .args(["-c", sql])
            .output()
            .expect("psql")
    }

    /// The text of every recording (notes are stored as plain UTF-8 strings).
    fn recordings(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.gateway.path("recordings")).expect("recordings") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|x| x != "dbr") {
                continue; // the audit/ folder
            }
            let bytes = std::fs::read(path).expect("read");
            all.push_str(&String::from_utf8_lossy(&bytes));
        }
        all
    }

    /// tokio-postgres through the gateway, verifying the gateway's certificate.
    async fn client(
        &self,
        user: &str,
        token: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let ca = self.gateway.path("data/keys/tls.crt");
        let tls = drawbridge::proxy::postgres::tls::MakeRustls(
            drawbridge::proxy::postgres::tls::client_config(&ca).expect("gateway CA"),
        );
        let conninfo = format!("{} password={token}", self.conninfo(user, "require"));
        let (client, connection) = tokio_postgres::connect(&conninfo, tls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn psql_queries_and_copies_through_an_ephemeral_role_that_lives_only_during_the_session() {
    let w = PgWorld::new();
    w.grant("app_rw", "30m");
    let token = w.token(&w.alice);

    let o = w.psql_run(
        "app_rw@pg-1",
        &token,
        "INSERT INTO items VALUES (1, 'one'), (2, 'two'); \
         SELECT current_user LIKE 'drawbridge\\_alice\\_%', pg_has_role('app_rw', 'member'), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), w.gateway.log());
    assert_eq!(
        stdout(&o).trim(),
        "INSERT 0 2\nt|t|t",
        "role, membership, upstream TLS"
    );

    // The wrapper: stock psql with the saved token, the gateway's certificate verified.
    let port = w.gateway.pg_port.to_string();
    let o = w.alice.cli(&[
        "psql",
        "pg-1",
        "--role",
        "app_rw",
        "--port",
        &port,
        "--",
        "-X",
        "-At",
        "-c",
        "SELECT count(*) FROM items",
    ]);
    assert!(o.status.success(), "drawbridge psql: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "2");
    assert!(!stdout(&o).contains(&token) && !stderr(&o).contains(&token));

    // \copy both ways: the COPY sub-protocol passes the relay untouched.
    let csv = w.gateway.path("items.csv");
    std::fs::write(&csv, "3,three\n4,four\n").expect("csv");
    let o = w.psql_run(
        "app_rw@pg-1",
        &token,
        &format!("\\copy items FROM '{}' CSV", csv.display()),
    );
    assert!(o.status.success(), "copy in: {}", stderr(&o));
    let out = w.gateway.path("out.csv");
    let o = w.psql_run(
        "app_rw@pg-1",
        &token,
        &format!(
            "\\copy (SELECT * FROM items ORDER BY id) TO '{}' CSV",
            out.display()
        ),
    );
    assert!(o.status.success(), "copy out: {}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        "1,one\n2,two\n3,three\n4,four\n"
    );

    // The role exists while a session is open, and is gone after it.
    let mut session = w
        .psql("app_rw@pg-1", &token, "require")
        .args(["-c", "SELECT pg_sleep(2)"])
        .spawn()
        .expect("psql");
    assert!(
        wait_until(Duration::from_secs(10), || w.pg.drawbridge_roles().len()
            == 1),
        "the session's role exists during the session"
    );
    assert!(session.wait().expect("wait").success());
    assert!(
        wait_until(Duration::from_secs(10), || w
            .pg
            .drawbridge_roles()
            .is_empty()),
        "the role is dropped with the session: {:?}",
        w.pg.drawbridge_roles()
    );

    let recorded = w.recordings();
    assert!(
        recorded.contains("query: INSERT INTO items VALUES (1, 'one')"),
        "{recorded}"
    );
    assert!(recorded.contains("complete: INSERT 0 2"), "{recorded}");
    assert!(recorded.contains("items FROM STDIN CSV"), "{recorded}");
    let verify = w.gateway.admin(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn every_refusal_has_a_sqlstate_and_says_what_to_do() {
    let w = PgWorld::new();
    let token = w.token(&w.alice);

    // No TLS: refused before any password is asked for.
    let o = w
        .psql("app_rw@pg-1", &token, "disable")
        .args(["-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("drawbridge requires TLS"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("sslmode=require"), "{}", stderr(&o));

    // A wrong token.
    let o = w.psql_run("app_rw@pg-1", "not-a-token", "SELECT 1");
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("drawbridge login"), "{}", stderr(&o));

    // No grant and no role named: the hint is the command that asks for one.
    let o = w.psql_run("pg-1", &token, "SELECT 1");
    assert!(
        stderr(&o).contains("no active grant, and no role named"),
        "{}",
        stderr(&o)
    );

    // No grant: the hint is the command that asks for one.
    let o = w.psql_run("app_rw@pg-1", &token, "SELECT 1");
    let err = stderr(&o);
    assert!(
        err.contains("access to app_rw@pg-1 denied: no active grant"),
        "{err}"
    );
    assert!(
        err.contains("drawbridge request pg-1 --login app_rw"),
        "{err}"
    );

    // A grant for another role does not open this one.
    w.grant("app_ro", "30m");
    let o = w.psql_run("app_rw@pg-1", &token, "SELECT 1");
    assert!(stderr(&o).contains("denied"), "{}", stderr(&o));
    let o = w.psql_run("app_ro@pg-1", &token, "SELECT 1");
    assert!(o.status.success(), "{}", stderr(&o));

    // TARGET alone means the role of the active grant.
    let o = w.psql_run("pg-1", &token, "SELECT pg_has_role('app_ro', 'member')");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "t");
    // Neither ROLE@TARGET nor TARGET.
    let o = w.psql_run("@pg-1", &token, "SELECT 1");
    assert!(
        stderr(&o).contains("must be ROLE@TARGET or TARGET"),
        "{}",
        stderr(&o)
    );
    assert!(
        w.pg.drawbridge_roles().is_empty()
            || wait_until(Duration::from_secs(5), || w
                .pg
                .drawbridge_roles()
                .is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_get_prepared_statements_cancel_and_sqlstates_from_the_wire() {
    let w = PgWorld::new();
    w.grant("app_rw", "30m");
    let token = w.token(&w.alice);

    // Wrong token, seen by a driver: SQLSTATE 28P01.
    let err = w
        .client("app_rw@pg-1", "nope")
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    // No grant for this role: 42501.
    let err = w
        .client("app_ro@pg-1", &token)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");

    let client = w.client("app_rw@pg-1", &token).await.expect("connect");
    let insert = client
        .prepare("INSERT INTO items VALUES ($1, $2)")
        .await
        .expect("prepare");
    for (id, name) in [(10, "ten"), (11, "eleven")] {
        client
            .execute(&insert, &[&id, &name])
            .await
            .expect("execute");
    }
    let rows = client
        .query(
            "SELECT name FROM items WHERE id >= $1 ORDER BY id",
            &[&10i32],
        )
        .await
        .expect("query");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["ten", "eleven"]);

    // Cancel: the driver sends our BackendKeyData; the gateway maps it upstream.
    let cancel = client.cancel_token();
    let ca = w.gateway.path("data/keys/tls.crt");
    let tls = drawbridge::proxy::postgres::tls::MakeRustls(
        drawbridge::proxy::postgres::tls::client_config(&ca).expect("CA"),
    );
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(tls).await.expect("cancel sent");
    let result = sleeper.await.expect("join");
    let err = result.map(|_| ()).expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The client is gone with the task; the recording is sealed when the gateway
    // notices, so wait for the seal rather than a fixed time.
    assert!(wait_until(Duration::from_secs(10), || w
        .recordings()
        .contains("client disconnected")));
    let recorded = w.recordings();
    assert!(
        recorded.contains("parse \"s0\": INSERT INTO items VALUES ($1, $2)")
            || recorded.contains("INSERT INTO items VALUES ($1, $2)"),
        "{recorded}"
    );
    assert!(recorded.contains("parameter(s)"), "{recorded}");
    assert!(!recorded.contains("eleven"), "bind values are not recorded");
}

#[test]
fn revoking_the_grant_ends_the_session_with_a_fatal_error_within_a_second() {
    let w = PgWorld::new();
    let grant = w.grant("app_rw", "30m");
    let token = w.token(&w.alice);
    let session = w
        .psql("app_rw@pg-1", &token, "require")
        .args(["-c", "SELECT pg_sleep(20)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    assert!(wait_until(Duration::from_secs(10), || w
        .pg
        .drawbridge_roles()
        .len()
        == 1));
    let o = w
        .bob
        .cli(&["revoke", &grant.to_string(), "--comment", "done"]);
    assert!(o.status.success(), "revoke: {}", stderr(&o));
    let revoked = Instant::now();
    let out = session.wait_with_output().expect("psql");
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        revoked.elapsed()
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("grant {grant} was revoked")), "{err}");
    assert!(
        wait_until(Duration::from_secs(10), || w
            .pg
            .drawbridge_roles()
            .is_empty()),
        "role dropped after the revoke"
    );
}

#[test]
fn leftover_roles_are_swept_when_the_gateway_starts() {
    let w = PgWorld::new();
    w.pg.sql("CREATE ROLE drawbridge_ghost_0000 LOGIN IN ROLE app_rw");
    // A second gateway on the same data (the first one keeps running) sweeps at start.
    let o = Command::new(BIN)
        .arg("serve")
        .current_dir(w.gateway.dir.path())
        .env("DRAWBRIDGE_CONFIG", &w.gateway.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut second = o.expect("second gateway");
    let swept = wait_until(Duration::from_secs(15), || {
        w.pg.drawbridge_roles().is_empty()
    });
    let _ = second.kill();
    let _ = second.wait();
    assert!(swept, "leftover role swept: {:?}", w.pg.drawbridge_roles());
}
