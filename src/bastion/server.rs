//! The accept loop and the russh `Handler`: authentication, sessions and refusals.
//! Forwarding itself lives in `forward.rs`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::task::AtomicWaker;
use russh::keys::ssh_key::{self, Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Preferred, SshId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::lib_refusals::{self, LibRefusal};
use super::preauth;
use super::refusal_budget::{self, Budget};
use super::targets;
use super::verify::{
    CertIdentity, TrustedCas, check_security_key_flags, security_key_flags, verify_certificate,
};
use super::{BastionKeysInput, BastionMetrics};
use crate::audit::{Audit, Event};
use crate::config::SshConfig;
use crate::policy::watch::PolicyStore;
use crate::util::escape;

/// Refusal codes used here besides [`super::Refusal::code`].
pub(super) mod code {
    pub const NO_CERTIFICATE: &str = "no-certificate";
    pub const WEAK_ALGORITHM: &str = "weak-algorithm";
    pub const TOO_MANY_CONNECTIONS: &str = "too-many-connections";
    pub const TOO_MANY_CHANNELS: &str = "too-many-channels";
    pub const AUDIT_UNAVAILABLE: &str = "audit-unavailable";
    pub const SESSION: &str = "session-refused";
    pub const REMOTE_FORWARD: &str = "remote-forward";
    pub const STREAMLOCAL: &str = "streamlocal";
}

/// russh's per-channel queue of client data not yet read by us, in packets (of up to
/// [`MAX_CHANNEL_PACKET`]): 32 × 32 KiB = 1 MiB per forward at most (F11). When it is
/// full russh stops reading the connection, so TCP pushes back on the client.
const CHANNEL_BUFFER_PACKETS: usize = 32;

/// The maximum packet size we announce for our channels (RFC 4254 §5.1): the most data
/// one CHANNEL_DATA may carry. russh does not enforce it (it takes up to its 256 KiB
/// transport limit), so [`Handler::data`] does: a client sending more is disconnected,
/// or one forward could hold 32 × 256 KiB = 8 MiB in russh's queue (THREATS row 20).
const MAX_CHANNEL_PACKET: u32 = 32 * 1024;

/// State shared by every connection.
pub(super) struct Shared {
    pub cfg: SshConfig,
    pub max_validity: Duration,
    pub trusted: TrustedCas,
    pub policy: Arc<PolicyStore>,
    pub audit: Audit,
    pub metrics: Arc<BastionMetrics>,
    /// Turns true when open forwards must be cut (shutdown grace is over).
    pub cut: watch::Receiver<bool>,
    /// The open forwards, re-checked whenever the policy in force changes.
    pub registry: Arc<dyn super::registry::ForwardRegistry>,
    users: Mutex<HashMap<String, usize>>,
    unauth: Arc<preauth::Table>,
    /// Refusal records per source (see `refusal_budget`).
    refusals: Budget,
    next_conn: AtomicU64,
}

/// One place among the unauthenticated connections ([`preauth`]); given back on drop.
pub(super) struct UnauthSlot {
    shared: Arc<Shared>,
    slot: preauth::Slot,
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        BastionMetrics::dec(&self.shared.metrics.unauthenticated_active);
    }
}

/// One of a user's connections; given back on drop.
pub(super) struct UserSlot {
    shared: Arc<Shared>,
    key_id: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut u = self.shared.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = u.get_mut(&self.key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.key_id);
            }
        }
    }
}

impl Shared {
    fn take_unauth_slot(self: &Arc<Self>, ip: IpAddr) -> Result<UnauthSlot, preauth::Refused> {
        let slot = self
            .unauth
            .admit(ip, std::time::Instant::now(), preauth::roll())?;
        BastionMetrics::inc(&self.metrics.unauthenticated_active);
        Ok(UnauthSlot {
            shared: self.clone(),
            slot,
        })
    }

    fn take_user_slot(self: &Arc<Self>, key_id: &str) -> Option<UserSlot> {
        let mut u = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let n = u.entry(key_id.to_string()).or_insert(0);
        if *n >= self.cfg.max_connections_per_user {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            shared: self.clone(),
            key_id: key_id.to_string(),
        })
    }

    /// Writes an audit record; `false` (and a log line) when the log cannot be written.
    pub async fn record(&self, event: Event) -> bool {
        match self.audit.record(event).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "audit write failed; refusing");
                false
            }
        }
    }
}

