//! The embedded store: one SQLite file in WAL mode, so the gateway and the local
//! admin CLI can use it at the same time.
//!
//! Calls are short, indexed statements under a `std::sync::Mutex` that is never
//! held across an `.await`. Reads run on the async worker (they take
//! microseconds); changes wait for the disk at commit, so they run through
//! [`SqliteStore::write`], which keeps that wait off the worker's other tasks.

use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::*;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT,
    totp_secret BLOB,
    totp_last_step INTEGER NOT NULL DEFAULT -1,
    email TEXT
);
CREATE TABLE IF NOT EXISTS user_groups (
    user_id INTEGER NOT NULL REFERENCES users(id),
    grp TEXT NOT NULL,
    PRIMARY KEY (user_id, grp)
);
CREATE TABLE IF NOT EXISTS ssh_keys (
    fingerprint TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    openssh TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
    name TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,
    host_key TEXT NOT NULL,
    labels TEXT NOT NULL,
    postgres TEXT,
    http TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    target TEXT NOT NULL,
    login TEXT NOT NULL,
    duration_secs INTEGER NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    approvals_required INTEGER NOT NULL,
    max_sessions INTEGER,
    break_glass INTEGER NOT NULL DEFAULT 0,
    grant_start INTEGER,
    grant_end INTEGER,
    decided_by TEXT,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_user ON requests(user_id, target, login);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests(state);
CREATE TABLE IF NOT EXISTS approvals (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    approver TEXT NOT NULL,
    comment TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    target TEXT NOT NULL,
    login TEXT NOT NULL,
    protocol TEXT NOT NULL,
    grant_id INTEGER,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT,
    recording TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_grant ON sessions(grant_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"#;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn conflict_or_db(e: rusqlite::Error, what: impl Into<String>) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what.into())
        }
        e => db(e),
    }
}

const REQUEST_COLUMNS: &str = "r.id, r.user_id, u.name, r.target, r.login, r.duration_secs, r.reason, \
     r.state, r.created_at, r.grant_start, r.grant_end, r.decided_by, r.comment, r.ticket, \
     r.expires_at, r.approvals_required, r.max_sessions, r.break_glass, \
     (SELECT group_concat(approver, ',') FROM (SELECT approver FROM approvals a \
       WHERE a.request_id = r.id ORDER BY a.at, a.approver))";

