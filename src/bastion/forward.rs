//! `direct-tcpip`: decide under the policy loaded now, record, dial the inventory
//! address, accept the channel, pipe bytes both ways until the end or a cut, record the
//! close.
//!
//! Order: decide → `forward.opened` on disk → register (live re-checks see it from here
//! on) → dial → accept. A forward whose record cannot be written never dials. A failed
//! dial ends the forward with `forward.closed`, `end` = `connect-failed` or
//! `connect-timeout` (every `forward.opened` is followed by one `forward.closed`), and the
//! client gets the channel-open failure.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::BastionMetrics;
use super::quickack;
use super::registry;
use super::registry::ForwardFields;
use super::shared::{ChannelSlot, Shared};
use super::targets::{malformed, resolve_for};
use super::verify::CertIdentity;
use crate::audit::{
    AuditEvent, Conn, Decided, ForwardBase, ForwardRefused, Grant, PeerText, RefusalCode,
};
use crate::policy::{Held, Host, Policy};
use crate::util::escape;

/// Largest read from the target at once (64 KiB: bench/RESULTS.md measured smaller buffers cost throughput); russh cuts it into
/// packets of the client's maximum size.
const COPY_BUFFER: usize = 64 * 1024;

/// Most client data written to the target at once: data russh has already queued for the
/// forward goes out in one (vectored) write, up to this much, instead of one write per SSH
/// packet.
const WRITE_BATCH: usize = 256 * 1024;
/// Most buffers in one vectored write (well under the system's IOV_MAX).
const MAX_IOVECS: usize = 64;

pub(super) struct Request {
    pub shared: Arc<Shared>,
    pub identity: Arc<CertIdentity>,
    /// The SSH connection's number.
    pub conn: u64,
    /// Ends the SSH connection with a message (a cut of the certificate itself).
    pub cert_cut: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// The connection's fields of every record about this forward.
    pub fields: Conn,
    pub host: String,
    pub port: u32,
    pub channel: Channel<Msg>,
    pub reply: ChannelOpenHandle,
    pub slot: ChannelSlot,
    pub forwards: Arc<AtomicUsize>,
}

/// Why a forward is refused: a stable code, a message for the user, and the SSH reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRefusal {
    pub code: RefusalCode,
    /// For the user: never names a host they may not reach.
    pub message: String,
    /// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (1) or SSH_OPEN_CONNECT_FAILED (2).
    pub ssh_code: u32,
    /// For the audit log: the rule that decided (a `[[revoked]]` entry, a lost principal).
    pub rule: Option<String>,
    /// For the audit log: the principal the certificate carries and its holder lost.
    pub lost_principal: Option<String>,
    /// For the audit log: what the user is not told (the inventory host concerned).
    pub detail: Option<String>,
}

fn prohibited(code: RefusalCode, message: String) -> ForwardRefusal {
    ForwardRefusal {
        code,
        message,
        ssh_code: 1,
        rule: None,
        lost_principal: None,
        detail: None,
    }
}

impl ForwardRefusal {
    /// The rule that decided, for the audit record: the one set when refusing, else the
    /// rule behind the code.
    fn rule(&self) -> String {
        if let Some(r) = &self.rule {
            return r.clone();
        }
        match self.code {
            RefusalCode::UnknownHost => "policy: [hosts] inventory and port".into(),
            RefusalCode::Denied => "policy: no principal of the certificate grants the host".into(),
            RefusalCode::CertExpired => "certificate valid_before".into(),
            RefusalCode::AuditUnavailable => super::codes::RULE_AUDIT_FIRST.into(),
            RefusalCode::ConnectFailed | RefusalCode::ConnectTimeout => {
                "ssh.connect_timeout".into()
            }
            other => format!("bastion.{other}"),
        }
    }
}

/// An allowed forward: the inventory host, and every principal of the certificate that
/// grants it with how each is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<'p> {
    pub target: &'p Host,
    /// Never empty; in the certificate's order.
    pub grants: Vec<Held>,
}

