//! The SSH front (russh): certificate authentication and `direct-tcpip` forwarding.
//!
//! # Layout
//!
//! | file | what it does |
//! |---|---|
//! | [`verify`] | the pure certificate check (`verify_certificate`): CA, type, window, principals, options, revocation |
//! | [`targets`] | inventory lookup for a `direct-tcpip` request, and the hosts a cert may reach (`hosts`) |
//! | `accept` | the accept loop: pre-auth caps at accept, one task per connection, shutdown |
//! | `connection` | one connection's lifecycle (login grace, eviction, certificate expiry and cut, shutdown) and its state |
//! | `handler` | the russh `Handler`, kept thin: authentication, session and forwarding requests |
//! | `commands` | the text of `whoami`, `hosts` and the help, as pure functions |
//! | `russh_config` | russh's configuration: algorithm policy, auth methods, channel limits |
//! | `killable` | the socket the bastion cuts from outside russh |
//! | `shared` | the state every connection shares, and the places given back on drop |
//! | `codes` | refusal codes besides the certificate check's |
//! | `forward` | per-request authorization under the policy loaded now, dialing, byte pumping |
//! | [`recorded`] | recorded sessions: the SSH server inside the channel, the client to the target, the relay |
//! | [`registry`] | the open forwards, and the live re-check that cuts those the policy in force no longer allows |
//!
//! # Invariants
//!
//! - Only a certificate that [`verify::verify_certificate`] accepts authenticates; plain
//!   keys, passwords and keyboard-interactive never do. The SSH user name grants nothing.
//! - The bastion dials only inventory addresses, and only after the policy loaded *at the
//!   time of the request* allows it and the `forward.opened` record is on disk.
//! - Any audit write failure refuses the action it was recording (fail closed).
//! - Nothing a peer sends can panic the process: no `unwrap`/`expect` on peer input.
//! - Memory per forward is bounded: 64 KiB copy buffers each way, and client→target data
//!   queued inside russh is bounded by `channel_buffer_size` packets (F11).
//!
//! # Decisions
//!
//! - **Target port.** A request for an inventory host on port 22 or on the host's own port
//!   is dialed at the inventory address and port: `ssh -J bastion web-1` sends port 22
//!   whatever web-1's real port is. Any other port is refused.
//! - **Per-forward decision.** Each `direct-tcpip` takes the policy in force at that moment.
//!   A certificate is all or nothing (the target's sshd honours every principal in it and
//!   the bastion cannot see the login): it must not be revoked or expired *now*, its key id
//!   must still hold **every** principal it carries (groups from `idp-groups@drawbridge`
//!   count as extra groups), each within its `max_ttl` against the certificate's age
//!   (now − valid_after − 60 s), and one of them must grant the host, which must resolve
//!   (exact name or exact address). A refusal names the role lost; it names no host the
//!   caller may not reach.
//! - **Live cut-off.** Open forwards are in a [`registry`]; every change of the policy in
//!   force (a reload, a temporary grant's `until`) re-checks them with the same rule,
//!   without the age, and cuts those no longer allowed (`forward.cut`, then
//!   `forward.closed` with `end = "cut"`). With `disconnect_on_cert_expiry`, a connection's
//!   forwards are cut (`forward.cut`, reason `certificate-expired`) and the connection
//!   closed at the certificate's `valid_before`.
//! - **Refusal messages.** Authentication refusals cannot carry text in SSH; the client sees
//!   `Permission denied (publickey)` and the reason goes to the audit log and metrics.
//!   Forward refusals carry the reason in the channel-open failure text (`ssh` prints it).
//!   Session requests (shell, exec other than `whoami`/`hosts`, subsystem) are answered
//!   with a message on stderr and exit status 1; pty, X11 and agent requests get a channel
//!   failure; `env` is ignored. Every refusal except `env` and the pre-auth cap is audited
//!   (authentication refusals past a per-source budget as counts, see [`refusal_budget`]).
//! - **Pre-auth places (F1).** A connection that gets no place among the unauthenticated
//!   ones ([`preauth`]: caps, fair shares per source prefix, random early drop, penalties)
//!   is closed at accept with no banner and no audit record (a flood must not drive the
//!   log), counted in `connections_dropped`. When the table is full, a connection from a
//!   source below its share displaces the oldest unauthenticated connection of the
//!   biggest holder.
//! - **Login grace (F2)** runs from accept to successful authentication, banner exchange
//!   included; the socket is cut from outside russh, so a stalled peer cannot hold it.
//! - **Idle timeout (F3)** is russh's `inactivity_timeout` (no keepalives, so an idle
//!   client is really closed, open forwards or not).
//! - **Shutdown (F9).** Stop accepting; unauthenticated and forward-less connections close at
//!   once; connections with forwards get `shutdown_grace`, then every forward is cut
//!   (`forward.closed` with `end = "shutdown"`) and `run` returns.
//! - **Algorithms.** Strict KEX stays on (checked at start); `ssh-rsa` (SHA-1) and DSA are
//!   refused for user keys and not offered for the host key; AES-GCM is offered after
//!   chacha20-poly1305 unless `ssh.ciphers` says otherwise (the client's order decides).
//!
//! # Certificates russh refuses on its own
//!
//! russh refuses a certificate outside its validity window, or whose signature does not
//! verify, *before* calling our handler, with only a `log` WARN ("Certificate is expired or
//! not yet valid", "Certificate signature is invalid"). [`lib_refusals`] captures those
//! events with a `tracing` layer (installed by `init_tracing` for `drawbridge serve`, and
//! by [`run`] itself when nothing was set up, e.g. in tests) and files them under the
//! tokio task that logged them; russh runs a connection's auth checks and handler calls in
//! one task, so the handler picks them up by its own task id and audits
//! `ssh.auth.failed` with reason `expired` (or `bad-signature`), `refused_by = "russh"`,
//! counted in the refusal metrics under that code:
//!
//! - on the next authentication request of the connection: for the OpenSSH client that is
//!   its fallback to the certificate's bare key, whose fingerprint (signature checked) the
//!   record carries as `key_fingerprint`, before the fallback's own `no-certificate`
//!   record; for a following certificate, the record has no fingerprint;
//! - otherwise when the connection ends (no fingerprint, and `ssh_user` empty if the
//!   client sent nothing else).
//!
//! Limits: the log line says nothing about the certificate, so these records carry no key
//! id, serial, CA or validity, and `expired` also covers "not yet valid". The fingerprint
//! is that of the key the client used *next*: it is the certificate's key for OpenSSH,
//! but a client could offer an unrelated key. russh checks the window before the
//! signature, so the client had not proved it held the certificate's key. If the capture
//! cannot be installed (another global `tracing` subscriber or `log` logger without the
//! layer), `run` logs a warning and these refusals are audited only as the fallback's
//! `no-certificate`, as before.