/// Builds russh's configuration from ours.
pub(super) fn russh_config(
    cfg: &SshConfig,
    host_key: ssh_key::PrivateKey,
    host_cert: Option<Certificate>,
) -> anyhow::Result<russh::server::Config> {
    let cipher = if cfg.ciphers.is_empty() {
        vec![
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_256_CTR,
        ]
    } else {
        let allowed = [
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_256_CTR,
        ];
        let mut out = Vec::new();
        for name in &cfg.ciphers {
            match allowed.iter().find(|a| a.as_ref() == name.as_str()) {
                Some(n) => out.push(*n),
                None => anyhow::bail!(
                    "ssh.ciphers: unknown or refused cipher {name:?} (allowed: {})",
                    allowed
                        .iter()
                        .map(|a| a.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        out
    };
    // Host and user key algorithms: no SHA-1 RSA (`ssh-rsa`), no DSA (row 13).
    let key: Vec<ssh_key::Algorithm> = Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| {
            !matches!(
                a,
                ssh_key::Algorithm::Rsa { hash: None } | ssh_key::Algorithm::Dsa
            )
        })
        .cloned()
        .collect();
    // Strict KEX (Terrapin, row 21): russh's default KEX list carries
    // `kex-strict-s-v00@openssh.com`; keep it and fail loudly if it ever goes away.
    let kex = Preferred::DEFAULT.kex.clone();
    if !kex.contains(&russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER) {
        anyhow::bail!("russh's default KEX list lost strict KEX; refusing to start");
    }
    if let Some(c) = &host_cert
        && c.public_key() != host_key.public_key().key_data()
    {
        anyhow::bail!("the bastion host certificate is not for the bastion host key");
    }
    Ok(russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-drawbridge")),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: host_cert.into_iter().collect(),
        inactivity_timeout: Some(cfg.idle_timeout),
        keepalive_interval: None,
        max_auth_attempts: cfg.max_auth_attempts,
        nodelay: true,
        channel_buffer_size: CHANNEL_BUFFER_PACKETS,
        maximum_packet_size: MAX_CHANNEL_PACKET,
        preferred: Preferred {
            kex,
            key: Cow::Owned(key),
            cipher: Cow::Owned(cipher),
            ..Preferred::DEFAULT
        },
        ..Default::default()
    })
}

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    // A dropped sender counts as "shut down": nobody can stop us otherwise.
    let _ = rx.wait_for(|v| *v).await;
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    listener: tokio::net::TcpListener,
    cfg: SshConfig,
    max_validity: Duration,
    keys: BastionKeysInput,
    policy: Arc<PolicyStore>,
    audit: Audit,
    metrics: Arc<BastionMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let trusted = TrustedCas::new(&keys.trusted_user_cas);
    if trusted.is_empty() {
        anyhow::bail!("the bastion has no trusted user CA key");
    }
    let config = Arc::new(russh_config(&cfg, keys.host_key, keys.host_cert)?);
    let (cut_tx, cut_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let grace = cfg.shutdown_grace;
    let unauth = preauth::Table::new(preauth::Limits::from_config(&cfg));
    let shared = Arc::new(Shared {
        cfg,
        max_validity,
        trusted,
        policy,
        audit,
        metrics: metrics.clone(),
        cut: cut_rx,
        registry: Arc::new(super::registry::MemoryRegistry::default()),
        users: Mutex::new(HashMap::new()),
        unauth,
        refusals: Budget::default(),
        next_conn: AtomicU64::new(1),
    });
    info!(listen = ?listener.local_addr().ok(), "bastion listening");
    let (recheck_stop, recheck_stop_rx) = watch::channel(false);
    let rechecks = tokio::spawn(super::registry::run_rechecks(
        shared.registry.clone(),
        shared.policy.clone(),
        shared.audit.clone(),
        recheck_stop_rx,
    ));
    let stop_rechecks = move || {
        let _ = recheck_stop.send(true);
        rechecks.abort();
    };

    let flusher = tokio::spawn(flush_refusals_every_second(shared.clone()));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    BastionMetrics::inc(&metrics.connections_total);
                    let slot = match shared.take_unauth_slot(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refused) => {
                            // F1: no place among the pre-auth connections (see `preauth`):
                            // drop at once; no audit record (that would let a flood drive
                            // the log), a metric instead.
                            BastionMetrics::inc(&metrics.connections_dropped);
                            metrics.refused(refused.code());
                            debug!(%peer, reason = refused.code(), "no pre-auth place; connection dropped");
                            drop(socket);
                            continue;
                        }
                    };
                    conns.spawn(serve_connection(
                        shared.clone(),
                        config.clone(),
                        socket,
                        peer,
                        slot,
                        drain_rx.clone(),
                    ));
                }
                Err(e) => {
                    // EMFILE and friends: shed load, keep serving (russh's own loop would
                    // return here).
                    BastionMetrics::inc(&metrics.accept_errors);
                    warn!(error = %e, "accept failed; pausing briefly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    // Shutdown: stop accepting, ask connections to finish, let forwards run for the grace.
    drop(listener);
    info!(connections = conns.len(), "bastion shutting down");
    let _ = drain_tx.send(true);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            next = conns.join_next() => if next.is_none() { break },
        }
    }
    let _ = cut_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    stop_rechecks();
    flusher.abort();
    flush_refusals(&shared).await;
    Ok(())
}

