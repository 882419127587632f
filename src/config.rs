//! The gateway's configuration: a TOML file whose every field has a default, so
//! `drawbridge serve` runs with no file at all. Parsed once at the edge into typed
//! values (`SocketAddr`, `Duration`, `PathBuf`); nothing else reads TOML.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::time::serde_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SQLite state and the gateway's keys.
    pub data_dir: PathBuf,
    /// One tamper-evident log per session.
    pub recordings_dir: PathBuf,
    /// Cedar schema and policies; built-in defaults when absent.
    pub policies_dir: PathBuf,
    pub ssh: SshConfig,
    pub postgres: PostgresConfig,
    pub api: ApiConfig,
    pub http: HttpConfig,
    pub access: AccessConfig,
    pub notify: NotifyConfig,
    pub recording: RecordingConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Apps are reached at `https://TARGET.<apps_domain>:<api port>/`; `localhost`
    /// resolves to loopback in browsers and curl.
    pub apps_domain: String,
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response headers (504 after).
    #[serde(with = "serde_duration")]
    pub response_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            apps_domain: "localhost".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// `[[notify.webhooks]]` entries.
    pub webhooks: Vec<crate::notify::WebhookConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// Validity of the certificate minted for each upstream login.
    #[serde(with = "serde_duration")]
    pub upstream_cert_ttl: Duration,
    /// How long to wait for a target to accept TCP and finish the SSH handshake.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Environment variables a client may pass to the target (`SendEnv`): exact
    /// names, or a prefix ending in `*` (`LC_*`). Others are dropped.
    pub env_allow: Vec<String>,
    /// A session that carries no byte for this long is ended; "0s" turns it off.
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    /// No session lasts longer than this, whatever its grant; "0s" turns it off.
    #[serde(with = "serde_duration")]
    pub max_session: Duration,
    /// Interactive sessions are warned this long before their grant ends.
    #[serde(with = "serde_duration")]
    pub grant_end_warning: Duration,
    /// How long an interactive connection without a grant waits for approvers
    /// after filing a request from the prompt.
    #[serde(with = "serde_duration")]
    pub request_wait: Duration,
    /// Validity of the user certificates `drawbridge login` has signed for
    /// engineers' own keys (the gateway's SSH front trusts them, targets do not).
    #[serde(with = "serde_duration")]
    pub user_cert_validity: Duration,
    /// Ciphers offered to engineers' clients, which pick by their own order.
    pub ciphers: SshCiphers,
    /// Record what engineers send on terminals and commands (keystrokes, a
    /// command's stdin). Off, it is counted but not kept, for teams that must
    /// not store passwords typed at prompts; output is recorded either way.
    pub record_input: bool,
    /// Most bytes of each command's stdin (a channel without a terminal) kept in
    /// the recording; the rest is counted. `None` ("unlimited") keeps all of it.
    #[serde(with = "byte_limit")]
    pub command_input_limit: Option<u64>,
}

/// `command_input_limit = 1048576` or `"unlimited"`.
mod byte_limit {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Limit {
        Bytes(u64),
        Word(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Limit::deserialize(d)? {
            Limit::Bytes(n) => Ok(Some(n)),
            Limit::Word(w) if w == "unlimited" => Ok(None),
            Limit::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a number of bytes or \"unlimited\", not {w:?}"
            ))),
        }
    }
}

/// The SSH front's cipher offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SshCiphers {
    /// Everything russh offers, ChaCha20-Poly1305 included. OpenSSH clients list
    /// ChaCha20-Poly1305 first, so they choose it.
    #[default]
    Default,
    /// AES-256-GCM and AES-128-GCM only: with AES-NI about a fifth less gateway
    /// CPU per byte than ChaCha20-Poly1305. Every OpenSSH since 6.2 and PuTTY since
    /// 0.76 has them; a client configured without them cannot connect.
    AesGcm,
}

impl SshConfig {
    /// Whether the client may set the environment variable `name` upstream.
    pub fn env_allowed(&self, name: &str) -> bool {
        self.env_allow
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub listen: SocketAddr,
    /// Development only: accept clients without TLS when they connect from a
    /// loopback address (their token would otherwise cross the network in clear).
    pub allow_plaintext_loopback: bool,
    /// How long to wait for a target to accept TCP and finish logging in, and for
    /// admin connections that create and drop session roles.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// A session that carried no byte for this long, with no statement running,
    /// is ended with a FATAL error saying so; "0s" turns it off.
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    /// A client has this long from connecting to sending its password (as
    /// PostgreSQL's `authentication_timeout`), so a stalled client cannot hold
    /// a connection open before it has logged in.
    #[serde(with = "serde_duration")]
    pub login_timeout: Duration,
    /// After relaying, keep polling the sessions' sockets this long before
    /// sleeping (see the README's PostgreSQL performance notes); it spends idle
    /// CPU to save a wake-up per round trip. "auto" (the default) measures at
    /// startup whether wake-ups here cost enough for that to pay; "0s" turns
    /// it off.
    pub busy_poll: BusyPollSetting,
    /// What a Bind's note in the recording says about its parameters.
    pub bind_parameters: BindParameters,
    /// A Bind of a statement whose text contains one of these words
    /// (case-insensitive) records `***` for every value.
    pub mask_parameters_of: Vec<String>,
}

/// How Bind notes show parameter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindParameters {
    /// Each value, decoded where its type is known, masked per statement.
    Values,
    /// Only how many there are.
    Count,
}

