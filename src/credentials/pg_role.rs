//! The login the gateway uses on a PostgreSQL target, one per session.
//!
//! Ephemeral role mode (the default): made through the target's admin
//! connection, known only to the gateway, dropped when the session ends.
//! `CREATE ROLE drawbridge_<user>_<id> LOGIN PASSWORD '<SCRAM verifier>' VALID
//! UNTIL '<grant end>' CONNECTION LIMIT 1 IN ROLE <granted role>`. The password
//! is sent as a SCRAM verifier computed here, so the plaintext never leaves the
//! gateway (not even into the server's statement log). `VALID UNTIL` only stops
//! new logins; the live session is ended by the gateway itself at grant end.
//!
//! Cleanup, in the session's database (the only one a gateway session can use):
//! terminate the role's backends, `REASSIGN OWNED BY` it `TO` the granted role
//! (tables the engineer created survive, owned by the role they acted as), `DROP
//! OWNED BY` it (its remaining privileges), `DROP ROLE`. Roles left by a crash
//! are swept at gateway start. Needs PostgreSQL 14+ (`pg_terminate_backend`
//! with a timeout) and an admin role that may create and drop roles.
//!
//! Admin connections are pooled: one per target and database, shared by every
//! session (tokio-postgres pipelines concurrent statements on it), replaced
//! when it breaks.
//!
//! Static mode, for targets where roles cannot be created: the target names one
//! role and where its password is (variable or file, read at each login, never
//! stored or logged); a grant for exactly that role logs in as it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::CredentialError;
use crate::access::Authorization;
use crate::proxy::postgres::tls::{MakeRustls, client_config};
use crate::secret::Secret;
use crate::store::{PostgresSettings, SecretSource, StaticLogin, Target};
use crate::time::{self, UnixTime};

/// Makes the upstream logins of PostgreSQL targets.
pub struct PgRoleMinter {
    connect_timeout: Duration,
    pool: AdminPool,
}

/// Open admin connections by (target, database).
type Pooled = HashMap<(String, String), Arc<Client>>;

#[derive(Clone, Default)]
struct AdminPool(Arc<Mutex<Pooled>>);

impl AdminPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pooled> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, target: &str, database: &str) -> Option<Arc<Client>> {
        let key = (target.to_string(), database.to_string());
        self.lock().get(&key).filter(|c| !c.is_closed()).cloned()
    }

    fn put(&self, target: &str, database: &str, client: Arc<Client>) {
        let key = (target.to_string(), database.to_string());
        self.lock().insert(key, client);
    }
}

/// How to open an admin connection to one target.
#[derive(Clone)]
struct Admin {
    target: String,
    host: String,
    port: u16,
    user: String,
    password: SecretSource,
    settings: PostgresSettings,
    timeout: Duration,
    pool: AdminPool,
}

/// The role the gateway logs in as for one session. An ephemeral one is
/// dropped on the target by [`PgLogin::release`]; if that is never called (an
/// error path), dropping this value schedules the same cleanup, and the
/// start-up sweep is the last net. A static one has nothing to clean up.
pub struct PgLogin {
    pub name: String,
    pub password: Secret<String>,
    granted: String,
    database: String,
    admin: Option<Admin>,
}

impl std::fmt::Debug for PgLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLogin")
            .field("name", &self.name)
            .field("granted", &self.granted)
            .field("ephemeral", &self.admin.is_some())
            .finish_non_exhaustive()
    }
}