/// Writes the refusals counted rather than recorded ([`refusal_budget`]): one
/// `ssh.auth.failed.repeated` record per source and reason.
async fn flush_refusals(shared: &Shared) {
    for c in shared.refusals.take_counted() {
        let ev = Event::new("ssh.auth.failed.repeated")
            .with("source", c.source.to_string())
            .with("reason", c.reason)
            .with("repeats", c.repeats)
            .with("since", crate::util::rfc3339(c.since));
        let _ = shared.record(ev).await;
    }
}

async fn flush_refusals_every_second(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(refusal_budget::FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush_refusals(&shared).await;
    }
}

/// A socket that can be cut from outside: once [`Kill::kill`] runs, every read and write
/// fails, so russh's session task ends even when the peer stalls mid-handshake.
struct Killable<S> {
    inner: S,
    kill: Arc<Kill>,
}

#[derive(Default)]
pub(super) struct Kill {
    killed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Kill {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.read.wake();
        self.write.wake();
    }
    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by the bastion",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.kill.read.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.kill.write.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Gauge<'a>(&'a AtomicU64);
impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        BastionMetrics::dec(self.0);
    }
}

/// Serves one TCP connection: the login grace timer (F2), certificate expiry (optional)
/// and graceful shutdown around russh's session task.
async fn serve_connection(
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    socket: TcpStream,
    peer: SocketAddr,
    slot: UnauthSlot,
    mut drain: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.clone();
    BastionMetrics::inc(&metrics.connections_active);
    let _active = Gauge(&metrics.connections_active);
    if let Err(e) = socket.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    let grace_deadline = tokio::time::Instant::now() + shared.cfg.login_grace_time;
    let kill = Arc::new(Kill::default());
    let stream = Killable {
        inner: socket,
        kill: kill.clone(),
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (auth_tx, mut auth_rx) = watch::channel::<Option<SystemTime>>(None);
    let forwards = Arc::new(AtomicUsize::new(0));
    // Cancelled when a connection from a source below its share takes this place.
    let evicted = slot.slot.eviction();
    // Set when the policy in force no longer lets this connection's certificate stand
    // (revoked, a role lost): the connection ends with the reason, which the client shows.
    let (cert_cut, mut cert_cut_rx) = watch::channel::<Option<String>>(None);
    let cert_cut = Arc::new(cert_cut);
    let handler = Connection {
        cert_cut: cert_cut.clone(),
        shared: shared.clone(),
        peer,
        conn,
        unauth: Some(slot),
        user_slot: None,
        identity: None,
        auth_tx,
        channels: Arc::new(AtomicUsize::new(0)),
        forwards: forwards.clone(),
        sessions: HashMap::new(),
        ssh_user: String::new(),
        lib_refusals: Vec::new(),
    };

    let started = tokio::select! {
        r = tokio::time::timeout_at(
            grace_deadline,
            russh::server::run_stream(config, stream, handler),
        ) => r,
        _ = evicted.cancelled() => {
            metrics.refused(preauth::EVICTED);
            debug!(%peer, "pre-auth place given to a fairer source; connection closed");
            return;
        }
    };
    let session = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "SSH setup failed");
            return;
        }
        Err(_) => {
            BastionMetrics::inc(&metrics.login_grace_expired);
            debug!(%peer, "no SSH banner within the login grace time");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);

    let mut valid_before: Option<SystemTime> = None;
    let mut draining = false;
    let reason: String = loop {
        let authenticated = valid_before.is_some();
        let expiry = valid_before
            .filter(|_| shared.cfg.disconnect_on_cert_expiry)
            .map(|t| {
                let left = t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::Instant::now() + left
            });
        tokio::select! {
            ended = &mut session => {
                // Protocol errors (a malformed packet, THREATS row 20) end the session
                // here; debug only, so a flood of them cannot drive the log.
                if let Err(e) = ended {
                    debug!(%peer, conn, error = %e, "SSH session ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(grace_deadline), if !authenticated => {
                BastionMetrics::inc(&metrics.login_grace_expired);
                break "login grace time exceeded".to_string();
            }
            _ = evicted.cancelled(), if !authenticated => {
                metrics.refused(preauth::EVICTED);
                break "pre-auth place given to a fairer source".to_string();
            }
            changed = auth_rx.changed(), if !authenticated => {
                if changed.is_err() { return; }
                valid_before = *auth_rx.borrow_and_update();
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or(grace_deadline)), if expiry.is_some() => {
                let cut = super::registry::Cut {
                    code: "certificate-expired",
                    rule: format!(
                        "ssh.disconnect_on_cert_expiry: the certificate expired at {}",
                        valid_before.map(crate::util::rfc3339).unwrap_or_default()
                    ),
                    principal: None,
                    message: "your certificate expired".to_string(),
                    policy_version: shared.policy.current().version.clone(),
                };
                super::registry::cut_connection(shared.registry.as_ref(), &shared.audit, conn, cut)
                    .await;
                break "certificate expired".to_string();
            }
            changed = cert_cut_rx.changed() => {
                // `cert_cut` is alive until this function returns: never an error here.
                if changed.is_ok()
                    && let Some(message) = cert_cut_rx.borrow_and_update().clone()
                {
                    break message;
                }
            }
            _ = shutdown_requested(&mut drain), if !draining => {
                if !authenticated || forwards.load(Ordering::SeqCst) == 0 {
                    break "bastion shutting down".to_string();
                }
                draining = true;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if draining => {
                if forwards.load(Ordering::SeqCst) == 0 || *shared.cut.borrow() {
                    break "bastion shutting down".to_string();
                }
            }
        }
    };
    debug!(%peer, conn, %reason, "closing connection");
    if valid_before.is_some() {
        // Tell an authenticated client why, then cut whatever happens.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            handle.disconnect(
                russh::Disconnect::ByApplication,
                reason.clone(),
                "en".into(),
            ),
        )
        .await;
    }
    // Forwards cut with their certificate end once the reason has gone to the client.
    for f in shared.registry.open() {
        if f.conn == conn {
            f.signal();
        }
    }
    if valid_before.is_some() {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut session).await;
    }
    kill.kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
}