/// The decision for one `direct-tcpip` request. Pure: the policy and the time are
/// parameters.
///
/// A request malformed in itself (port, empty host, control characters) is refused first.
/// Then a certificate is all or nothing: the key id must still hold, under `policy`, every
/// principal in the certificate, each within its `max_ttl` (the certificate's age), and
/// the certificate must not be revoked or expired ([`Policy::still_holds`]). Then the
/// host must be one at least one of those principals grants; what a refusal says about
/// the host is chosen after that is known ([`resolve_for`]).
pub fn authorize<'p>(
    policy: &'p Policy,
    id: &CertIdentity,
    host: &str,
    port: u32,
    now: SystemTime,
) -> Result<Allowed<'p>, ForwardRefusal> {
    if let Some(t) = malformed(host, port) {
        return Err(prohibited(t.code, t.message));
    }
    let carried = id.carried();
    let held = policy
        .still_holds(&carried, now, Some(id.age(now)))
        .map_err(|lost| ForwardRefusal {
            rule: Some(lost.rule()),
            lost_principal: lost.principal().map(str::to_string),
            ..prohibited(lost.code(), lost.message())
        })?;
    if now >= id.valid_before {
        return Err(prohibited(
            RefusalCode::CertExpired,
            "your certificate has expired; get a new one and reconnect".into(),
        ));
    }
    let grants_host = |p: &Held, h: &Host| {
        policy
            .principals
            .get(&p.principal)
            .is_some_and(|d| policy.grants_host(d, h))
    };
    let may_reach = |h: &Host| held.iter().any(|p| grants_host(p, h));
    let target = resolve_for(policy, host, port, &may_reach).map_err(|t| ForwardRefusal {
        detail: t.detail,
        ..prohibited(t.code, t.message)
    })?;
    let grants: Vec<Held> = held
        .iter()
        .filter(|p| grants_host(p, target))
        .cloned()
        .collect();
    Ok(Allowed { target, grants })
}

pub(super) async fn run(req: Request) {
    let Request {
        shared,
        identity,
        conn,
        cert_cut,
        fields,
        host,
        port,
        channel,
        reply,
        slot,
        forwards,
    } = req;
    let _slot = slot;
    let metrics = shared.metrics.clone();
    let policy = shared.policy.current();
    let now = SystemTime::now();
    let base = ForwardBase {
        conn: fields,
        host: PeerText::cut(&host),
        port,
        policy_version: policy.version.clone(),
    };

    let allowed = match authorize(&policy, &identity, &host, port, now) {
        Ok(ok) => ok,
        Err(r) => return refuse(&shared, &base, reply, r, None).await,
    };
    let target = allowed.target;
    let Some(first) = allowed.grants.first() else {
        // `authorize` never allows without a granting principal; refuse if it ever did.
        let r = prohibited(RefusalCode::Denied, super::targets::not_reachable(&host));
        return refuse(&shared, &base, reply, r, None).await;
    };
    let decided = Decided {
        target: target.name.clone(),
        address: format!("{}:{}", target.address, target.port),
        principal: first.principal.clone(),
        grants: Grant::all(&allowed.grants),
    };

    // The record is on disk before anything reaches the target (fail closed).
    let opened = AuditEvent::ForwardOpened {
        base: base.clone(),
        decided: decided.clone(),
    };
    if !shared.record(opened).await {
        let r = prohibited(
            super::codes::AUDIT_UNAVAILABLE,
            "the bastion cannot write its audit log; try again later".into(),
        );
        return refuse(&shared, &base, reply, r, Some(decided)).await;
    }
    let closed = ForwardFields { base, decided };
    let started = Instant::now();

    // From here on live re-checks see this forward. It was decided under `policy` at
    // `now`: check it once more under the policy in force, in case that changed (or a
    // temporary grant ended) before it was registered.
    let (registration, mut cut_rx) = registry::register(
        &shared.registry,
        conn,
        cert_cut,
        identity.clone(),
        &target.name,
        closed.clone(),
    );
    if let Some(cut) = registry::check_one(
        &shared.policy.current(),
        &registration.forward,
        SystemTime::now(),
    ) {
        registry::cut_forward(&shared.audit, registration.forward.clone(), cut).await;
    }

    // Cut already (the policy changed since the decision): never dial.
    if let Some(cut) = registration.forward.decided() {
        return end_cut_unopened(&shared, closed, reply, &cut, started).await;
    }

    // A recorded host: the bastion answers the channel itself (see `recorded`).
    if super::recorded::seam::records(&policy, target, &allowed.grants) {
        // Never piped unrecorded: a bastion that cannot record refuses.
        let Some(setup) = shared.recording.clone() else {
            let r = ForwardRefusal {
                rule: Some("bastion.recorded".into()),
                ..prohibited(
                    RefusalCode::RecordingUnavailable,
                    format!(
                        "{}: sessions to this host are recorded, and this bastion cannot record",
                        target.name
                    ),
                )
            };
            return end_unopened(&shared, closed, reply, r, started).await;
        };
        let target = target.clone();
        return super::recorded::run(super::recorded::Start {
            shared,
            setup,
            identity,
            fields: closed.base.conn.clone(),
            target,
            closed,
            registration,
            cut_rx,
            channel,
            reply,
            slot: _slot,
            forwards,
            started,
        })
        .await;
    }

    // F5: dial with a deadline; the SSH connection stays up whatever happens here.
    let dial = TcpStream::connect((target.address.as_str(), target.port));
    let failed = |code: RefusalCode, message: String| ForwardRefusal {
        ssh_code: 2,
        ..prohibited(code, message)
    };
    let stream = match tokio::time::timeout(shared.cfg.connect_timeout, dial).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let r = failed(
                RefusalCode::ConnectFailed,
                format!("{}: cannot connect: {e}", target.name),
            );
            return end_unopened(&shared, closed, reply, r, started).await;
        }
        Err(_) => {
            let r = failed(
                RefusalCode::ConnectTimeout,
                format!(
                    "{}: no answer within {}",
                    target.name,
                    crate::util::format_duration(shared.cfg.connect_timeout)
                ),
            );
            return end_unopened(&shared, closed, reply, r, started).await;
        }
    };
    let _ = stream.set_nodelay(true);
    // Cut while dialing: the client never gets the channel.
    if let Some(cut) = registration.forward.decided() {
        drop(stream);
        return end_cut_unopened(&shared, closed, reply, &cut, started).await;
    }

    reply.accept().await;
    BastionMetrics::inc(&metrics.forwards_total);
    BastionMetrics::inc(&metrics.forwards_active);
    forwards.fetch_add(1, Ordering::SeqCst);
    info!(key_id = %escape(&identity.key_id), target = %target.name, principal = %first.principal, "forward opened");

    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let mut shutdown = shared.cut.clone();
    let (rx, tx) = channel.split();
    let end = tokio::select! {
        r = pipe(rx, &tx, stream, &metrics, &up, &down) => match r {
            Ok(()) => "closed",
            Err(e) => {
                debug!(error = %e, "forward ended with an error");
                // A client that closes while the target still sends ends the copy with
                // "channel closed": a normal close, not a failure.
                "closed"
            }
        },
        _ = shutdown.wait_for(|v| *v) => "shutdown",
        _ = cut_rx.wait_for(|c| c.is_some()) => "cut",
    };
    // Close our side of the channel (`into_stream` did it on drop); bounded, the session
    // may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
    let registration_cut = registration.forward.decided();
    drop(registration);
    forwards.fetch_sub(1, Ordering::SeqCst);
    BastionMetrics::dec(&metrics.forwards_active);

    let mut ended = Ended {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        started,
        end: end.to_string(),
        rule: None,
        reason: None,
        message: None,
    };
    // A forward whose connection was ended for its cut (the reason goes first) is cut too.
    if let Some(cut) = registration_cut {
        ended.end = "cut".into();
        ended.rule = Some(cut.rule.clone());
    }
    let _ = shared.record(ended.record(closed)).await;
}

