//! One SSH connection: its lifecycle around russh's session task (login grace, eviction,
//! certificate expiry and cut, shutdown), and the `Connection` state the russh handler
//! (`handler.rs`) works on, with the audit and refusal helpers it shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::{self, HashAlg};
use russh::server::{Auth, Session};
use russh::{ChannelId, MethodKind, MethodSet};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::BastionMetrics;
use super::codes;
use super::killable::{Kill, Killable};
use super::lib_refusals::{self, LibRefusal};
use super::preauth;
use super::quickack::QuickAck;
use super::russh_config::MAX_CHANNEL_PACKET;
use super::shared::{ChannelSlot, Gauge, Shared, UnauthSlot, UserSlot};
use super::verify::CertIdentity;
use crate::audit::{AuditEvent, AuthFailed, Conn, ForwardRefused, PeerText, RefusalCode};

/// Serves one TCP connection: the login grace timer (F2), certificate expiry (optional)
/// and graceful shutdown around russh's session task.
pub(super) async fn serve_connection(
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
        inner: QuickAck(socket),
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
        ssh_user: PeerText::cut(""),
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
    // A refusal before authentication that the client should read (the shared state is
    // away): sent as the disconnect message.
    let mut tell = false;
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
                // Protocol errors (a malformed packet, docs/threats.md T20) end the session
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
                    code: RefusalCode::CertificateExpired,
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
                    tell = true;
                    break message;
                }
            }
            _ = super::accept::shutdown_requested(&mut drain), if !draining => {
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
    if valid_before.is_some() || tell {
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
    // A session that has ended must not be polled again (its join handle panics when
    // polled after completion): a client that leaves within the second given to read
    // the reason ends it here.
    let mut ended = false;
    // The session must run on to write the disconnect message queued above: cut at once,
    // a refusal before authentication (the shared state away) reached the client as a
    // bare "Connection closed".
    if valid_before.is_some() || tell {
        ended = tokio::time::timeout(Duration::from_secs(1), &mut session)
            .await
            .is_ok();
    }
    kill.kill();
    if !ended {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
    }
}

/// One SSH connection's handler.
pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) conn: u64,
    pub(super) unauth: Option<UnauthSlot>,
    pub(super) user_slot: Option<UserSlot>,
    pub(super) identity: Option<Arc<CertIdentity>>,
    pub(super) auth_tx: watch::Sender<Option<SystemTime>>,
    /// Ends the connection with a message (see `serve_connection`).
    pub(super) cert_cut: Arc<watch::Sender<Option<String>>>,
    /// Channels open on this connection (sessions and forwards), for the F4 cap.
    pub(super) channels: Arc<AtomicUsize>,
    /// Forwards open on this connection (for graceful shutdown).
    pub(super) forwards: Arc<AtomicUsize>,
    pub(super) sessions: HashMap<ChannelId, ChannelSlot>,
    /// The SSH user name given by the client, cut: logged, grants nothing.
    pub(super) ssh_user: PeerText,
    /// Certificates russh refused on this connection before calling us, not audited yet
    /// (see `lib_refusals`).
    pub(super) lib_refusals: Vec<LibRefusal>,
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
        let events: Vec<AuditEvent> = std::mem::take(&mut self.lib_refusals)
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

pub(super) fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

pub(super) fn shown_user(user: &str) -> PeerText {
    PeerText::cut(user)
}

impl Connection {
    /// Moves the certificate refusals russh made in this session's task (before calling
    /// us) into `lib_refusals`. Call first in every authentication method.
    pub(super) fn collect_lib_refusals(&mut self) {
        let room = lib_refusals::MAX_PER_TASK.saturating_sub(self.lib_refusals.len());
        self.lib_refusals
            .extend(lib_refusals::take_current().into_iter().take(room));
    }