/// One SSH connection's handler.
pub(super) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn: u64,
    unauth: Option<UnauthSlot>,
    user_slot: Option<UserSlot>,
    identity: Option<Arc<CertIdentity>>,
    auth_tx: watch::Sender<Option<SystemTime>>,
    /// Ends the connection with a message (see `serve_connection`).
    cert_cut: Arc<watch::Sender<Option<String>>>,
    /// Channels open on this connection (sessions and forwards), for the F4 cap.
    channels: Arc<AtomicUsize>,
    /// Forwards open on this connection (for graceful shutdown).
    forwards: Arc<AtomicUsize>,
    sessions: HashMap<ChannelId, ChannelSlot>,
    /// The SSH user name given by the client, escaped: logged, grants nothing.
    ssh_user: String,
    /// Certificates russh refused on this connection before calling us, not audited yet
    /// (see `lib_refusals`).
    lib_refusals: Vec<LibRefusal>,
}

impl Drop for Connection {
    /// Audits what russh refused on its own and nothing after it reported: a client that
    /// offered only an expired certificate and left. The session task drops its handler,
    /// so this still runs in that task.
    fn drop(&mut self) {
        self.collect_lib_refusals();
        if self.lib_refusals.is_empty() {
            return;
        }
        let events: Vec<Event> = std::mem::take(&mut self.lib_refusals)
            .into_iter()
            .filter_map(|r| self.lib_refusal_event(r, None))
            .collect();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!(peer = %self.peer, "certificate refusals lost: no runtime to audit them");
            return;
        };
        let shared = self.shared.clone();
        rt.spawn(async move {
            for e in events {
                let _ = shared.record(e).await;
            }
        });
    }
}

