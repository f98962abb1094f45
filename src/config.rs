//! `drawbridge.toml`: every key optional, unknown keys are errors, paths are
//! relative to the file's folder (to the working directory for the embedded default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::util::serde_duration;

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub ssh: SshConfig,
    pub paths: PathsConfig,
    /// `[policy]`: the policy from signed Git commits (unset: the folder as it is).
    pub policy: crate::policy::git::config::PolicyConfig,
    pub certs: CertsConfig,
    pub login: LoginConfig,
    pub audit: AuditConfig,
    pub oidc: Vec<OidcConfig>,
    /// Shared state for several replicas (PostgreSQL); unset: files and memory.
    pub state: StateConfig,
    pub recording: RecordingConfig,
    /// The folder relative paths are resolved against (not a config key).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// `false` only behind a TLS-terminating proxy on loopback.
    pub tls: bool,
    /// Time allowed for the TLS handshake and the request headers (slowloris).
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
    /// Time allowed for a whole request, body and handler included.
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// Open HTTP connections at most; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open HTTP connections per client source (an IPv4 address or an IPv6 /64) at most;
    /// more are closed at accept.
    pub max_connections_per_source: usize,
    /// A connection with no request in progress is closed after this long (HTTP/1
    /// keep-alive, HTTP/2 with no open stream).
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// Principals of the bastion's host certificate.
    pub host_names: Vec<String>,
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    pub max_connections_per_user: usize,
    pub disconnect_on_cert_expiry: bool,
    /// Time from TCP accept to a successful authentication (sshd's LoginGraceTime).
    #[serde(with = "serde_duration")]
    pub login_grace_time: Duration,
    /// Connections not yet authenticated, in all (sshd's MaxStartups).
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated, per source (see `preauth_ipv4_prefix`).
    pub max_unauthenticated_per_source: usize,
    /// Pre-auth connections are counted per source: the client address cut to this many
    /// bits for IPv4 ...
    pub preauth_ipv4_prefix: u8,
    /// ... and this many for IPv6 (one host usually holds a whole /64).
    pub preauth_ipv6_prefix: u8,
    /// With this many pre-auth connections open the table is under pressure: each source
    /// gets at most its share, and more connections from a source that already holds
    /// some are dropped at random (sshd's MaxStartups `start`).
    pub preauth_drop_start: usize,
    /// The chance, in percent, of that drop at the start mark, rising to 100 at
    /// `max_unauthenticated` (sshd's MaxStartups `rate`).
    pub preauth_drop_rate: u8,
    /// Penalty added to a source for a connection that hits the login grace time.
    #[serde(with = "serde_duration")]
    pub penalty_grace: Duration,
    /// Penalty added to a source for a connection that ends unauthenticated after a
    /// refused authentication.
    #[serde(with = "serde_duration")]
    pub penalty_auth_failed: Duration,
    /// A source is penalized (refused while the table is under pressure) once at least
    /// this much penalty is left.
    #[serde(with = "serde_duration")]
    pub penalty_min: Duration,
    /// Penalties add up to at most this much.
    #[serde(with = "serde_duration")]
    pub penalty_max: Duration,
    /// Authentication attempts per connection (sshd's MaxAuthTries).
    pub max_auth_attempts: usize,
    /// Channels open at once on one connection.
    pub max_channels_per_connection: usize,
    /// Time allowed to dial a DMZ host.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, how long open forwards may go on before they are cut.
    #[serde(with = "serde_duration")]
    pub shutdown_grace: Duration,
    /// Addresses the bastion's connections to DMZ hosts come from. When a policy user has
    /// `source`, these are added to the certificate's `source-address`, because the DMZ
    /// host's sshd sees the bastion's address, not the user's (the bastion itself checks
    /// the user's real address). Empty: certificates carry only the user's networks.
    pub egress_addresses: Vec<ipnet::IpNet>,
    /// Cipher preference, e.g. `["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"]`.
    /// Empty means drawbridge's default list.
    pub ciphers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub ca: PathBuf,
    pub policies: PathBuf,
    pub audit: PathBuf,
    pub users: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    #[serde(with = "serde_duration")]
    pub default_ttl: Duration,
    #[serde(with = "serde_duration")]
    pub max_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Lifetime of a token from `POST /v1/login`.
    #[serde(with = "serde_duration")]
    pub token_ttl: Duration,
    /// Failed password attempts allowed per user and per client address in `window`.
    pub max_failures: u32,
    #[serde(with = "serde_duration")]
    pub window: Duration,
    /// Password hashes computed at once; more wait in a queue of `hash_queue`, then get 429.
    pub hash_workers: usize,
    pub hash_queue: usize,
    /// Niceness (0–19) of the hashing threads, so a storm of password logins yields the
    /// CPU to certificate issuance and forwarding instead of taking it from them.
    pub hash_nice: i32,
    /// Refuse password logins of users without TOTP (`drawbridge user totp NAME`).
    pub require_totp: bool,
    /// Device logins pending at once (all sources), and per source (an IPv4 address or an
    /// IPv6 /64).
    pub device_pending: usize,
    pub device_pending_per_source: usize,
    /// Device logins one source may start per minute.
    pub device_starts_per_minute: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Names this replica in every record (several replicas, one chain each).
    pub replica: String,
}