mod accept;
mod codes;
mod commands;
mod connection;
pub mod counts;
mod forward;
mod handler;
mod killable;
pub mod lib_refusals;
pub mod preauth;
mod quickack;
/// The per-source record budget now lives with the audit log, which the API shares.
pub use crate::audit::budget as refusal_budget;
pub mod recorded;
pub mod registry;
mod russh_config;
mod shards;
mod shared;
pub mod targets;
#[cfg(test)]
mod test_support;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::audit::Audit;
use crate::config::SshConfig;
use crate::policy::watch::PolicyStore;

pub use lib_refusals::capture_layer;
pub use verify::{CertIdentity, Refusal, TrustedCas, verify_certificate};

/// What the bastion needs from `ca/`: no CA private key.
///
/// Shaped like `crate::issuer::keys::BastionKeys` so `serve` can pass its fields across.
pub struct BastionKeysInput {
    /// User CA public keys trusted for authentication (several during a rotation).
    pub trusted_user_cas: Vec<ssh_key::PublicKey>,
    /// The bastion's host key.
    pub host_key: ssh_key::PrivateKey,
    /// The bastion's host certificate (signed by the host CA), presented to clients so
    /// they verify the bastion through one `@cert-authority` line.
    pub host_cert: Option<ssh_key::Certificate>,
}

