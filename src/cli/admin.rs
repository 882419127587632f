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
use crate::proxy::ssh::parse_host_key;
use crate::secret::Secret;
use crate::store::{
    NewUser, PostgresSettings, SecretSource, SshKeyRow, StaticLogin, Store, Target,
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
    /// Register an SSH target (pinned host key) or a PostgreSQL target (admin role).
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
    /// host:port of the target's server (sshd, the HTTP app, PostgreSQL).
    #[arg(long)]
    address: String,
    #[command(flatten)]
    postgres: PostgresTargetArgs,
    /// SSH: the target's host public key (`ssh-ed25519 AAAA…`), pinned.
    #[arg(long, conflicts_with = "host_key_file")]
    host_key: Option<String>,
    /// A file holding the target's host public key.
    #[arg(long)]
    host_key_file: Option<PathBuf>,
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

async fn add_target(store: &dyn Store, args: TargetAddArgs) -> anyhow::Result<()> {
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let (host_key, described) = if args.protocol == "ssh" {
        let host_key = match (args.host_key, args.host_key_file) {
            (Some(k), _) => k,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            (None, None) => anyhow::bail!(
                "a pinned host key is required (--host-key or --host-key-file): Drawbridge never trusts a target on first use"
            ),
        };
        let key = parse_host_key(&host_key).map_err(anyhow::Error::msg)?;
        (
            key.to_openssh()?,
            format!("host key {}", identity::fingerprint(&key)),
        )
    } else {
        (
            String::new(),
            "reached at https://NAME.<apps domain>:<https port>/".to_string(),
        )
    };
    store
        .create_target(Target {
            name: args.name.clone(),
            protocol: args.protocol.clone(),
            address: args.address,
            host_key,
            labels,
            postgres: None,
        })
        .await?;
    println!(
        "created {} target {} ({described})",
        args.protocol, args.name
    );
    Ok(())
}

pub async fn target(config: &Config, command: TargetCommand) -> anyhow::Result<ExitCode> {
    let store = crate::gateway::open_store(config)?;
    match command {
        TargetCommand::Add(args) if args.protocol == "postgres" => {
            add_postgres_target(store.as_ref(), args).await?
        }
        TargetCommand::Add(args) => {
            anyhow::ensure!(
                args.postgres.is_empty(),
                "--admin-user, --admin-password-*, --static-*, --database and --tls-ca need --protocol postgres"
            );
            add_target(store.as_ref(), args).await?
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
                println!(
                    "{}\t{}\t{}\t{}",
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
        args.host_key.is_none() && args.host_key_file.is_none(),
        "--host-key is for SSH targets; a PostgreSQL target is verified with --tls-ca"
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
        })
        .await?;
    println!("created PostgreSQL target {} ({tls}; {login})", args.name);
    Ok(())
}