/// `[state]`: where replicas share the audit chains, login limits, connection counts and
/// open forwards. Every key optional; without `postgres` all of it stays in this process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `postgresql://user@host:port/db`: never with a password in it (refused at start);
    /// the password comes from `password_file` or the file named by `PGPASSFILE`.
    pub postgres: Option<String>,
    /// A file (relative to the config, mode 0600) holding the database password alone.
    pub password_file: Option<PathBuf>,
    /// This replica's name: its audit chain and its rows. Default `HOSTNAME:SSHPORT`.
    pub replica: Option<String>,
    /// How long a replica's rows (connections, forwards) outlive its last renewal; a
    /// replica renews every third of it, so a dead replica's rows expire within it.
    #[serde(with = "serde_duration")]
    pub lease: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            postgres: None,
            password_file: None,
            replica: None,
            lease: Duration::from_secs(15),
        }
    }
}

/// `[recording]`: where recorded sessions are written and what they hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// The folder of the recordings (`ID.cast`), created 0700 when missing.
    pub dir: PathBuf,
    /// Record keystrokes too. Off by default: a password typed at a prompt on the target
    /// would be in the recording.
    pub input: bool,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            dir: "var/sessions".into(),
            input: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    /// A file (relative to the config) or an `https://` URL, fetched and cached.
    pub jwks: String,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The OAuth client for the device login (`POST /v1/device`); unset: no device login
    /// through this provider.
    #[serde(default)]
    pub client_id: Option<String>,
    /// A file holding the client secret, for providers that want one (sent with HTTP
    /// Basic; never logged).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked for in the device login.
    #[serde(default = "default_device_scope")]
    pub device_scope: String,
}

fn default_device_scope() -> String {
    "openid email profile".into()
}