fn request_from_row(row: &Row<'_>) -> rusqlite::Result<AccessRequestRow> {
    let state: String = row.get(7)?;
    Ok(AccessRequestRow {
        id: row.get(0)?,
        user_id: row.get(1)?,
        user: row.get(2)?,
        target: row.get(3)?,
        login: row.get(4)?,
        duration_secs: row.get(5)?,
        reason: row.get(6)?,
        // An unknown state (a newer gateway wrote it) reads as denied: fail closed.
        state: RequestState::parse(&state).unwrap_or(RequestState::Denied),
        created_at: row.get(8)?,
        grant_start: row.get(9)?,
        grant_end: row.get(10)?,
        decided_by: row.get(11)?,
        comment: row.get(12)?,
        ticket: row.get(13)?,
        expires_at: row.get(14)?,
        approvals_required: row.get(15)?,
        max_sessions: row.get(16)?,
        break_glass: row.get(17)?,
        approved_by: row
            .get::<_, Option<String>>(18)?
            .map(|list| list.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: row.get(0)?,
        user: row.get(1)?,
        target: row.get(2)?,
        login: row.get(3)?,
        protocol: row.get(4)?,
        grant_id: row.get(5)?,
        started_at: row.get(6)?,
        ended_at: row.get(7)?,
        end_reason: row.get(8)?,
        recording: row.get(9)?,
    })
}

fn target_from_row(row: &Row<'_>) -> rusqlite::Result<Target> {
    let labels: String = row.get(4)?;
    Ok(Target {
        name: row.get(0)?,
        protocol: row.get(1)?,
        address: row.get(2)?,
        host_key: row.get(3)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        postgres: row
            .get::<_, Option<String>>(5)?
            .and_then(|json| serde_json::from_str(&json).ok()),
        http: row
            .get::<_, Option<String>>(6)?
            .and_then(|json| serde_json::from_str(&json).ok()),
    })
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore> {
        // WAL lets the admin CLI write while the gateway reads; the busy timeout
        // makes a writer wait for the other process instead of failing.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Self::migrate(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// Columns added after the first release, for state files made before them.
    fn migrate(conn: &Connection) -> Result<()> {
        let has_postgres: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('targets') WHERE name = 'postgres'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !has_postgres {
            conn.execute_batch("ALTER TABLE targets ADD COLUMN postgres TEXT")
                .map_err(db)?;
        }
        Self::add_column(conn, "targets", "http")?;
        Self::add_column(conn, "users", "email")?;
        Ok(())
    }

    /// Adds a nullable TEXT column unless the table has it already.
    fn add_column(conn: &Connection, table: &str, column: &str) -> Result<()> {
        let present: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
                .map_err(db)?;
        }
        Ok(())
    }

    /// Runs a change. Its commit waits for the disk (the WAL is synced at every
    /// commit, so an approval or a revoke survives a power cut), which can take
    /// milliseconds: on the multi-threaded runtime the worker meanwhile hands its
    /// other tasks (other sessions' relays) to another thread.
    fn write<T>(&self, change: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let run = || change(&mut self.lock());
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_threaded {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every
        // multi-statement change is a transaction), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn groups(conn: &Connection, user: UserId) -> Result<Vec<String>> {
        let mut stmt = conn
            .prepare_cached("SELECT grp FROM user_groups WHERE user_id = ?1 ORDER BY grp")
            .map_err(db)?;
        let rows = stmt
            .query_map([user], |r| r.get(0))
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(db)?;
        Ok(rows)
    }

    fn user_where(
        conn: &Connection,
        clause: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<User>> {
        let sql = format!("SELECT id, name, admin, disabled, email FROM users WHERE {clause}");
        let row = conn
            .query_row(&sql, [arg], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .optional()
            .map_err(db)?;
        row.map(|(id, name, admin, disabled, email)| {
            Ok(User {
                id,
                name,
                groups: Self::groups(conn, id)?,
                admin,
                disabled,
                email,
            })
        })
        .transpose()
    }

    fn request_by_id(conn: &Connection, id: RequestId) -> Result<Option<AccessRequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests r JOIN users u ON u.id = r.user_id WHERE r.id = ?1"
        );
        conn.query_row(&sql, [id], request_from_row)
            .optional()
            .map_err(db)
    }

    fn bump_revision(conn: &Connection) -> Result<()> {
        conn.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision'",
            [],
        )
        .map_err(db)?;
        Ok(())
    }
}

/// A column holding `value` as JSON (NULL for `None`).
fn json_column<T: serde::Serialize>(value: Option<&T>) -> Result<Option<String>> {
    value
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Database(e.to_string()))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO users (name, admin, password_hash, totp_secret, email) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user.name, user.admin, user.password_hash, user.totp_secret, user.email],
            )
            .map_err(|e| conflict_or_db(e, format!("user {}", user.name)))?;
            let id = tx.last_insert_rowid();
            for group in &user.groups {
                tx.execute(
                    "INSERT INTO user_groups VALUES (?1, ?2)",
                    params![id, group],
                )
                .map_err(db)?;
            }
            for key in &user.ssh_keys {
                tx.execute(
                    "INSERT INTO ssh_keys (fingerprint, user_id, openssh) VALUES (?1, ?2, ?3)",
                    params![key.fingerprint, id, key.openssh],
                )
                .map_err(|e| conflict_or_db(e, format!("SSH key {}", key.fingerprint)))?;
            }
            Self::bump_revision(&tx)?;
            tx.commit().map_err(db)?;
            Self::user_where(conn, "id = ?1", &id)?
                .ok_or_else(|| StoreError::NotFound(format!("user {}", user.name)))
        })
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<UserCredentials>> {
        let conn = self.lock();
        let Some(user) = Self::user_where(&conn, "name = ?1", &name)? else {
            return Ok(None);
        };
        let (password_hash, totp_secret) = conn
            .query_row(
                "SELECT password_hash, totp_secret FROM users WHERE id = ?1",
                [user.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        Ok(Some(UserCredentials {
            user,
            password_hash,
            totp_secret,
        }))
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        Self::user_where(&self.lock(), "id = ?1", &id)
    }

    async fn user_by_key_fingerprint(&self, fingerprint: &str) -> Result<Option<User>> {
        Self::user_where(
            &self.lock(),
            "id = (SELECT user_id FROM ssh_keys WHERE fingerprint = ?1)",
            &fingerprint,
        )
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let conn = self.lock();
        let ids = conn
            .prepare("SELECT id FROM users ORDER BY name")
            .map_err(db)?
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        let mut users = Vec::with_capacity(ids.len());
        for id in ids {
            users.extend(Self::user_where(&conn, "id = ?1", &id)?);
        }
        Ok(users)
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool, now: UnixTime) -> Result<()> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let n = tx
                .execute(
                    "UPDATE users SET disabled = ?1 WHERE name = ?2",
                    params![disabled, name],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {name}")));
            }
            if disabled {
                // Disabling ends every way back in at once: tokens, pending requests
                // and grants go with the account.
                let user = "(SELECT id FROM users WHERE name = ?1)";
                tx.execute(
                    &format!("DELETE FROM tokens WHERE user_id = {user}"),
                    [name],
                )
                .map_err(db)?;
                tx.execute(
                    &format!(
                        "UPDATE requests SET state = 'cancelled', decided_by = 'system', \
                         comment = 'user disabled' WHERE user_id = {user} AND state = 'pending'"
                    ),
                    [name],
                )
                .map_err(db)?;
                tx.execute(
                    &format!(
                        "UPDATE requests SET state = 'revoked', grant_end = MIN(grant_end, ?2), \
                         decided_by = 'system', comment = 'user disabled' \
                         WHERE user_id = {user} AND state = 'approved'"
                    ),
                    params![name, now],
                )
                .map_err(db)?;
            }
            Self::bump_revision(&tx)?;
            tx.commit().map_err(db)
        })
    }

    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool> {
        self.write(|conn| {
            let n = conn
                .execute(
                    "UPDATE users SET totp_last_step = ?1 WHERE id = ?2 AND totp_last_step < ?1",
                    params![step, user],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    async fn insert_token(&self, hash: &[u8], user: UserId, expires_at: UnixTime) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO tokens (hash, user_id, expires_at) VALUES (?1, ?2, ?3)",
                params![hash, user, expires_at],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    async fn user_by_token(&self, hash: &[u8], now: UnixTime) -> Result<Option<User>> {
        let conn = self.lock();
        let user_id: Option<i64> = conn
            .query_row(
                "SELECT user_id FROM tokens WHERE hash = ?1 AND expires_at > ?2",
                params![hash, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match user_id {
            Some(id) => Self::user_where(&conn, "id = ?1", &id),
            None => Ok(None),
        }
    }

    async fn create_target(&self, target: Target) -> Result<()> {
        // Encoded before the write: nothing but the statement runs under the lock.
        let labels = json_column(Some(&target.labels))?;
        let postgres = json_column(target.postgres.as_ref())?;
        let http = json_column(target.http.as_ref())?;
        self.write(|conn| {
            conn.execute(
                "INSERT INTO targets (name, protocol, address, host_key, labels, postgres, http) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![target.name, target.protocol, target.address, target.host_key, labels, postgres, http],
            )
            .map_err(|e| conflict_or_db(e, format!("target {}", target.name)))?;
            Ok(())
        })
    }

    async fn target(&self, name: &str) -> Result<Option<Target>> {
        self.lock()
            .query_row(
                "SELECT name, protocol, address, host_key, labels, postgres, http FROM targets WHERE name = ?1",
                [name],
                target_from_row,
            )
            .optional()
            .map_err(db)
    }

    async fn list_targets(&self) -> Result<Vec<Target>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT name, protocol, address, host_key, labels, postgres, http FROM targets ORDER BY name",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], target_from_row)
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        Ok(rows)
    }

    async fn create_request(&self, r: NewRequest) -> Result<AccessRequestRow> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO requests (user_id, target, login, duration_secs, reason, ticket, state, \
                 created_at, expires_at, approvals_required, max_sessions, break_glass) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?10, ?11)",
                params![
                    r.user_id,
                    r.target,
                    r.login,
                    r.duration_secs,
                    r.reason,
                    r.ticket,
                    r.now,
                    r.expires_at,
                    r.approvals_required,
                    r.max_sessions,
                    r.break_glass
                ],
            )
            .map_err(db)?;
            let id = tx.last_insert_rowid();
            if r.break_glass {
                tx.execute(
                    "UPDATE requests SET state = 'approved', grant_start = ?1, \
                     grant_end = ?1 + duration_secs, decided_by = 'break-glass' WHERE id = ?2",
                    params![r.now, id],
                )
                .map_err(db)?;
                Self::bump_revision(&tx)?;
            }
            let row = Self::request_by_id(&tx, id)?;
            tx.commit().map_err(db)?;
            row.ok_or_else(|| StoreError::NotFound(format!("request {id}")))
        })
    }

    async fn request(&self, id: RequestId) -> Result<Option<AccessRequestRow>> {
        Self::request_by_id(&self.lock(), id)
    }

    async fn list_requests(&self, state: Option<RequestState>) -> Result<Vec<AccessRequestRow>> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests r JOIN users u ON u.id = r.user_id \
             WHERE ?1 IS NULL OR r.state = ?1 ORDER BY r.id"
        );
        let mut stmt = conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map([state.map(RequestState::as_str)], request_from_row)
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        Ok(rows)
    }

    async fn requests_for(
        &self,
        user: UserId,
        target: &str,
        login: &str,
    ) -> Result<Vec<AccessRequestRow>> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests r JOIN users u ON u.id = r.user_id \
             WHERE r.user_id = ?1 AND r.target = ?2 AND r.login = ?3 ORDER BY r.id DESC"
        );
        let mut stmt = conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map(params![user, target, login], request_from_row)
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        Ok(rows)
    }

    async fn approve_request(
        &self,
        id: RequestId,
        approver: &str,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<(AccessRequestRow, ApprovalOutcome)> {
        self.write(|conn| {
            // One transaction under the connection lock: concurrent approvals are
            // serialised, each counted once, and only one crosses the threshold.
            let tx = conn.transaction().map_err(db)?;
            let pending: Option<u32> = tx
                .query_row(
                    "SELECT approvals_required FROM requests \
                     WHERE id = ?1 AND state = 'pending' AND expires_at > ?2",
                    params![id, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(need) = pending else {
                return Err(StoreError::Stale(format!("request {id} is not pending")));
            };
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO approvals (request_id, approver, comment, at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, approver, comment, now],
                )
                .map_err(db)?;
            let have: u32 = tx
                .query_row(
                    "SELECT COUNT(*) FROM approvals WHERE request_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let outcome = if inserted == 0 {
                ApprovalOutcome::Duplicate
            } else if have >= need {
                tx.execute(
                    "UPDATE requests SET state = 'approved', grant_start = ?1, \
                     grant_end = ?1 + duration_secs, decided_by = ?2, comment = ?3 WHERE id = ?4",
                    params![now, approver, comment, id],
                )
                .map_err(db)?;
                Self::bump_revision(&tx)?;
                ApprovalOutcome::Granted
            } else {
                ApprovalOutcome::Counted { have, need }
            };
            let row = Self::request_by_id(&tx, id)?
                .ok_or_else(|| StoreError::NotFound(format!("request {id}")))?;
            tx.commit().map_err(db)?;
            Ok((row, outcome))
        })
    }

    async fn end_request(
        &self,
        id: RequestId,
        ending: Ending,
        by: &str,
        comment: Option<&str>,
        now: UnixTime,
    ) -> Result<AccessRequestRow> {
        self.write(|conn| {
            let n = conn
                .execute(
                    "UPDATE requests SET state = ?1, decided_by = ?2, comment = ?3, \
                     grant_end = CASE WHEN grant_end IS NULL THEN NULL ELSE MIN(grant_end, ?4) END \
                     WHERE id = ?5 AND state = ?6",
                    params![
                        ending.to_state().as_str(),
                        by,
                        comment,
                        now,
                        id,
                        ending.from_state().as_str()
                    ],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::Stale(format!(
                    "request {id} is not {}",
                    ending.from_state().as_str()
                )));
            }
            Self::bump_revision(conn)?;
            Self::request_by_id(conn, id)?
                .ok_or_else(|| StoreError::NotFound(format!("request {id}")))
        })
    }

    async fn expire_requests(&self, now: UnixTime) -> Result<Vec<AccessRequestRow>> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let ids: Vec<RequestId> = tx
                .prepare(
                    "SELECT id FROM requests WHERE (state = 'pending' AND expires_at <= ?1) \
                     OR (state = 'approved' AND grant_end <= ?1)",
                )
                .map_err(db)?
                .query_map([now], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db)?;
            let mut expired = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE requests SET state = 'expired', decided_by = 'system', comment = \
                     CASE WHEN grant_end IS NULL THEN 'nobody decided in time' ELSE 'grant ended' END \
                     WHERE id = ?1",
                    [id],
                )
                .map_err(db)?;
                expired.extend(Self::request_by_id(&tx, id)?);
            }
            if !expired.is_empty() {
                Self::bump_revision(&tx)?;
            }
            tx.commit().map_err(db)?;
            Ok(expired)
        })
    }

    async fn count_sessions(&self, grant: RequestId) -> Result<u32> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM sessions WHERE grant_id = ?1",
                [grant],
                |r| r.get(0),
            )
            .map_err(db)
    }

    async fn insert_session(&self, s: &SessionRow) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                    "INSERT INTO sessions (id, user, target, login, protocol, grant_id, started_at, recording) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![s.id, s.user, s.target, s.login, s.protocol, s.grant_id, s.started_at, s.recording],
                )
                .map_err(db)?;
            Ok(())
        })
    }

    async fn end_session(&self, id: &str, at: UnixTime, reason: &str) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3",
                params![at, reason, id],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    async fn list_sessions(&self) -> Result<Vec<SessionRow>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, user, target, login, protocol, grant_id, started_at, ended_at, \
                 end_reason, recording FROM sessions ORDER BY started_at, id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], session_from_row)
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        Ok(rows)
    }

    async fn revision(&self) -> Result<i64> {
        self.lock()
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })
            .map_err(db)
    }
}