/// Returns one channel place on drop.
pub(super) struct ChannelSlot(Arc<AtomicUsize>);
impl Drop for ChannelSlot {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
    }
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

fn shown_user(user: &str) -> String {
    crate::util::shown(user)
}

impl Connection {
    /// Moves the certificate refusals russh made in this session's task (before calling
    /// us) into `lib_refusals`. Call first in every authentication method.
    fn collect_lib_refusals(&mut self) {
        let room = lib_refusals::MAX_PER_TASK.saturating_sub(self.lib_refusals.len());
        self.lib_refusals
            .extend(lib_refusals::take_current().into_iter().take(room));
    }

    /// The `ssh.auth.failed` record for one of russh's own refusals, counted in the
    /// metrics. russh logs nothing about the certificate, so the record has no key id,
    /// serial or window; `key` is the key the client authenticated with next on this
    /// connection, if any (the OpenSSH client retries with the certificate's own key).
    /// `None` when the source's refusals are being counted rather than recorded.
    fn lib_refusal_event(
        &self,
        refusal: LibRefusal,
        key: Option<&ssh_key::PublicKey>,
    ) -> Option<Event> {
        let code = refusal.code();
        self.shared.metrics.refused(code);
        if let Some(u) = &self.unauth {
            u.slot.auth_refused();
        }
        if !self.record_refusal_now(code) {
            return None;
        }
        info!(peer = %self.peer, user = %self.ssh_user, code, "SSH certificate refused by russh");
        let mut e = self
            .event("ssh.auth.failed")
            .with("reason", code)
            .with("message", refusal.message())
            .with("refused_by", "russh");
        if let Some(key) = key {
            e = e.with(
                "key_fingerprint",
                key.fingerprint(HashAlg::Sha256).to_string(),
            );
        }
        Some(e)
    }

    /// Whether a refusal with `code` is recorded now, or counted for this source's next
    /// `ssh.auth.failed.repeated` (see `refusal_budget`).
    fn record_refusal_now(&self, code: &'static str) -> bool {
        let source = self.shared.unauth.source(self.peer.ip());
        let now = self
            .shared
            .refusals
            .record_now(source, code, std::time::Instant::now());
        if !now {
            debug!(peer = %self.peer, code, "SSH refusal counted, not recorded");
        }
        now
    }

    /// Audits the pending russh refusals now (see [`Self::lib_refusal_event`]).
    async fn audit_lib_refusals(&mut self, key: Option<&ssh_key::PublicKey>) {
        self.collect_lib_refusals();
        for refusal in std::mem::take(&mut self.lib_refusals) {
            if let Some(e) = self.lib_refusal_event(refusal, key) {
                let _ = self.shared.record(e).await;
            }
        }
    }

    /// Disconnects a client whose CHANNEL_DATA is longer than [`MAX_CHANNEL_PACKET`], the
    /// most we announced (RFC 4254 §5.2; russh has already queued that one packet).
    fn check_packet_size(&self, len: usize, session: &mut Session) -> Result<(), russh::Error> {
        if len <= MAX_CHANNEL_PACKET as usize {
            return Ok(());
        }
        debug!(
            peer = %self.peer,
            conn = self.conn,
            len,
            "channel data larger than the maximum packet size; disconnecting"
        );
        session.disconnect(
            russh::Disconnect::ProtocolError,
            &format!(
                "channel data of {len} bytes exceeds the maximum packet size {MAX_CHANNEL_PACKET}"
            ),
            "en",
        )
    }

