//! Ephemeral PostgreSQL roles: one per session, made through the target's admin
//! connection, known only to the gateway, dropped when the session ends.
//!
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

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::CredentialError;
use crate::access::Authorization;
use crate::proxy::postgres::tls::{MakeRustls, client_config};
use crate::secret::Secret;
use crate::store::{PostgresSettings, Target};
use crate::time::{self, UnixTime};

/// Makes ephemeral roles on PostgreSQL targets.
pub struct PgRoleMinter {
    pub connect_timeout: Duration,
}

/// How to open an admin connection to one target.
#[derive(Clone)]
struct Admin {
    target: String,
    host: String,
    port: u16,
    settings: PostgresSettings,
    timeout: Duration,
}

/// A role that exists on the target for one session. Dropped on the target by
/// [`EphemeralRole::drop_role`]; if that is never called (an error path), dropping
/// this value schedules the same cleanup, and the start-up sweep is the last net.
pub struct EphemeralRole {
    pub name: String,
    pub password: Secret<String>,
    granted: String,
    database: String,
    admin: Option<Admin>,
}

impl std::fmt::Debug for EphemeralRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralRole")
            .field("name", &self.name)
            .field("granted", &self.granted)
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
    fn for_target(target: &Target, timeout: Duration) -> Result<Admin, CredentialError> {
        let settings = target.postgres.clone().ok_or_else(|| {
            mint_err(format!("target {} has no PostgreSQL settings", target.name))
        })?;
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
            settings,
            timeout,
        })
    }

    fn default_database(&self) -> String {
        self.settings
            .database
            .clone()
            .unwrap_or_else(|| "postgres".into())
    }

    /// A fresh admin connection. Not pooled: it is used twice per session (create,
    /// drop), which is cheap next to the session itself.
    async fn connect(&self, database: &str) -> Result<Client, CredentialError> {
        // Read at use time, never stored or logged; the error names the source only.
        let password = self.settings.admin_password.read().map_err(mint_err)?;
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.settings.admin_user)
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

    /// Ends the role's sessions, hands what it owns to `heir`, drops it.
    async fn drop_role(
        &self,
        database: &str,
        role: &str,
        heir: &str,
    ) -> Result<(), CredentialError> {
        let client = self.connect(database).await?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .map_err(mint_err)?;
        let (role, heir) = (quote_ident(role), quote_ident(heir));
        client
            .batch_execute(&format!(
                "REASSIGN OWNED BY {role} TO {heir}; DROP OWNED BY {role}; DROP ROLE {role}"
            ))
            .await
            .map_err(mint_err)
    }
}

impl PgRoleMinter {
    /// Creates the session's role on the target, member of the granted role,
    /// valid until the grant ends (an hour when policy allowed access without one).
    pub async fn mint(
        &self,
        auth: &Authorization,
        session_id: &str,
        now: UnixTime,
    ) -> Result<EphemeralRole, CredentialError> {
        let admin = Admin::for_target(auth.target(), self.connect_timeout)?;
        let name = role_name(auth.identity().name(), session_id);
        let random = crate::keys::random_bytes::<24>().map_err(mint_err)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let valid_until = auth.grant().map(|g| g.ends_at()).unwrap_or(now + 3600);
        let database = admin.default_database();
        let client = admin.connect(&database).await?;
        client
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {} CONNECTION LIMIT 1 IN ROLE {}",
                quote_ident(&name),
                quote_literal(&verifier),
                quote_literal(&time::format(valid_until)),
                quote_ident(auth.login()),
            ))
            .await
            .map_err(|e| {
                mint_err(format!(
                    "creating role {name} in role {}: {e}",
                    auth.login()
                ))
            })?;
        tracing::info!(target = %admin.target, role = %name, granted = auth.login(), "ephemeral role created");
        Ok(EphemeralRole {
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
        let admin = Admin::for_target(target, self.connect_timeout)?;
        let database = admin.default_database();
        let client = admin.connect(&database).await?;
        let rows = client
            .query(
                "SELECT r.rolname::text, coalesce((SELECT g.rolname::text FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid LIMIT 1), current_user::text) \
                 FROM pg_roles r WHERE r.rolname LIKE 'drawbridge\\_%' \
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usename = r.rolname)",
                &[],
            )
            .await
            .map_err(mint_err)?;
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

impl EphemeralRole {
    /// The database the session logged in to: where `REASSIGN/DROP OWNED` must run.
    pub fn set_database(&mut self, database: &str) {
        self.database = database.to_string();
    }

    /// Terminates the role's backend and drops the role (see the module docs).
    pub async fn drop_role(mut self) {
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

impl Drop for EphemeralRole {
    fn drop(&mut self) {
        // Only on paths that never reached `drop_role` (a failed login, a session
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