fn mint_err(e: impl std::fmt::Display) -> CredentialError {
    CredentialError::Mint(e.to_string())
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal that reads the same whatever `standard_conforming_strings`
/// says (the `E''` form with backslashes doubled), like libpq's PQescapeLiteral.
pub fn quote_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// `drawbridge_<user>_<first 8 of the session id>`: names the engineer and the
/// session in `pg_stat_activity` and the server log; at most 52 bytes (< 63).
pub fn role_name(user: &str, session_id: &str) -> String {
    let user: String = user
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(32)
        .collect();
    let id: String = session_id
        .trim_start_matches("s-")
        .chars()
        .take(8)
        .collect();
    format!("drawbridge_{user}_{id}")
}

impl Admin {
    fn for_target(
        target: &Target,
        timeout: Duration,
        pool: &AdminPool,
    ) -> Result<Admin, CredentialError> {
        let settings = target.postgres.clone().ok_or_else(|| {
            mint_err(format!("target {} has no PostgreSQL settings", target.name))
        })?;
        let (Some(user), Some(password)) =
            (settings.admin_user.clone(), settings.admin_password.clone())
        else {
            return Err(mint_err(format!(
                "target {} has no admin role to create session roles with",
                target.name
            )));
        };
        let (host, port) = target
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
            .ok_or_else(|| {
                mint_err(format!(
                    "target address {:?} is not HOST:PORT",
                    target.address
                ))
            })?;
        Ok(Admin {
            target: target.name.clone(),
            host,
            port,
            user,
            password,
            settings,
            timeout,
            pool: pool.clone(),
        })
    }

    fn default_database(&self) -> String {
        self.settings
            .database
            .clone()
            .unwrap_or_else(|| "postgres".into())
    }

    /// A new admin connection to `database`.
    async fn connect(&self, database: &str) -> Result<Client, CredentialError> {
        // Read at use time, never stored or logged; the error names the source only.
        let password = self.password.read().map_err(mint_err)?;
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(password.expose())
            .dbname(database)
            .application_name("drawbridge-admin")
            .connect_timeout(self.timeout);
        let failed = |e: tokio_postgres::Error| {
            mint_err(format!("admin connection to target {}: {e}", self.target))
        };
        // Each branch has its own stream type, so each spawns its own driver task.
        let client = match &self.settings.tls_ca {
            Some(ca) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = MakeRustls(client_config(ca).map_err(mint_err)?);
                let (client, connection) = config.connect(tls).await.map_err(failed)?;
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }

    /// The pooled connection to `database`, opened when there is none or the
    /// last one broke.
    async fn client(&self, database: &str) -> Result<Arc<Client>, CredentialError> {
        if let Some(client) = self.pool.get(&self.target, database) {
            return Ok(client);
        }
        let client = Arc::new(self.connect(database).await?);
        self.pool.put(&self.target, database, client.clone());
        Ok(client)
    }

    /// Runs `work` on the pooled connection. If the connection turns out to be
    /// broken (the server restarted, a proxy dropped it), it is replaced and
    /// `work` runs once more: every admin statement here is safe to repeat
    /// after a failure, as a broken connection commits nothing.
    async fn run<T, F, Fut>(&self, database: &str, work: F) -> Result<T, CredentialError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client(database).await?;
        match work(client.clone()).await {
            Err(e) if client.is_closed() => {
                tracing::info!(target = %self.target, error = %e, "admin connection broke; reconnecting");
                let client = self.client(database).await?;
                work(client).await.map_err(mint_err)
            }
            result => result.map_err(mint_err),
        }
    }

    /// Ends the role's sessions, hands what it owns to `heir`, drops it.
    async fn drop_role(
        &self,
        database: &str,
        role: &str,
        heir: &str,
    ) -> Result<(), CredentialError> {
        let terminate =
            "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity WHERE usename = $1";
        self.run(
            database,
            |c| async move { c.execute(terminate, &[&role]).await },
        )
        .await?;
        let (role, heir) = (quote_ident(role), quote_ident(heir));
        let statements =
            format!("REASSIGN OWNED BY {role} TO {heir}; DROP OWNED BY {role}; DROP ROLE {role}");
        let statements = statements.as_str();
        self.run(
            database,
            |c| async move { c.batch_execute(statements).await },
        )
        .await
    }
}

impl PgRoleMinter {
    pub fn new(connect_timeout: Duration) -> PgRoleMinter {
        PgRoleMinter {
            connect_timeout,
            pool: AdminPool::default(),
        }
    }

    /// The session's upstream login: the target's static one, or a new role on
    /// the target, member of the granted role, valid until the grant ends (an
    /// hour when policy allowed access without one).
    pub async fn mint(
        &self,
        auth: &Authorization,
        session_id: &str,
        now: UnixTime,
    ) -> Result<PgLogin, CredentialError> {
        let fixed = auth
            .target()
            .postgres
            .as_ref()
            .and_then(|s| s.static_login.as_ref());
        if let Some(fixed) = fixed {
            return static_login(auth, fixed);
        }
        let admin = Admin::for_target(auth.target(), self.connect_timeout, &self.pool)?;
        let name = role_name(auth.identity().name(), session_id);
        let random = crate::keys::random_bytes::<24>().map_err(mint_err)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let valid_until = auth.grant().map(|g| g.ends_at()).unwrap_or(now + 3600);
        let database = admin.default_database();
        let create = format!(
            "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {} CONNECTION LIMIT 1 IN ROLE {}",
            quote_ident(&name),
            quote_literal(&verifier),
            quote_literal(&time::format(valid_until)),
            quote_ident(auth.login()),
        );
        let create = create.as_str();
        admin
            .run(&database, |c| async move { c.batch_execute(create).await })
            .await
            .map_err(|e| {
                mint_err(format!(
                    "creating role {name} in role {}: {e}",
                    auth.login()
                ))
            })?;
        tracing::info!(target = %admin.target, role = %name, granted = auth.login(), "ephemeral role created");
        Ok(PgLogin {
            name,
            password: Secret::new(password),
            granted: auth.login().to_string(),
            database,
            admin: Some(admin),
        })
    }

    /// Drops `drawbridge_%` roles that no backend uses: leftovers of a gateway
    /// that stopped without cleaning up. Roles in use are left alone, so a second
    /// gateway's live sessions survive this one's start. Returns how many went.
    pub async fn sweep(&self, target: &Target) -> Result<usize, CredentialError> {
        let admin = Admin::for_target(target, self.connect_timeout, &self.pool)?;
        let database = admin.default_database();
        let leftovers = "SELECT r.rolname::text, coalesce((SELECT g.rolname::text FROM pg_auth_members m \
             JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid LIMIT 1), current_user::text) \
             FROM pg_roles r WHERE r.rolname LIKE 'drawbridge\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usename = r.rolname)";
        let rows = admin
            .run(&database, |c| async move { c.query(leftovers, &[]).await })
            .await?;
        let mut dropped = 0;
        for row in rows {
            let (role, heir): (String, String) = (row.get(0), row.get(1));
            match admin.drop_role(&database, &role, &heir).await {
                Ok(()) => dropped += 1,
                Err(e) => {
                    tracing::warn!(target = %target.name, %role, error = %e, "cannot sweep leftover role")
                }
            }
        }
        Ok(dropped)
    }
}

/// The target's one static role, for a grant on exactly that role.
fn static_login(auth: &Authorization, fixed: &StaticLogin) -> Result<PgLogin, CredentialError> {
    let target = &auth.target().name;
    if auth.login() != fixed.user {
        return Err(CredentialError::Unavailable(format!(
            "target {target} logs in only as {user} (a static credential): request access with --login {user}",
            user = fixed.user
        )));
    }
    // The error names where the secret should be, never the secret.
    let password = fixed
        .password
        .read()
        .map_err(|e| mint_err(format!("static password of target {target}: {e}")))?;
    tracing::info!(%target, role = %fixed.user, "static login used");
    Ok(PgLogin {
        name: fixed.user.clone(),
        password,
        granted: fixed.user.clone(),
        database: String::new(),
        admin: None,
    })
}

impl PgLogin {
    /// The database the session logged in to: where `REASSIGN/DROP OWNED` must run.
    pub fn set_database(&mut self, database: &str) {
        self.database = database.to_string();
    }

    /// At session end: terminates an ephemeral role's backend and drops the
    /// role (see the module docs). A static login has nothing to release.
    pub async fn release(mut self) {
        if let Some(admin) = self.admin.take() {
            drop_logged(
                admin,
                self.database.clone(),
                self.name.clone(),
                self.granted.clone(),
            )
            .await;
        }
    }
}

async fn drop_logged(admin: Admin, database: String, role: String, heir: String) {
    match admin.drop_role(&database, &role, &heir).await {
        Ok(()) => tracing::info!(target = %admin.target, %role, "ephemeral role dropped"),
        Err(e) => {
            tracing::error!(target = %admin.target, %role, error = %e, "cannot drop ephemeral role (the next start sweeps it)")
        }
    }
}

impl Drop for PgLogin {
    fn drop(&mut self) {
        // Only on paths that never reached `release` (a failed login, a session
        // that could not start). Outside a runtime the start-up sweep cleans up.
        if let (Some(admin), Ok(rt)) = (self.admin.take(), tokio::runtime::Handle::try_current()) {
            let args = (
                self.database.clone(),
                self.name.clone(),
                self.granted.clone(),
            );
            rt.spawn(drop_logged(admin, args.0, args.1, args.2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_whatever_they_hold() {
        assert_eq!(quote_ident("app_rw"), "\"app_rw\"");
        assert_eq!(quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
        assert_eq!(quote_literal("x'y"), "'x''y'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn role_names_are_safe_short_and_name_the_session() {
        assert_eq!(
            role_name("alice", "s-3f9a1c0b7d2e4f60"),
            "drawbridge_alice_3f9a1c0b"
        );
        assert_eq!(role_name("Bob.O'Neil", "s-00"), "drawbridge_bob_o_neil_00");
        assert!(role_name(&"x".repeat(200), "s-0123456789abcdef").len() <= 63);
    }
}
