//! Recorded sessions: for a host (or a granting principal) with `record = true`, the
//! bastion answers the `direct-tcpip` channel itself with an SSH server inside the
//! channel, logs in to the target with a per-session certificate, and relays and records
//! the session.
//!
//! # Layout
//!
//! | file | what it does |
//! |---|---|
//! | `keys` | the inner host key and its certificates, the host CA, the per-session signer |
//! | `inner` | the russh server inside the channel: banner, certificate again, login decision, requests |
//! | `decide` | the pure (principal, host, login) decision, all or nothing |
//! | `target` | the russh client to the target: host certificate check, per-session login |
//! | `session_cert` | what a per-session certificate holds (pure) and its signing |
//! | `relay` | the target's side of one channel back to the client |
//! | `session` | one session's shared state: recording, exit, failure |
//! | `seam` | what this takes from the recording module and the policy |
//!
//! # Invariants
//!
//! - Nothing reaches the target before the forward's `forward.opened`, the session's
//!   `session.started` and the recording's first line are on disk, and before the login
//!   is decided under the policy in force.
//! - The target is reached only with a host certificate of the host CA naming its
//!   inventory name or, for a host with a pinned `host_key`, with exactly that key (bare
//!   or certified); never by trust on first use.
//! - What cannot be recorded is not relayed: a recording error cuts the session (that
//!   session only).
//! - Flow control both ways: client data waits for the target's window, target data for
//!   the client's; russh's queues are bounded by `channel_buffer_size`.

pub mod decide;
mod drained;
mod inner;
pub mod keys;
mod outbox;
mod relay;
pub mod seam;
mod session;
pub mod session_cert;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use russh::Channel;
use russh::server::{ChannelOpenHandle, Msg};
use tokio::sync::watch;
use tracing::{info, warn};

pub use keys::RecordingKeys;

use super::BastionMetrics;
use super::killable::{Kill, Killable};
use super::registry::{Cut, ForwardFields, Registration};
use super::shared::{ChannelSlot, Shared};
use super::verify::CertIdentity;
use crate::audit::{AuditEvent, Conn, RefusalCode, SessionEnded};
use crate::policy::Host;

/// What the bastion needs to record sessions.
pub struct Setup {
    pub keys: RecordingKeys,
    /// `recording.dir`: where `ID.cast` files are written.
    pub dir: PathBuf,
    /// `recording.input`: keystrokes recorded too.
    pub input: bool,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("keys", &self.keys)
            .field("dir", &self.dir)
            .field("input", &self.input)
            .finish()
    }
}

/// A `direct-tcpip` request to a recorded host, decided and registered (`forward.rs`).
pub(super) struct Start {
    pub shared: Arc<Shared>,
    pub setup: Arc<Setup>,
    pub identity: Arc<CertIdentity>,
    pub fields: Conn,
    pub target: Host,
    pub closed: ForwardFields,
    pub registration: Registration,
    pub cut_rx: watch::Receiver<Option<Arc<Cut>>>,
    pub channel: Channel<Msg>,
    pub reply: ChannelOpenHandle,
    pub slot: ChannelSlot,
    pub forwards: Arc<AtomicUsize>,
    pub started: Instant,
}

