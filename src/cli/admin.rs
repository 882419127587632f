//! `drawbridge user …` and `drawbridge target …`: run on the gateway host against
//! its state store (like `tctl` on a Teleport auth server). Changes reach live
//! sessions through the store's revision counter.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::identity::{self, TotpSecret};
use crate::proxy::ssh::{HostVerification, known_hosts_name};
use crate::secret::Secret;
use crate::store::{
    HeaderTemplate, HttpSettings, NewUser, PostgresSettings, SecretSource, SshKeyRow,
    StaticCredential, StaticLogin, Store, Target,
};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; prints their TOTP secret once.
    Add(UserAddArgs),
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their tokens die and their live sessions end at once.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
}

#[derive(Args)]
pub struct UserAddArgs {
    name: String,
    /// Group membership (repeatable), e.g. `--group approvers`.
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long)]
    admin: bool,
    /// Their email address, for apps that want it (`{email}` in `--header`).
    #[arg(long)]
    email: Option<String>,
    /// An OpenSSH public key file (repeatable).
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<PathBuf>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
}

// Parsed once per command run; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum TargetCommand {
    /// Register an SSH target (pinned host key), an HTTP app, or a PostgreSQL
    /// target (admin role).
    Add(TargetAddArgs),
    /// List targets.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct TargetAddArgs {
    name: String,
    /// What the target speaks.
    #[arg(long, default_value = "ssh", value_parser = ["ssh", "http", "postgres"])]
    protocol: String,
    /// host:port of the target's server (sshd, the HTTP app, PostgreSQL); an
    /// HTTP app may be `https://host:port`.
    #[arg(long)]
    address: String,
    #[command(flatten)]
    postgres: PostgresTargetArgs,
    // Boxed: the command enum would be mostly this struct's size otherwise.
    #[command(flatten)]
    http: Box<HttpTargetArgs>,
    /// SSH: the target's host public key (`ssh-ed25519 AAAA…`), pinned, or a
    /// known_hosts line (`@cert-authority * ssh-ed25519 AAAA…` trusts a host CA).
    /// Repeatable.
    #[arg(long)]
    host_key: Vec<String>,
    /// A file of such lines: the target's `ssh_host_ed25519_key.pub`, or a
    /// known_hosts file (lines naming other hosts are skipped). Repeatable.
    #[arg(long)]
    host_key_file: Vec<PathBuf>,
    /// SSH: a host CA's public key file; the target must present a host
    /// certificate it signed, naming the host of --address. Repeatable.
    #[arg(long)]
    host_ca_file: Vec<PathBuf>,
    /// A label (repeatable), e.g. `--label env=prod`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