/// How a forward ended, for its `forward.closed`.
pub(super) struct Ended {
    pub up: u64,
    pub down: u64,
    pub started: Instant,
    pub end: String,
    pub rule: Option<String>,
    pub reason: Option<RefusalCode>,
    pub message: Option<String>,
}

impl Ended {
    pub(super) fn record(self, fields: ForwardFields) -> AuditEvent {
        AuditEvent::ForwardClosed {
            base: fields.base,
            decided: fields.decided,
            bytes_client_to_target: self.up,
            bytes_target_to_client: self.down,
            duration_ms: self.started.elapsed().as_millis() as u64,
            end: self.end,
            rule: self.rule,
            reason: self.reason,
            message: self.message,
        }
    }
}

/// Ends a forward cut before its channel was accepted.
async fn end_cut_unopened(
    shared: &Shared,
    closed: ForwardFields,
    reply: ChannelOpenHandle,
    cut: &registry::Cut,
    started: Instant,
) {
    let r = ForwardRefusal {
        rule: Some(cut.rule.clone()),
        ..prohibited(RefusalCode::Cut, cut.message.clone())
    };
    end_unopened(shared, closed, reply, r, started).await
}

/// Ends a forward recorded as opened that never reached the client: `forward.closed`
/// with `end` = the code, then the channel-open failure.
pub(super) async fn end_unopened(
    shared: &Shared,
    closed: ForwardFields,
    reply: ChannelOpenHandle,
    r: ForwardRefusal,
    started: Instant,
) {
    shared.metrics.refused(r.code);
    let ended = Ended {
        up: 0,
        down: 0,
        started,
        end: r.code.as_str().to_string(),
        rule: Some(r.rule()),
        reason: Some(r.code),
        message: Some(r.message.clone()),
    };
    let _ = shared.record(ended.record(closed)).await;
    info!(code = %r.code, message = %r.message, "forward failed");
    reply
        .reject(ChannelOpenFailure::Other {
            code: r.ssh_code,
            reason: r.message,
        })
        .await;
}