impl std::fmt::Debug for BastionKeysInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BastionKeysInput")
            .field("trusted_user_cas", &self.trusted_user_cas.len())
            .field("host_key", &"***")
            .field("host_cert", &self.host_cert.is_some())
            .finish()
    }
}

/// Counters for `/metrics`. All monotonic except the `*_active` gauges.
#[derive(Debug, Default)]
pub struct BastionMetrics {
    /// TCP connections being served (authenticated or not).
    pub connections_active: AtomicU64,
    /// TCP connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections not yet authenticated.
    pub unauthenticated_active: AtomicU64,
    /// Connections dropped at accept by the pre-auth caps (F1).
    pub connections_dropped: AtomicU64,
    /// Connections closed at the login grace limit (F2).
    pub login_grace_expired: AtomicU64,
    /// `accept()` errors (EMFILE and friends).
    pub accept_errors: AtomicU64,
    /// Successful certificate authentications.
    pub auth_ok: AtomicU64,
    /// Forwards open now.
    pub forwards_active: AtomicU64,
    /// Forwards opened since start.
    pub forwards_total: AtomicU64,
    /// Bytes piped from SSH clients to DMZ hosts.
    pub bytes_client_to_target: AtomicU64,
    /// Bytes piped from DMZ hosts to SSH clients.
    pub bytes_target_to_client: AtomicU64,
    /// Refusals (authentication, forwards, sessions) by reason code.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl BastionMetrics {
    pub fn new() -> Arc<BastionMetrics> {
        Arc::new(BastionMetrics::default())
    }

    /// Counts one refusal under `code` (a stable, low-cardinality name).
    pub fn refused(&self, code: crate::audit::RefusalCode) {
        let mut m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(code.as_str()).or_insert(0) += 1;
    }

    /// Refusal counts by reason code, sorted by code.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        let m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Refusals counted under one code.
    pub fn refusals_of(&self, code: &str) -> u64 {
        let m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        m.get(code).copied().unwrap_or(0)
    }

    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn dec(c: &AtomicU64) {
        // Never wraps below zero, even on a bookkeeping bug.
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Everything [`run`] needs.
pub struct BastionParts {
    /// Where to accept SSH connections.
    pub listener: tokio::net::TcpListener,
    pub cfg: SshConfig,
    /// The longest certificate validity accepted, i.e. the global `certs.max_ttl` plus
    /// the issuer's 60 s backdating.
    pub max_cert_validity: Duration,
    pub keys: BastionKeysInput,
    /// Read afresh for every authentication and every forward.
    pub policy: Arc<PolicyStore>,
    /// Every accept and refusal is recorded before it takes effect.
    pub audit: Audit,
    pub metrics: Arc<BastionMetrics>,
    /// Turns true (or its sender is dropped) to stop the bastion.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Recorded sessions; `None`: a session that the policy says to record is refused.
    pub recording: Option<recorded::Setup>,
}

/// Runs the bastion on `parts.listener` until `parts.shutdown` turns true (or its sender
/// is dropped), then stops accepting, lets open forwards run for `cfg.shutdown_grace`,
/// cuts the rest and returns.
pub async fn run(parts: BastionParts) -> anyhow::Result<()> {
    run_with(parts, BastionState::default()).await
}

/// What the bastion keeps per process by default and shares across replicas with
/// `[state] postgres`: the per-user connection counts and the open forwards.
#[derive(Clone)]
pub struct BastionState {
    pub counts: Arc<dyn counts::ConnectionCounts>,
    pub registry: Arc<dyn registry::ForwardRegistry>,
}

impl Default for BastionState {
    fn default() -> Self {
        BastionState {
            counts: Arc::new(counts::MemoryCounts::default()),
            registry: Arc::new(registry::MemoryRegistry::default()),
        }
    }
}

/// [`run`] with the given shared state.
pub async fn run_with(parts: BastionParts, state: BastionState) -> anyhow::Result<()> {
    // Embedders and tests that set up no tracing still get russh's own certificate
    // refusals audited (`drawbridge serve` installs the layer in `init_tracing`).
    lib_refusals::ensure_installed();
    accept::run(parts, state).await
}