/// PostgreSQL targets only. Passwords are never stored: the gateway reads them
/// from the variable or file each time it needs them.
#[derive(Args)]
pub struct PostgresTargetArgs {
    /// The role that creates and drops session roles (CREATEROLE, or superuser).
    #[arg(long)]
    admin_user: Option<String>,
    /// Environment variable (of the gateway process) holding the admin password.
    #[arg(long, conflicts_with = "admin_password_file")]
    admin_password_env: Option<String>,
    /// File holding the admin password (first line).
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// Static mode, where roles cannot be created: log in upstream as this role
    /// (for grants on exactly this role) instead of making session roles.
    #[arg(long, conflicts_with_all = ["admin_user", "admin_password_env", "admin_password_file"])]
    static_user: Option<String>,
    /// Environment variable (of the gateway process) holding the static role's password.
    #[arg(long, conflicts_with = "static_password_file")]
    static_password_env: Option<String>,
    /// File holding the static role's password (first line).
    #[arg(long)]
    static_password_file: Option<PathBuf>,
    /// Database used when the client names none, and for admin connections.
    #[arg(long)]
    database: Option<String>,
    /// Connect with TLS, verifying the target's certificate against this CA (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// `--X-password-env VAR` or `--X-password-file F` (made absolute).
fn secret_source(
    env: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<SecretSource>> {
    Ok(match (env, file) {
        (Some(var), _) => Some(SecretSource::Env(var)),
        (None, Some(path)) => Some(SecretSource::File(std::path::absolute(&path)?)),
        (None, None) => None,
    })
}

impl PostgresTargetArgs {
    fn is_empty(&self) -> bool {
        self.admin_user.is_none()
            && self.admin_password_env.is_none()
            && self.admin_password_file.is_none()
            && self.static_user.is_none()
            && self.static_password_env.is_none()
            && self.static_password_file.is_none()
            && self.database.is_none()
            && self.tls_ca.is_none()
    }

    fn settings(self) -> anyhow::Result<PostgresSettings> {
        let admin_password = secret_source(self.admin_password_env, self.admin_password_file)?;
        let static_password = secret_source(self.static_password_env, self.static_password_file)?;
        let static_login = match (self.static_user, static_password) {
            (Some(user), Some(password)) => Some(StaticLogin { user, password }),
            (Some(_), None) => anyhow::bail!(
                "--static-user needs --static-password-env VAR or --static-password-file FILE"
            ),
            (None, Some(_)) => anyhow::bail!("--static-password-* needs --static-user"),
            (None, None) => None,
        };
        if static_login.is_none() {
            anyhow::ensure!(
                self.admin_user.is_some(),
                "a PostgreSQL target needs --admin-user (or --static-user where roles cannot be created)"
            );
            anyhow::ensure!(
                admin_password.is_some(),
                "a PostgreSQL target needs --admin-password-env VAR or --admin-password-file FILE"
            );
        }
        let tls_ca = match self.tls_ca {
            Some(ca) => {
                // Checked now so a typo fails here, not at the first session.
                crate::proxy::postgres::tls::client_config(&ca).map_err(anyhow::Error::msg)?;
                Some(std::path::absolute(&ca)?)
            }
            None => None,
        };
        Ok(PostgresSettings {
            admin_user: self.admin_user,
            admin_password,
            database: self.database,
            tls_ca,
            static_login,
        })
    }
}

/// HTTP targets only: what the app is told about its caller. Secrets are never
/// stored: the gateway reads them from the variable or file when a session opens.
#[derive(Args)]
pub struct HttpTargetArgs {
    /// Do not send the signed assertion (`X-Drawbridge-Assertion`).
    #[arg(long)]
    no_assertion: bool,
    /// A header rendered for each caller (repeatable): `NAME=TEMPLATE` with
    /// {user}, {email}, {groups}, {login}, {target}. Replaces the default
    /// X-Forwarded-User and X-Forwarded-Groups.
    #[arg(long = "header", value_parser = parse_header_template)]
    headers: Vec<HeaderTemplate>,
    /// Send no identity headers at all (the assertion still goes, unless turned off).
    #[arg(long, conflicts_with = "headers")]
    no_identity_headers: bool,
    /// A static credential for the app: HTTP basic with this user...
    #[arg(long, conflicts_with_all = ["bearer_env", "bearer_file"])]
    basic_user: Option<String>,
    /// ...and the password in this environment variable of the gateway...
    #[arg(long, conflicts_with = "basic_password_file")]
    basic_password_env: Option<String>,
    /// ...or in this file (first line).
    #[arg(long)]
    basic_password_file: Option<PathBuf>,
    /// A static bearer token for the app, from this environment variable...
    #[arg(long, conflicts_with = "bearer_file")]
    bearer_env: Option<String>,
    /// ...or from this file (first line).
    #[arg(long)]
    bearer_file: Option<PathBuf>,
    /// Record request and response bodies: the first BYTES of each (default 64 KiB).
    #[arg(long, num_args = 0..=1, default_missing_value = "65536", value_name = "BYTES")]
    record_bodies: Option<u64>,
}

impl HttpTargetArgs {
    fn is_empty(&self) -> bool {
        !self.no_assertion
            && self.headers.is_empty()
            && !self.no_identity_headers
            && self.basic_user.is_none()
            && self.basic_password_env.is_none()
            && self.basic_password_file.is_none()
            && self.bearer_env.is_none()
            && self.bearer_file.is_none()
            && self.record_bodies.is_none()
    }

    /// The settings for an app at `address` (`host:port`, `http://…` or
    /// `https://…`); returns them with the bare `host:port`.
    fn settings(
        self,
        address: &str,
        tls_ca: Option<PathBuf>,
    ) -> anyhow::Result<(String, HttpSettings)> {
        let (address, tls) = http_address(address, tls_ca.is_some())?;
        let tls_ca = match tls_ca {
            Some(ca) => {
                // Checked now so a typo fails here, not at the first session.
                crate::proxy::postgres::tls::client_config(&ca).map_err(anyhow::Error::msg)?;
                Some(std::path::absolute(&ca)?)
            }
            None => None,
        };
        for template in &self.headers {
            crate::proxy::http::inject::validate(template)?;
        }
        let headers = if self.no_identity_headers {
            Some(Vec::new())
        } else {
            (!self.headers.is_empty()).then_some(self.headers)
        };
        let credential = static_credential(
            self.basic_user,
            secret_source(self.basic_password_env, self.basic_password_file)?,
            secret_source(self.bearer_env, self.bearer_file)?,
        )?;
        anyhow::ensure!(
            self.record_bodies != Some(0),
            "--record-bodies needs a positive number of bytes"
        );
        let settings = HttpSettings {
            tls,
            tls_ca,
            assertion: !self.no_assertion,
            headers,
            credential,
            record_bodies: self.record_bodies,
        };
        Ok((address, settings))
    }
}

/// `host:port` and whether to use TLS, from `host:port`, `http://host[:port]`
/// or `https://host[:port]`; a bare address with a CA means TLS.
fn http_address(address: &str, has_ca: bool) -> anyhow::Result<(String, bool)> {
    let (rest, tls, default_port) = if let Some(rest) = address.strip_prefix("https://") {
        (rest, true, 443)
    } else if let Some(rest) = address.strip_prefix("http://") {
        anyhow::ensure!(!has_ca, "--tls-ca needs an https:// address");
        (rest, false, 80)
    } else {
        (address, has_ca, if has_ca { 443 } else { 80 })
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    anyhow::ensure!(
        !rest.is_empty() && !rest.contains(['/', '?', '#', '@']),
        "an HTTP target's address is host:port or http(s)://host:port, without a path (got {address:?})"
    );
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
    let address = if has_port {
        rest.to_string()
    } else {
        format!("{rest}:{default_port}")
    };
    Ok((address, tls))
}

fn static_credential(
    basic_user: Option<String>,
    basic_password: Option<SecretSource>,
    bearer: Option<SecretSource>,
) -> anyhow::Result<Option<StaticCredential>> {
    Ok(match (basic_user, basic_password, bearer) {
        (Some(user), Some(password), None) => Some(StaticCredential::Basic { user, password }),
        (None, None, Some(token)) => Some(StaticCredential::Bearer { token }),
        (None, None, None) => None,
        (Some(_), None, _) => anyhow::bail!(
            "--basic-user needs --basic-password-env VAR or --basic-password-file FILE"
        ),
        (None, Some(_), _) => anyhow::bail!("--basic-password-* needs --basic-user"),
        (Some(_), Some(_), Some(_)) => {
            anyhow::bail!("a target has one static credential: basic or bearer, not both")
        }
    })
}

fn parse_header_template(s: &str) -> Result<HeaderTemplate, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or("headers look like NAME=TEMPLATE, e.g. X-Forwarded-Email={email}")?;
    Ok(HeaderTemplate {
        name: name.trim().to_string(),
        value: value.to_string(),
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("labels look like key=value")?;
    if k.is_empty() {
        return Err("label key is empty".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn read_password_stdin() -> anyhow::Result<Secret<String>> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let password = input.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(!password.is_empty(), "empty password on standard input");
    Ok(Secret::new(password))
}

pub async fn user(config: &Config, command: UserCommand) -> anyhow::Result<ExitCode> {
    let store = crate::gateway::open_store(config)?;
    match command {
        UserCommand::Add(args) => add_user(store.as_ref(), args).await?,
        UserCommand::List { json: true } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&store.list_users().await?)?
            );
        }
        UserCommand::List { json: false } => {
            for u in store.list_users().await? {
                let state = if u.disabled { " (disabled)" } else { "" };
                let admin = if u.admin { " admin" } else { "" };
                println!("{}{admin}{state}\tgroups: {}", u.name, u.groups.join(","));
            }
        }
        UserCommand::Disable { name } => {
            store
                .set_user_disabled(&name, true, crate::time::now())
                .await?;
            println!(
                "user {name} disabled; their tokens are revoked and live sessions end within a second"
            );
        }
        UserCommand::Enable { name } => {
            store
                .set_user_disabled(&name, false, crate::time::now())
                .await?;
            println!("user {name} enabled");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn add_user(store: &dyn Store, args: UserAddArgs) -> anyhow::Result<()> {
    if let Some(email) = &args.email {
        // It ends up in headers: no spaces or control characters.
        anyhow::ensure!(
            email.contains('@') && !email.chars().any(|c| c.is_whitespace() || c.is_control()),
            "--email {email:?} is not an email address"
        );
    }
    let mut ssh_keys = Vec::new();
    for path in &args.ssh_keys {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let key = crate::keys::parse_public_key(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        ssh_keys.push(SshKeyRow {
            openssh: key.to_openssh()?,
            fingerprint: identity::fingerprint(&key),
        });
    }
    let (password_hash, totp) = if args.password_stdin {
        let password = read_password_stdin()?;
        let hash = identity::hash_password(&password).map_err(anyhow::Error::msg)?;
        (
            Some(hash),
            Some(TotpSecret::generate().map_err(anyhow::Error::msg)?),
        )
    } else {
        (None, None)
    };
    let user = store
        .create_user(NewUser {
            name: args.name.clone(),
            groups: args.groups,
            admin: args.admin,
            email: args.email,
            password_hash,
            totp_secret: totp.as_ref().map(|t| t.bytes().to_vec()),
            ssh_keys,
        })
        .await?;
    println!(
        "created user {} (groups: {})",
        user.name,
        user.groups.join(",")
    );
    match totp {
        Some(secret) => {
            // Shown once, to the admin enrolling the user; never logged.
            println!("TOTP secret: {}", secret.base32());
            println!("TOTP URI: {}", secret.uri(&user.name));
        }
        None => {
            println!("no password set: this user can use SSH keys but cannot `drawbridge login`")
        }
    }
    Ok(())
}

/// Every host key source given, as known_hosts text: `--host-key` lines,
/// `--host-key-file` contents and `--host-ca-file` keys as `@cert-authority`.
fn host_key_lines(args: &TargetAddArgs) -> anyhow::Result<String> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let mut lines = args.host_key.clone();
    for path in &args.host_key_file {
        lines.push(read(path)?);
    }
    for path in &args.host_ca_file {
        let text = read(path)?;
        let key = crate::keys::parse_public_key(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        lines.push(format!("@cert-authority * {}", key.to_openssh()?));
    }
    Ok(lines.join("\n"))
}

/// The known_hosts lines that apply to the target at `address`, normalised.
fn ssh_host_keys(args: &TargetAddArgs) -> anyhow::Result<(String, String)> {
    let text = host_key_lines(args)?;
    anyhow::ensure!(
        !text.trim().is_empty(),
        "a host key or host CA is required (--host-key, --host-key-file or --host-ca-file): Drawbridge never trusts a target on first use"
    );
    let name = known_hosts_name(&args.address);
    let (stored, skipped) = HostVerification::select(&text, &name).map_err(anyhow::Error::msg)?;
    let mut described = HostVerification::parse(&stored)
        .map_err(anyhow::Error::msg)?
        .describe();
    if skipped > 0 {
        described.push_str(&format!("; {skipped} line(s) for other hosts skipped"));
    }
    Ok((stored, described))
}

async fn add_ssh_target(store: &dyn Store, args: TargetAddArgs) -> anyhow::Result<()> {
    let (host_key, described) = ssh_host_keys(&args)?;
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    store
        .create_target(Target {
            name: args.name.clone(),
            protocol: args.protocol.clone(),
            address: args.address,
            host_key,
            labels,
            postgres: None,
            http: None,
        })
        .await?;
    println!("created ssh target {} ({described})", args.name);
    Ok(())
}

async fn add_http_target(store: &dyn Store, mut args: TargetAddArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.host_key.is_empty() && args.host_key_file.is_empty() && args.host_ca_file.is_empty(),
        "--host-key and --host-ca-file are for SSH targets; an https:// app is verified with --tls-ca"
    );
    let tls_ca = args.postgres.tls_ca.take();
    anyhow::ensure!(
        args.postgres.is_empty(),
        "--admin-user, --admin-password-* and --database need --protocol postgres"
    );
    let (address, settings) = (*args.http).settings(&args.address, tls_ca)?;
    let tls = match (&settings.tls, &settings.tls_ca) {
        (false, _) => "plain HTTP upstream",
        (true, Some(_)) => "TLS verified against the given CA",
        (true, None) => "TLS verified against the system's CAs",
    };
    store
        .create_target(Target {
            name: args.name.clone(),
            protocol: "http".into(),
            address,
            host_key: String::new(),
            labels: args.labels.into_iter().collect(),
            postgres: None,
            http: Some(settings),
        })
        .await?;
    println!(
        "created http target {} ({tls}; reached at https://{}.<apps domain>:<https port>/)",
        args.name, args.name
    );
    Ok(())
}

pub async fn target(config: &Config, command: TargetCommand) -> anyhow::Result<ExitCode> {
    let store = crate::gateway::open_store(config)?;
    match command {
        TargetCommand::Add(args) if args.protocol == "postgres" => {
            add_postgres_target(store.as_ref(), args).await?
        }
        TargetCommand::Add(args) if args.protocol == "http" => {
            add_http_target(store.as_ref(), args).await?
        }
        TargetCommand::Add(args) => {
            anyhow::ensure!(
                args.postgres.is_empty(),
                "--admin-user, --admin-password-*, --static-*, --database and --tls-ca need --protocol postgres (--tls-ca also suits --protocol http)"
            );
            anyhow::ensure!(
                args.http.is_empty(),
                "--header, --basic-*, --bearer-*, --no-assertion, --no-identity-headers and --record-bodies need --protocol http"
            );
            add_ssh_target(store.as_ref(), args).await?
        }
        TargetCommand::List { json: true } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&store.list_targets().await?)?
            );
        }
        TargetCommand::List { json: false } => {
            for t in store.list_targets().await? {
                let labels: Vec<String> =
                    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let scheme = match &t.http {
                    Some(http) if http.tls => "https://",
                    _ => "",
                };
                println!(
                    "{}\t{}\t{scheme}{}\t{}",
                    t.name,
                    t.protocol,
                    t.address,
                    labels.join(",")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn add_postgres_target(store: &dyn Store, args: TargetAddArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.host_key.is_empty() && args.host_key_file.is_empty() && args.host_ca_file.is_empty(),
        "--host-key and --host-ca-file are for SSH targets; a PostgreSQL target is verified with --tls-ca"
    );
    anyhow::ensure!(
        args.http.is_empty(),
        "--header, --basic-*, --bearer-*, --no-assertion, --no-identity-headers and --record-bodies need --protocol http"
    );
    let settings = args.postgres.settings()?;
    let tls = if settings.tls_ca.is_some() {
        "TLS verified against the given CA"
    } else {
        "no TLS upstream"
    };
    let login = match &settings.static_login {
        Some(fixed) => format!("static login as {}", fixed.user),
        None => "session roles".to_string(),
    };
    store
        .create_target(Target {
            name: args.name.clone(),
            protocol: "postgres".into(),
            address: args.address,
            host_key: String::new(),
            labels: args.labels.into_iter().collect(),
            postgres: Some(settings),
            http: None,
        })
        .await?;
    println!("created PostgreSQL target {} ({tls}; {login})", args.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addresses_say_whether_to_use_tls() {
        let ok = |a: &str, ca: bool| http_address(a, ca).expect(a);
        assert_eq!(
            ok("127.0.0.1:3000", false),
            ("127.0.0.1:3000".into(), false)
        );
        assert_eq!(ok("127.0.0.1:9443", true), ("127.0.0.1:9443".into(), true));
        assert_eq!(
            ok("https://app.internal", false),
            ("app.internal:443".into(), true)
        );
        assert_eq!(ok("https://[::1]:9443/", true), ("[::1]:9443".into(), true));
        assert_eq!(
            ok("http://app.internal", false),
            ("app.internal:80".into(), false)
        );
        for (bad, ca, why) in [
            (
                "http://127.0.0.1:3000",
                true,
                "--tls-ca needs an https:// address",
            ),
            ("https://127.0.0.1:9443/admin", false, "without a path"),
            ("https://", false, "without a path"),
        ] {
            let e = http_address(bad, ca).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_static_credential_is_basic_or_bearer_and_complete() {
        let env = |v: &str| Some(SecretSource::Env(v.into()));
        assert!(matches!(
            static_credential(Some("svc".into()), env("PW"), None),
            Ok(Some(StaticCredential::Basic { .. }))
        ));
        assert!(matches!(
            static_credential(None, None, env("TOKEN")),
            Ok(Some(StaticCredential::Bearer { .. }))
        ));
        assert!(static_credential(Some("svc".into()), None, None).is_err());
        assert!(static_credential(None, env("PW"), None).is_err());
        assert!(static_credential(Some("svc".into()), env("PW"), env("TOKEN")).is_err());
    }
}