async fn refuse(
    shared: &Shared,
    base: &ForwardBase,
    reply: ChannelOpenHandle,
    r: ForwardRefusal,
    decided: Option<Decided>,
) {
    shared.metrics.refused(r.code);
    let event = AuditEvent::ForwardRefused(ForwardRefused {
        host: Some(base.host.clone()),
        port: Some(base.port),
        message: Some(r.message.clone()),
        lost_principal: r.lost_principal.as_deref().map(escape),
        detail: r.detail.clone(),
        decided,
        ..ForwardRefused::new(base.conn.clone(), r.code, &base.policy_version, &r.rule())
    });
    let _ = shared.record(event).await;
    info!(code = %r.code, message = %r.message, "forward refused");
    reply
        .reject(ChannelOpenFailure::Other {
            code: r.ssh_code,
            reason: r.message,
        })
        .await;
}

/// Copies both ways until both sides have finished (EOF passed on as a half close), the
/// client closes the channel or goes away, or either side fails. Counts bytes live into
/// `metrics` and into `up` / `down`.
///
/// A client that is gone ends the forward even when the target neither sends nor closes
/// (docs/threats.md T20: such a forward used to outlive its SSH connection, with its target
/// socket, until the target closed).
///
/// No copy of ours on the way: client data comes out of russh as `Bytes` and goes to the
/// target as it is, and target data is read into a `BytesMut` that russh takes over
/// (`data_bytes`). `Channel::into_stream` costs one more memcpy each way (bench/RESULTS.md).
/// A buffer exists only while data moves: an idle forward holds none.
async fn pipe(
    mut rx: ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    target: TcpStream,
    metrics: &BastionMetrics,
    up: &AtomicU64,
    down: &AtomicU64,
) -> std::io::Result<()> {
    let (tr, mut tw) = target.into_split();
    // Set when the client sends EOF; `client_eof_seen` wakes the wait for it below.
    let client_eof = AtomicBool::new(false);
    let client_eof_seen = Notify::new();
    // Ends when the client closes the channel or the connection is gone; after EOF it
    // keeps reading (and drops data, which a client must not send then) to notice that.
    let upward = async {
        let mut writing = true;
        // A message taken while gathering a batch that is not data, handled next.
        let mut next: Option<Option<ChannelMsg>> = None;
        loop {
            let msg = match next.take() {
                Some(msg) => msg,
                None => rx.wait().await,
            };
            let Some(msg) = msg else { break };
            match msg {
                ChannelMsg::Data { data } if writing => {
                    // What russh has already queued goes out in the same write.
                    let mut batch = vec![data];
                    let mut n = batch.iter().map(|b| b.len()).sum::<usize>();
                    while n < WRITE_BATCH {
                        match rx.wait().now_or_never() {
                            Some(Some(ChannelMsg::Data { data })) => {
                                n += data.len();
                                batch.push(data);
                            }
                            Some(other) => {
                                next = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    write_all_batch(&mut tw, &mut batch).await?;
                    let n = n as u64;
                    metrics
                        .bytes_client_to_target
                        .fetch_add(n, Ordering::Relaxed);
                    up.fetch_add(n, Ordering::Relaxed);
                }
                ChannelMsg::Eof if writing => {
                    // Half close: pass the EOF on, keep the other direction going.
                    writing = false;
                    let _ = tw.shutdown().await;
                    client_eof.store(true, Ordering::SeqCst);
                    client_eof_seen.notify_one();
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if writing {
            let _ = tw.shutdown().await;
        }
        Ok::<(), std::io::Error>(())
    };
    let downward = async {
        let mut buf = BytesMut::new();
        loop {
            tr.readable().await?;
            buf.reserve(COPY_BUFFER);
            let n = match tr.try_read_buf(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                let _ = tx.eof().await;
                return Ok(());
            }
            quickack::after_read(tr.as_ref(), n);
            tx.data_bytes(buf.split().freeze())
                .await
                .map_err(std::io::Error::other)?;
            metrics
                .bytes_target_to_client
                .fetch_add(n as u64, Ordering::Relaxed);
            down.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::pin!(upward, downward);
    let mut target_done = false;
    loop {
        tokio::select! {
            // The client closed the channel or went away: nobody is left to send to.
            r = &mut upward => return r,
            r = &mut downward, if !target_done => {
                r?;
                target_done = true;
                if client_eof.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            // Both sides sent EOF.
            () = client_eof_seen.notified(), if target_done => return Ok(()),
        }
    }
}

/// Writes every buffer of `batch` to `w`, in order, with as few writes as the socket
/// takes (vectored).
async fn write_all_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch
            .get(first..)
            .unwrap_or_default()
            .iter()
            .take(MAX_IOVECS)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut written = w.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(b) = batch.get_mut(first) else { break };
            let k = written.min(b.len());
            b.advance(k);
            written -= k;
            if b.is_empty() {
                first += 1;
            }
        }
        while batch.get(first).is_some_and(|b| b.is_empty()) {
            first += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