    /// The `ssh.auth.failed` record for one of russh's own refusals, counted in the
    /// metrics. russh logs nothing about the certificate, so the record has no key id,
    /// serial or window; `key` is the key the client authenticated with next on this
    /// connection, if any (the OpenSSH client retries with the certificate's own key).
    /// `None` when the source's refusals are being counted rather than recorded.
    pub(super) fn lib_refusal_event(
        &self,
        refusal: LibRefusal,
        key: Option<&ssh_key::PublicKey>,
    ) -> Option<AuditEvent> {
        let code = refusal.code();
        self.shared.metrics.refused(code);
        if let Some(u) = &self.unauth {
            u.slot.auth_refused();
        }
        if !self.record_refusal_now(code) {
            return None;
        }
        info!(peer = %self.peer, user = %self.ssh_user, code = %code, "SSH certificate refused by russh");
        let policy = self.shared.policy.current();
        let mut f = AuthFailed::new(
            self.conn_fields(),
            code,
            refusal.message(),
            &policy.version,
            refusal.rule(),
        );
        f.refused_by = Some("russh");
        if let Some(key) = key {
            f.conn.key_fingerprint = Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Some(AuditEvent::SshAuthFailed(f))
    }

    /// Whether a refusal with `code` is recorded now, or counted for this source's next
    /// `ssh.auth.failed.repeated` (see `refusal_budget`).
    pub(super) fn record_refusal_now(&self, code: RefusalCode) -> bool {
        let source = self.shared.unauth.source(self.peer.ip());
        let now = self
            .shared
            .refusals
            .record_now(source, code, std::time::Instant::now());
        if !now {
            debug!(peer = %self.peer, code = %code, "SSH refusal counted, not recorded");
        }
        now
    }

    /// Audits the pending russh refusals now (see [`Self::lib_refusal_event`]).
    pub(super) async fn audit_lib_refusals(&mut self, key: Option<&ssh_key::PublicKey>) {
        self.collect_lib_refusals();
        for refusal in std::mem::take(&mut self.lib_refusals) {
            if let Some(e) = self.lib_refusal_event(refusal, key) {
                let _ = self.shared.record(e).await;
            }
        }
    }

    /// Disconnects a client whose CHANNEL_DATA is longer than [`MAX_CHANNEL_PACKET`], the
    /// most we announced (RFC 4254 §5.2; russh has already queued that one packet).
    pub(super) fn check_packet_size(
        &self,
        len: usize,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
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

    pub(super) fn take_channel(&self) -> Option<ChannelSlot> {
        let max = self.shared.cfg.max_channels_per_connection;
        self.channels
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v < max).then_some(v + 1)
            })
            .ok()
            .map(|_| ChannelSlot(self.channels.clone()))
    }

    /// Fields every record about this connection carries.
    pub(super) fn conn_fields(&self) -> Conn {
        let mut c = Conn {
            conn: self.conn,
            peer: self.peer.to_string(),
            ssh_user: self.ssh_user.clone(),
            key_id: None,
            serial: None,
            key_fingerprint: None,
            ca_fingerprint: None,
        };
        if let Some(id) = &self.identity {
            c.key_id = Some(PeerText::cut(&id.key_id));
            c.serial = Some(id.serial);
            c.key_fingerprint = Some(id.key_fingerprint.clone());
            c.ca_fingerprint = Some(id.ca_fingerprint.clone());
        }
        c
    }

    /// Refuses an authentication: counts it, and (within the source's budget) writes
    /// `ssh.auth.failed` with the policy version in force and `rule`; `extra` adds the
    /// certificate's or key's fields.
    pub(super) async fn refuse_auth(
        &self,
        code: RefusalCode,
        rule: &str,
        message: &str,
        extra: impl FnOnce(&mut AuthFailed),
    ) -> Auth {
        self.shared.metrics.refused(code);
        if let Some(u) = &self.unauth {
            // Counts towards the source's penalty if the connection never authenticates.
            u.slot.auth_refused();
        }
        if !self.record_refusal_now(code) {
            return reject();
        }
        info!(peer = %self.peer, user = %self.ssh_user, code = %code, "SSH authentication refused");
        let policy = self.shared.policy.current();
        let mut f = AuthFailed::new(self.conn_fields(), code, message, &policy.version, rule);
        extra(&mut f);
        let _ = self.shared.record(AuditEvent::SshAuthFailed(f)).await;
        reject()
    }

    /// Counts a refused session request (pty, x11, agent, shell, ...) and audits it.
    pub(super) async fn note_session_refusal(&self, request: &str) {
        self.shared.metrics.refused(codes::SESSION);
        let _ = self
            .shared
            .record(AuditEvent::SshSessionRefused {
                conn: self.conn_fields(),
                request: request.to_string(),
                reason: codes::SESSION,
                policy_version: self.shared.policy.current().version.clone(),
                rule: codes::RULE_FORWARD_ONLY.to_string(),
            })
            .await;
    }

    /// A `forward.refused` record about this connection, for the caller to complete.
    pub(super) fn forward_refused(&self, code: RefusalCode, rule: &str) -> ForwardRefused {
        let policy = self.shared.policy.current();
        ForwardRefused::new(self.conn_fields(), code, &policy.version, rule)
    }

    /// Counts a refused forwarding request and audits it.
    pub(super) async fn note_forward_refusal(&self, refused: ForwardRefused) {
        self.shared.metrics.refused(refused.reason);
        let _ = self
            .shared
            .record(AuditEvent::ForwardRefused(refused))
            .await;
    }

    /// Refuses a session request with a message the user sees on stderr, exit status 1.
    pub(super) async fn refuse_session(
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
}