/// `busy_poll`: a window, or "auto".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BusyPollSetting {
    Auto,
    Window(Duration),
}

impl TryFrom<String> for BusyPollSetting {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "auto" {
            return Ok(BusyPollSetting::Auto);
        }
        crate::time::parse_duration(&s).map(BusyPollSetting::Window)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTPS: REST API, web UI and HTTP apps.
    pub listen: SocketAddr,
    /// A client has this long to finish its TLS handshake and to send each
    /// request's headers; an HTTP/1.1 connection idle this long between
    /// requests is closed too (nginx's `client_header_timeout`).
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Lifetime of the token `drawbridge login` hands out.
    #[serde(with = "serde_duration")]
    pub login_token_ttl: Duration,
    /// Longest grant anyone may ask for.
    #[serde(with = "serde_duration")]
    pub max_grant: Duration,
    /// How often live sessions are re-checked against the store, so changes made by
    /// another process (the local admin CLI, another gateway) reach them.
    #[serde(with = "serde_duration")]
    pub enforce_interval: Duration,
    /// A request nobody decides on within this time expires.
    #[serde(with = "serde_duration")]
    pub request_ttl: Duration,
    /// How often the policy folder is checked for changes (SIGHUP reloads at once).
    #[serde(with = "serde_duration")]
    pub policy_reload_interval: Duration,
    /// Failed logins (API password+TOTP, SSH key) tolerated per user name
    /// within `auth_failure_window` before further attempts are refused.
    pub max_auth_failures_per_user: usize,
    /// The same per source address (usually higher: NAT, shared jump hosts).
    pub max_auth_failures_per_address: usize,
    #[serde(with = "serde_duration")]
    pub auth_failure_window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Sign a checkpoint and sync the file after this many records...
    pub checkpoint_records: u64,
    /// ...or this long after the last checkpoint when records are pending. A crash loses
    /// at most what follows the last checkpoint.
    #[serde(with = "serde_duration")]
    pub checkpoint_interval: Duration,
    /// Bytes a session's recording queue may hold before the session is ended (fail
    /// closed): the disk is not keeping up.
    pub queue_bytes: usize,
}

impl RecordingConfig {
    pub fn policy(&self) -> crate::recording::CheckpointPolicy {
        crate::recording::CheckpointPolicy {
            every_records: self.checkpoint_records,
            interval: self.checkpoint_interval,
        }
    }
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(1),
            queue_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "data".into(),
            recordings_dir: "recordings".into(),
            policies_dir: "policies".into(),
            ssh: SshConfig::default(),
            postgres: PostgresConfig::default(),
            api: ApiConfig::default(),
            http: HttpConfig::default(),
            access: AccessConfig::default(),
            notify: NotifyConfig::default(),
            recording: RecordingConfig::default(),
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            upstream_cert_ttl: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            env_allow: vec!["LANG".into(), "LC_*".into(), "TERM".into()],
            idle_timeout: Duration::from_secs(30 * 60),
            max_session: Duration::from_secs(12 * 3600),
            grant_end_warning: Duration::from_secs(5 * 60),
            request_wait: Duration::from_secs(5 * 60),
            user_cert_validity: Duration::from_secs(12 * 3600),
            ciphers: SshCiphers::Default,
            record_input: true,
            command_input_limit: Some(1024 * 1024),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            allow_plaintext_loopback: false,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
            login_timeout: Duration::from_secs(60),
            busy_poll: BusyPollSetting::Auto,
            bind_parameters: BindParameters::Values,
            mask_parameters_of: [
                "password",
                "passwd",
                "secret",
                "token",
                "credential",
                "crypt",
                "api_key",
                "apikey",
                "private_key",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            header_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            login_token_ttl: Duration::from_secs(8 * 3600),
            max_grant: Duration::from_secs(8 * 3600),
            enforce_interval: Duration::from_millis(250),
            request_ttl: Duration::from_secs(3600),
            policy_reload_interval: Duration::from_secs(2),
            max_auth_failures_per_user: 5,
            max_auth_failures_per_address: 20,
            auth_failure_window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// The file at `path`, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.into(),
                    message: e.to_string(),
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Reports every problem at once rather than the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.ssh.upstream_cert_ttl > Duration::from_secs(300) {
            problems.push("ssh.upstream_cert_ttl must be at most 5m".to_string());
        }
        if self.ssh.upstream_cert_ttl < Duration::from_secs(30) {
            problems.push("ssh.upstream_cert_ttl must be at least 30s".to_string());
        }
        if self.ssh.user_cert_validity < Duration::from_secs(60)
            || self.ssh.user_cert_validity > Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("ssh.user_cert_validity must be between 1m and 7d".to_string());
        }
        if self.access.enforce_interval > Duration::from_secs(1) {
            problems.push("access.enforce_interval must be at most 1s".to_string());
        }
        if self.http.apps_domain.is_empty() || self.http.apps_domain.contains(['/', ':', ' ']) {
            problems.push(format!(
                "http.apps_domain {:?} must be a bare domain name",
                self.http.apps_domain
            ));
        }
        if self.access.request_ttl.is_zero() {
            problems.push("access.request_ttl must be positive".to_string());
        }
        for hook in &self.notify.webhooks {
            if !hook.url.starts_with("http://") && !hook.url.starts_with("https://") {
                problems.push(format!(
                    "notify.webhooks: url must be http:// or https:// (got {:?})",
                    hook.url
                ));
            }
        }
        if self.postgres.login_timeout.is_zero() {
            problems.push("postgres.login_timeout must be positive".to_string());
        }
        if self.api.header_timeout.is_zero() {
            problems.push("api.header_timeout must be positive".to_string());
        }
        if self.postgres.connect_timeout.is_zero() {
            problems.push("postgres.connect_timeout must be positive".to_string());
        }
        if self.access.max_auth_failures_per_user == 0
            || self.access.max_auth_failures_per_address == 0
        {
            problems.push("access.max_auth_failures_* must be at least 1".to_string());
        }
        if self.access.max_grant.is_zero() {
            problems.push("access.max_grant must be positive".to_string());
        }
        let rec = &self.recording;
        if rec.checkpoint_records == 0 {
            problems.push("recording.checkpoint_records must be at least 1".to_string());
        }
        if rec.checkpoint_interval < Duration::from_millis(1)
            || rec.checkpoint_interval > Duration::from_secs(60)
        {
            problems.push("recording.checkpoint_interval must be between 1ms and 60s".to_string());
        }
        if rec.queue_bytes == 0 {
            problems.push("recording.queue_bytes must be positive".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_listeners() {
        let c = Config::load(None).expect("defaults are valid");
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.postgres.listen.to_string(), "127.0.0.1:6432");
        assert!(!c.postgres.allow_plaintext_loopback);
        assert_eq!(c.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn a_file_overrides_and_every_problem_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[ssh]\nlisten = \"127.0.0.1:0\"\nupstream_cert_ttl = \"1h\"\n[access]\nenforce_interval = \"5s\"\n",
        )
        .expect("write");
        let err = Config::load(Some(&path)).expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("upstream_cert_ttl"), "{msg}");
        assert!(msg.contains("enforce_interval"), "{msg}");
    }