fn default_user_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8443).into(),
            tls: true,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_source: 64,
            idle_timeout: Duration::from_secs(15),
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 2222).into(),
            host_names: vec!["localhost".into(), "127.0.0.1".into()],
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections_per_user: 256,
            disconnect_on_cert_expiry: false,
            login_grace_time: Duration::from_secs(30),
            max_unauthenticated: 256,
            max_unauthenticated_per_source: 256,
            preauth_ipv4_prefix: 32,
            preauth_ipv6_prefix: 64,
            preauth_drop_start: 128,
            preauth_drop_rate: 30,
            penalty_grace: Duration::from_secs(20),
            penalty_auth_failed: Duration::from_secs(5),
            penalty_min: Duration::from_secs(15),
            penalty_max: Duration::from_secs(600),
            max_auth_attempts: 6,
            max_channels_per_connection: 10,
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            egress_addresses: Vec::new(),
            ciphers: Vec::new(),
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            ca: "ca".into(),
            policies: "policies".into(),
            audit: "var/audit.log".into(),
            users: "ca/users.toml".into(),
        }
    }
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(5 * 60),
            max_ttl: Duration::from_secs(60 * 60),
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(15 * 60),
            max_failures: 5,
            window: Duration::from_secs(5 * 60),
            hash_workers: 2,
            hash_queue: 32,
            hash_nice: 10,
            require_totp: false,
            device_pending: 1024,
            device_pending_per_source: 8,
            device_starts_per_minute: 10,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            replica: "drawbridge-1".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiConfig::default(),
            ssh: SshConfig::default(),
            paths: PathsConfig::default(),
            policy: Default::default(),
            certs: CertsConfig::default(),
            login: LoginConfig::default(),
            audit: AuditConfig::default(),
            oidc: Vec::new(),
            state: StateConfig::default(),
            recording: RecordingConfig::default(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Config {
    /// Reads `path`, or returns the embedded default (relative to the working
    /// directory) when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(config)
    }

    /// Parses and validates configuration text. Errors carry line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("{line}:{col}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", e.message())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.certs.default_ttl > self.certs.max_ttl {
            return Err(format!(
                "certs.default_ttl ({}) is above certs.max_ttl ({})",
                crate::util::format_duration(self.certs.default_ttl),
                crate::util::format_duration(self.certs.max_ttl)
            ));
        }
        if self.certs.default_ttl.is_zero() {
            return Err("certs.default_ttl must be above zero".into());
        }
        self.policy.validate()?;
        if self.ssh.host_names.is_empty() {
            return Err("ssh.host_names must name at least one host name or address".into());
        }
        if !self.api.tls && !self.api.listen.ip().is_loopback() {
            return Err(format!(
                "api.tls = false is allowed only on a loopback address (behind a TLS proxy); listen is {}",
                self.api.listen
            ));
        }
        for (what, n) in [
            (
                "ssh.max_connections_per_user",
                self.ssh.max_connections_per_user,
            ),
            ("ssh.max_unauthenticated", self.ssh.max_unauthenticated),
            (
                "ssh.max_unauthenticated_per_source",
                self.ssh.max_unauthenticated_per_source,
            ),
            ("ssh.max_auth_attempts", self.ssh.max_auth_attempts),
            (
                "ssh.max_channels_per_connection",
                self.ssh.max_channels_per_connection,
            ),
            ("login.hash_workers", self.login.hash_workers),
            ("api.max_connections", self.api.max_connections),
            (
                "api.max_connections_per_source",
                self.api.max_connections_per_source,
            ),
        ] {
            if n == 0 {
                return Err(format!("{what} must be at least 1"));
            }
        }
        if self.ssh.preauth_ipv4_prefix > 32 || self.ssh.preauth_ipv6_prefix > 128 {
            return Err(format!(
                "ssh.preauth_ipv4_prefix is {} and ssh.preauth_ipv6_prefix {}: at most 32 and 128",
                self.ssh.preauth_ipv4_prefix, self.ssh.preauth_ipv6_prefix
            ));
        }
        if self.ssh.preauth_drop_rate > 100 {
            return Err(format!(
                "ssh.preauth_drop_rate is {}: it is a percentage (0 to 100)",
                self.ssh.preauth_drop_rate
            ));
        }
        if !(0..=19).contains(&self.login.hash_nice) {
            return Err(format!(
                "login.hash_nice is {}: it must be between 0 (no change) and 19 (lowest priority)",
                self.login.hash_nice
            ));
        }
        for (i, o) in self.oidc.iter().enumerate() {
            if o.issuer.is_empty() || o.audience.is_empty() || o.jwks.is_empty() {
                return Err(format!(
                    "oidc[{i}]: issuer, audience and jwks must not be empty"
                ));
            }
        }
        Ok(())
    }

    /// Resolves a configured path against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.resolve(&self.paths.ca)
    }
    pub fn policies_dir(&self) -> PathBuf {
        self.resolve(&self.paths.policies)
    }
    pub fn audit_path(&self) -> PathBuf {
        self.resolve(&self.paths.audit)
    }
    pub fn users_path(&self) -> PathBuf {
        self.resolve(&self.paths.users)
    }
    /// The folder of session recordings (`[recording] dir`).
    pub fn recording_dir(&self) -> PathBuf {
        self.resolve(&self.recording.dir)
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.certs.default_ttl, Duration::from_secs(300));
        assert!(c.api.tls);
    }

    #[test]
    fn design_example_parses() {
        let c = Config::parse(
            r#"
[api]
listen = "127.0.0.1:8443"
tls    = true
[ssh]
listen     = "127.0.0.1:2222"
host_names = ["bastion.example.org", "localhost", "127.0.0.1"]
idle_timeout = "15m"
max_connections_per_user = 20
disconnect_on_cert_expiry = false
[paths]
ca = "ca"
policies = "policies"
audit = "var/audit.log"
users = "ca/users.toml"
[certs]
default_ttl = "5m"
max_ttl     = "1h"
[[oidc]]
issuer       = "https://idp.example.org"
audience     = "drawbridge"
jwks         = "ca/idp-jwks.json"
user_claim   = "email"
groups_claim = "groups"
"#,
        )
        .unwrap();
        assert_eq!(c.oidc.len(), 1);
        assert_eq!(c.ssh.idle_timeout, Duration::from_secs(900));
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = Config::parse("[ssh]\nlisten = \"127.0.0.1:2222\"\nidle_timout = \"1m\"\n")
            .unwrap_err();
        assert!(e.starts_with("3:1: "), "{e}");
        assert!(e.contains("idle_timout"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::parse("[certs]\ndefault_ttl = \"2h\"\n").is_err());
        assert!(Config::parse("[certs]\nmax_ttl = \"often\"\n").is_err());
        assert!(Config::parse("[api]\ntls = false\nlisten = \"0.0.0.0:8443\"\n").is_err());
        assert!(Config::parse("[api]\ntls = false\n").is_ok());
    }

    #[test]
    fn recording_keys_default_and_resolve_against_the_file() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.recording.dir, PathBuf::from("var/sessions"));
        assert!(!c.recording.input);
        let mut c = Config::parse("[recording]\ndir = \"rec\"\ninput = true\n").unwrap();
        c.base_dir = PathBuf::from("/etc/drawbridge");
        assert_eq!(c.recording_dir(), PathBuf::from("/etc/drawbridge/rec"));
        assert!(c.recording.input);
        assert!(Config::parse("[recording]\ninputs = true\n").is_err());
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