/// Runs a recorded session in the accepted channel until it ends, is cut, or its
/// recording fails; then writes `session.ended` and `forward.closed`.
pub(super) async fn run(s: Start) {
    let Start {
        shared,
        setup,
        identity,
        fields,
        target,
        closed,
        registration,
        mut cut_rx,
        channel,
        reply,
        slot,
        forwards,
        started,
    } = s;
    let _slot = slot;
    let fail = |code: RefusalCode, message: String| super::forward::ForwardRefusal {
        code,
        message,
        ssh_code: 2,
        rule: Some("bastion.recorded".into()),
        lost_principal: None,
        detail: None,
    };
    let peer_ip = match fields.peer.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip(),
        Err(_) => {
            let r = fail(RefusalCode::SessionRefused, "no client address".into());
            return super::forward::end_unopened(&shared, closed, reply, r, started).await;
        }
    };
    let id = match seam::SessionId::random() {
        Ok(id) => id,
        Err(e) => {
            let r = fail(RefusalCode::SessionRefused, e.to_string());
            return super::forward::end_unopened(&shared, closed, reply, r, started).await;
        }
    };
    let version = shared.policy.current().version.clone();
    let config = setup
        .keys
        .inner_for(&target, &version, SystemTime::now())
        .and_then(|(key, cert)| {
            super::russh_config::russh_config(&shared.cfg, key, Some(cert))
                .map_err(|e| e.to_string())
        });
    let config = match config {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(error = %e, "recorded session: no host certificate to present");
            let r = fail(RefusalCode::SessionRefused, format!("{}: {e}", target.name));
            return super::forward::end_unopened(&shared, closed, reply, r, started).await;
        }
    };

    reply.accept().await;
    let metrics = shared.metrics.clone();
    BastionMetrics::inc(&metrics.forwards_total);
    BastionMetrics::inc(&metrics.forwards_active);
    forwards.fetch_add(1, Ordering::SeqCst);
    info!(key_id = %crate::util::escape(&identity.key_id), target = %target.name, session = %id, "recorded session opened");

    let ctx = Arc::new(session::SessionCtx::new(
        shared.clone(),
        setup,
        identity,
        peer_ip,
        target,
        id,
        fields,
    ));
    let kill = Arc::new(Kill::default());
    let stream = Killable {
        inner: drained::Drained::new(channel.into_stream()),
        kill: kill.clone(),
    };
    let mut failed = ctx.failed();
    let mut shutdown = shared.cut.clone();
    let end = match russh::server::run_stream(config, stream, inner::Inner::new(ctx.clone())).await
    {
        Err(e) => {
            warn!(error = %e, "recorded session: the SSH server inside the channel failed");
            "closed".to_string()
        }
        Ok(mut running) => {
            let handle = running.handle();
            let (end, message) = tokio::select! {
                _ = &mut running => ("closed".to_string(), None),
                _ = shutdown.wait_for(|v| *v) => ("shutdown".to_string(), Some("the bastion is shutting down".to_string())),
                c = cut_rx.wait_for(|c| c.is_some()) => {
                    let message = c.ok().and_then(|c| c.as_ref().map(|c| c.message.clone()));
                    ("cut".to_string(), message)
                }
                _ = failed.wait_for(|v| *v) => (
                    "recording-failed".to_string(),
                    Some("the recording of this session cannot be written".to_string()),
                ),
            };
            if let Some(message) = message {
                // The cut goes into the recording first, then the client is told.
                if ctx.mark(&format!("{end}: {message}")).is_err() {
                    warn!(session = %ctx.id, "cannot write the cut into the recording");
                }
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    handle.disconnect(
                        russh::Disconnect::ByApplication,
                        format!("drawbridge: session {end}: {message}"),
                        "en".into(),
                    ),
                )
                .await;
                kill.kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), running).await;
            }
            end
        }
    };
    kill.kill();

    let registration_cut = registration.forward.decided();
    drop(registration);
    forwards.fetch_sub(1, Ordering::SeqCst);
    BastionMetrics::dec(&metrics.forwards_active);
    let mut end = end;
    if let Some(cut) = &registration_cut
        && end == "closed"
    {
        // The connection was ended for the cut before this task saw it.
        let _ = ctx.mark(&format!("cut: {}", cut.message));
        end = "cut".into();
    }
    let summary = match ctx.finish().await {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            warn!(session = %ctx.id, error = %e, "cannot finish the recording");
            None
        }
        None => None,
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if ctx.started.get().is_some() && !ctx.recording_started() {
        // Started (audited) but its recording could never be created: refused.
        end = "recording-failed".into();
    }
    if let Some((login, _)) = ctx.started.get() {
        let policy = shared.policy.current();
        let version = match &registration_cut {
            Some(c) => c.policy_version.clone(),
            None => policy.version.clone(),
        };
        let mut e = SessionEnded::new(ctx.base(login, &version), &ctx.recording_path(), &end);
        e.duration_ms = duration_ms;
        e.bytes_client_to_target = ctx.bytes_up.load(Ordering::Relaxed);
        e.bytes_target_to_client = ctx.bytes_down.load(Ordering::Relaxed);
        e.exit_status = ctx.exit();
        e.exit_signal = ctx.exit_signal_name();
        if let Some(c) = &registration_cut {
            e.rule = Some(c.rule.clone());
            e.reason = Some(c.code);
            e.lost_principal = c.principal.clone();
            e.message = Some(c.message.clone());
        } else if end == "recording-failed" {
            e.reason = Some(RefusalCode::RecordingUnavailable);
            e.rule = Some("recording.dir".into());
        }
        if let Some(s) = &summary {
            e.recording_size = Some(s.size);
            e.recording_sha256 = Some(s.sha256.clone());
        }
        let _ = shared.record(AuditEvent::SessionEnded(e)).await;
    }
    let up = ctx.bytes_up.load(Ordering::Relaxed);
    let down = ctx.bytes_down.load(Ordering::Relaxed);
    metrics
        .bytes_client_to_target
        .fetch_add(up, Ordering::Relaxed);
    metrics
        .bytes_target_to_client
        .fetch_add(down, Ordering::Relaxed);
    let ended = super::forward::Ended {
        up,
        down,
        started,
        end,
        rule: registration_cut.map(|c| c.rule.clone()),
        reason: None,
        message: None,
    };
    let _ = shared.record(ended.record(closed)).await;
}