    #[test]
    fn busy_polling_is_auto_by_default_or_takes_a_window() {
        assert_eq!(Config::default().postgres.busy_poll, BusyPollSetting::Auto);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        for (value, parsed) in [
            ("auto", BusyPollSetting::Auto),
            ("150us", BusyPollSetting::Window(Duration::from_micros(150))),
            ("0s", BusyPollSetting::Window(Duration::ZERO)),
        ] {
            std::fs::write(&path, format!("[postgres]\nbusy_poll = \"{value}\"\n")).expect("write");
            let c = Config::load(Some(&path)).expect("valid");
            assert_eq!(c.postgres.busy_poll, parsed);
        }
        std::fs::write(&path, "[postgres]\nbusy_poll = \"sometimes\"\n").expect("write");
        let err = Config::load(Some(&path)).expect_err("invalid").to_string();
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn bind_parameters_are_values_or_a_count_and_the_mask_words_replace_the_defaults() {
        let defaults = Config::default().postgres;
        assert_eq!(defaults.bind_parameters, BindParameters::Values);
        assert!(
            defaults
                .mask_parameters_of
                .contains(&"password".to_string())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[postgres]\nbind_parameters = \"count\"\nmask_parameters_of = [\"ssn\"]\n",
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("valid");
        assert_eq!(c.postgres.bind_parameters, BindParameters::Count);
        assert_eq!(c.postgres.mask_parameters_of, ["ssn"]);
        std::fs::write(&path, "[postgres]\nbind_parameters = \"all\"\n").expect("write");
        assert!(
            Config::load(Some(&path)).is_err(),
            "an unknown mode is refused"
        );
    }

    #[test]
    fn the_env_allow_list_takes_names_and_prefixes() {
        let c = Config::default();
        assert!(c.ssh.env_allowed("LANG"));
        assert!(c.ssh.env_allowed("LC_ALL"));
        assert!(!c.ssh.env_allowed("LANGUAGE"));
        assert!(!c.ssh.env_allowed("LD_PRELOAD"));
    }

    #[test]
    fn the_command_input_limit_is_bytes_or_unlimited() {
        assert_eq!(Config::default().ssh.command_input_limit, Some(1 << 20));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        for (value, parsed) in [
            ("65536", Some(Some(65536))),
            ("\"unlimited\"", Some(None)),
            ("\"lots\"", None),
        ] {
            std::fs::write(&path, format!("[ssh]\ncommand_input_limit = {value}\n"))
                .expect("write");
            let loaded = Config::load(Some(&path)).ok();
            assert_eq!(loaded.map(|c| c.ssh.command_input_limit), parsed, "{value}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[ssh]\nlisten_addr = \"127.0.0.1:0\"\n").expect("write");
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
    }
}