    fn take_channel(&self) -> Option<ChannelSlot> {
        let max = self.shared.cfg.max_channels_per_connection;
        self.channels
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v < max).then_some(v + 1)
            })
            .ok()
            .map(|_| ChannelSlot(self.channels.clone()))
    }

    /// Fields every record about this connection carries.
    fn event(&self, kind: &str) -> Event {
        let mut e = Event::new(kind)
            .with("conn", self.conn)
            .with("peer", self.peer.to_string())
            .with("ssh_user", &self.ssh_user);
        if let Some(id) = &self.identity {
            e = e
                .with_peer("key_id", &id.key_id)
                .with("serial", id.serial)
                .with("key_fingerprint", &id.key_fingerprint)
                .with("ca_fingerprint", &id.ca_fingerprint);
        }
        e
    }

    async fn refuse_auth(&self, code: &'static str, message: &str, extra: Event) -> Auth {
        self.shared.metrics.refused(code);
        if let Some(u) = &self.unauth {
            // Counts towards the source's penalty if the connection never authenticates.
            u.slot.auth_refused();
        }
        if !self.record_refusal_now(code) {
            return reject();
        }
        info!(peer = %self.peer, user = %self.ssh_user, code, "SSH authentication refused");
        let mut e = self.event("ssh.auth.failed");
        e.fields.extend(extra.fields);
        let _ = self
            .shared
            .record(e.with("reason", code).with("message", message))
            .await;
        reject()
    }

    /// Counts a refused session request (pty, x11, agent, shell, ...) and audits it.
    async fn note_session_refusal(&self, request: &str) {
        self.shared.metrics.refused(code::SESSION);
        let _ = self
            .shared
            .record(
                self.event("ssh.session.refused")
                    .with("request", request)
                    .with("reason", code::SESSION),
            )
            .await;
    }

    /// Counts a refused forwarding request and audits it with `fields`.
    async fn note_forward_refusal(&self, reason: &'static str, fields: Event) {
        self.shared.metrics.refused(reason);
        let _ = self.shared.record(fields.with("reason", reason)).await;
    }

    /// Refuses a session request with a message the user sees on stderr, exit status 1.
    async fn refuse_session(
        &mut self,
        channel: ChannelId,
        request: &str,
        message: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.note_session_refusal(request).await;
        session.channel_success(channel)?;
        session.extended_data(
            channel,
            1,
            format!("drawbridge: {message}\r\n").into_bytes(),
        )?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    fn help(&self) -> String {
        "this bastion runs no shell or commands; it only forwards (ssh -J bastion HOST, ssh -W). \
         Try `ssh bastion whoami` or `ssh bastion hosts`."
            .to_string()
    }

    fn whoami(&self, id: &CertIdentity) -> String {
        let now = SystemTime::now();
        let left = id
            .valid_before
            .duration_since(now)
            .map(|d| crate::util::format_duration(Duration::from_secs(d.as_secs())))
            .unwrap_or_else(|_| "expired".into());
        format!(
            "key id:      {}\nprincipals:  {}\ngroups:      {}\nserial:      {}\nexpires:     {} (in {})\nreason:      {}\nfrom:        {}\n",
            escape(&id.key_id),
            id.principals
                .iter()
                .map(|p| escape(p))
                .collect::<Vec<_>>()
                .join(", "),
            if id.groups.is_empty() {
                "-".to_string()
            } else {
                id.groups
                    .iter()
                    .map(|g| escape(g))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            id.serial,
            crate::util::rfc3339(id.valid_before),
            left,
            id.reason
                .as_deref()
                .map(escape)
                .unwrap_or_else(|| "-".into()),
            self.peer.ip(),
        )
    }

    fn hosts(&self, id: &CertIdentity) -> String {
        let policy = self.shared.policy.current();
        let now = SystemTime::now();
        // A certificate is all or nothing: one that no longer stands reaches nothing.
        let carried = crate::policy::Carried {
            key_id: &id.key_id,
            serial: id.serial,
            key_fingerprint: &id.key_fingerprint,
            principals: &id.principals,
            idp_groups: &id.idp_groups,
        };
        if let Err(lost) = policy.still_holds(&carried, now, Some(id.age(now))) {
            return format!("no hosts: {}\n", lost.message());
        }
        let list = targets::reachable(&policy, &id.key_id, &id.idp_groups, &id.principals, now);
        if list.is_empty() {
            return "no hosts: your certificate's principals grant none under the current policy\n"
                .into();
        }
        let mut out = String::new();
        for r in list {
            out.push_str(&format!(
                "{}\tlogins: {}\t(via {})\n",
                escape(r.host),
                r.logins.join(", "),
                r.principals.join(", ")
            ));
        }
        out
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Cannot tell a certificate from a bare key here (CRATE-NOTES): accept both, decide
        // in auth_publickey / auth_openssh_certificate_signed. Only weak algorithms stop here.
        self.ssh_user = shown_user(user);
        self.collect_lib_refusals();
        if matches!(
            offer.algorithm,
            ssh_key::Algorithm::Dsa | ssh_key::Algorithm::Rsa { hash: None }
        ) {
            // Audited like every other refusal (THREATS row 13). The key is only offered
            // here, not proven: the record says so by its `offered` field.
            let extra = Event::new("")
                .with("algorithm", escape(offer.algorithm.as_str()))
                .with(
                    "key_fingerprint",
                    offer.public_key.fingerprint(HashAlg::Sha256).to_string(),
                )
                .with("offered", true);
            return Ok(self
                .refuse_auth(
                    code::WEAK_ALGORITHM,
                    "signature algorithm not accepted (no DSA, no SHA-1 ssh-rsa); use \
                     ssh-ed25519, ecdsa, or RSA with rsa-sha2-256/512",
                    extra,
                )
                .await);
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ssh_user = shown_user(user);
        // The OpenSSH client's fallback after russh refused its certificate: audit that
        // refusal first, with this (signature-checked) key's fingerprint.
        self.audit_lib_refusals(Some(key.public_key)).await;
        let extra = Event::new("").with(
            "key_fingerprint",
            key.public_key.fingerprint(HashAlg::Sha256).to_string(),
        );
        Ok(self
            .refuse_auth(
                code::NO_CERTIFICATE,
                "a plain key is not accepted; get a certificate from drawbridge",
                extra,
            )
            .await)
    }

    // Only this method authenticates certificates: it sees the signature, so a security
    // key's flags are checked. The signature-less `auth_openssh_certificate` keeps russh's
    // default, which refuses.
    async fn auth_openssh_certificate_signed(
        &mut self,
        user: &str,
        cert: &Certificate,
        signature: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ssh_user = shown_user(user);
        self.audit_lib_refusals(None).await;
        let policy = self.shared.policy.current();
        let now = SystemTime::now();
        let sk_flags = security_key_flags(cert, signature.sk.map(|sk| sk.flags));
        let verdict = verify_certificate(
            cert,
            &self.shared.trusted,
            &policy,
            self.peer.ip(),
            now,
            self.shared.max_validity,
        )
        .and_then(|id| match sk_flags {
            // As sshd: the touch (and user verification if required), once the
            // certificate itself is good.
            Some(flags) => check_security_key_flags(cert, flags).map(|()| id),
            None => Ok(id),
        });
        let id = match verdict {
            Ok(id) => id,
            Err(refusal) => {
                let mut extra = Event::new("")
                    .with_peer("key_id", cert.key_id())
                    .with("serial", cert.serial())
                    .with(
                        "key_fingerprint",
                        cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
                    )
                    .with(
                        "ca_fingerprint",
                        cert.signature_key()
                            .fingerprint(HashAlg::Sha256)
                            .to_string(),
                    )
                    .with("policy_version", &policy.version);
                if let Some(flags) = sk_flags {
                    extra = extra.with("sk_flags", flags);
                }
                return Ok(self
                    .refuse_auth(refusal.code(), &refusal.to_string(), extra)
                    .await);
            }
        };
        let Some(user_slot) = self.shared.take_user_slot(&id.key_id) else {
            let extra = Event::new("")
                .with_peer("key_id", &id.key_id)
                .with("serial", id.serial)
                .with("key_fingerprint", &id.key_fingerprint);
            return Ok(self
                .refuse_auth(
                    code::TOO_MANY_CONNECTIONS,
                    "too many connections for this user",
                    extra,
                )
                .await);
        };
        let id = Arc::new(id);
        self.identity = Some(id.clone());
        let record = self
            .event("ssh.auth.ok")
            .with("principals", &id.principals)
            .with("groups", &id.groups)
            .with("valid_before", crate::util::rfc3339(id.valid_before))
            .with("policy_version", &policy.version);
        if !self.shared.record(record).await {
            self.identity = None;
            self.shared.metrics.refused(code::AUDIT_UNAVAILABLE);
            return Ok(reject());
        }
        info!(peer = %self.peer, key_id = %crate::util::shown(&id.key_id), serial = id.serial, "SSH certificate accepted");
        self.user_slot = Some(user_slot);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        BastionMetrics::inc(&self.shared.metrics.auth_ok);
        if let Some(u) = &self.unauth {
            u.slot.authenticated();
        }
        self.unauth = None;
        let valid_before = self.identity.as_ref().map(|id| id.valid_before);
        let _ = self.auth_tx.send(valid_before);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(slot) = self.take_channel() else {
            self.shared.metrics.refused(code::TOO_MANY_CHANNELS);
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 4,
                    reason: "too many channels on this connection".into(),
                })
                .await;
            return Ok(());
        };
        // The session exists only to answer `whoami` and `hosts`; its client data is not
        // read, so the channel handle is dropped (russh discards data for it).
        self.sessions.insert(channel.id(), slot);
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.check_packet_size(data.len(), session)
    }

    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.check_packet_size(data.len(), session)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the slot gives the channel place back.
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        let command = command.trim();
        let Some(id) = self.identity.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let output = match command {
            "whoami" => self.whoami(&id),
            "hosts" => self.hosts(&id),
            other => {
                let shown: String = escape(other).chars().take(64).collect();
                let msg = format!("command {shown:?} refused: {}", self.help());
                return self.refuse_session(channel, "exec", &msg, session).await;
            }
        };
        session.channel_success(channel)?;
        session.data(channel, output.into_bytes())?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let msg = format!("shell refused: {}", self.help());
        self.refuse_session(channel, "shell", &msg, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let shown: String = escape(name).chars().take(64).collect();
        let msg = format!("subsystem {shown:?} refused: {}", self.help());
        self.refuse_session(channel, "subsystem", &msg, session)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.note_session_refusal("pty").await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.note_session_refusal("x11").await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.note_session_refusal("agent").await;
        Ok(false)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Ignored (not audited): harmless, and OpenSSH clients send LANG and friends.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let fields = self
            .event("forward.refused")
            .with("kind", "remote")
            .with_peer("host", address)
            .with("port", *port);
        self.note_forward_refusal(code::REMOTE_FORWARD, fields)
            .await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let fields = self
            .event("forward.refused")
            .with("kind", "streamlocal-remote")
            .with_peer("path", socket_path);
        self.note_forward_refusal(code::STREAMLOCAL, fields).await;
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let fields = self
            .event("forward.refused")
            .with("kind", "streamlocal")
            .with_peer("path", socket_path);
        self.note_forward_refusal(code::STREAMLOCAL, fields).await;
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "unix socket forwarding is refused by the bastion".into(),
            })
            .await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let base = self.event("forward.refused");
        let Some(slot) = self.take_channel() else {
            self.shared.metrics.refused(code::TOO_MANY_CHANNELS);
            let _ = self
                .shared
                .record(
                    base.with_peer("host", host_to_connect)
                        .with("port", port_to_connect)
                        .with("reason", code::TOO_MANY_CHANNELS),
                )
                .await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 4,
                    reason: "too many channels on this connection".into(),
                })
                .await;
            return Ok(());
        };
        // Decide, dial and pipe in a task: a slow target must not block this connection.
        tokio::spawn(super::forward::run(super::forward::Request {
            shared: self.shared.clone(),
            identity,
            conn: self.conn,
            cert_cut: self.cert_cut.clone(),
            base,
            host: host_to_connect.to_string(),
            port: port_to_connect,
            channel,
            reply,
            slot,
            forwards: self.forwards.clone(),
        }));
        Ok(())
    }
}
