//! `direct-tcpip`: decide under the policy loaded now, dial the inventory address, record,
//! accept the channel, pipe bytes both ways, record the close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::BastionMetrics;
use super::server::{ChannelSlot, Shared};
use super::targets::resolve_target;
use super::verify::CertIdentity;
use crate::audit::Event;
use crate::policy::{Decision, Grant, Host, Policy, Query, Via};
use crate::util::escape;

/// Largest read from the target at once (PERF-NOTES: 64 KiB buffers); russh cuts it into
/// packets of the client's maximum size.
const COPY_BUFFER: usize = 64 * 1024;

pub(super) struct Request {
    pub shared: Arc<Shared>,
    pub identity: Arc<CertIdentity>,
    /// A `forward.refused` event with the connection's fields, to extend.
    pub base: Event,
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
    pub code: &'static str,
    pub message: String,
    /// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (1) or SSH_OPEN_CONNECT_FAILED (2).
    pub ssh_code: u32,
}

fn prohibited(code: &'static str, message: String) -> ForwardRefusal {
    ForwardRefusal {
        code,
        message,
        ssh_code: 1,
    }
}

/// The decision for one `direct-tcpip` request: which inventory host, and the grant that
/// allows it. Pure: the policy and the time are parameters.
pub fn authorize<'p>(
    policy: &'p Policy,
    id: &CertIdentity,
    host: &str,
    port: u32,
    now: SystemTime,
) -> Result<(&'p Host, Grant), ForwardRefusal> {
    let target = resolve_target(policy, host, port).map_err(|m| prohibited("unknown-host", m))?;
    if policy.revoked(id.serial, &id.key_id).is_some() {
        return Err(prohibited("revoked", "your certificate is revoked".into()));
    }
    if now >= id.valid_before {
        return Err(prohibited(
            "cert-expired",
            "your certificate has expired; get a new one and reconnect".into(),
        ));
    }
    let query = |within: &[String]| {
        policy.decide(&Query {
            user: &id.key_id,
            extra_groups: &id.idp_groups,
            host: &target.name,
            login: None,
            within: Some(within),
            now,
        })
    };
    let grant = match query(&id.principals) {
        Decision::Deny { reason } => return Err(prohibited("denied", reason)),
        Decision::Allow { grant } => grant,
    };
    let age = id.age(now);
    let fresh = |g: &Grant| {
        policy
            .principals
            .get(&g.principal)
            .and_then(|p| p.max_ttl)
            .is_none_or(|max| age <= max)
    };
    if fresh(&grant) {
        return Ok((target, grant));
    }
    // The deciding principal's max_ttl is exceeded: another principal in the certificate
    // that also grants the host and allows an older certificate will do.
    for p in &id.principals {
        if let Decision::Allow { grant } = query(std::slice::from_ref(p))
            && fresh(&grant)
        {
            return Ok((target, grant));
        }
    }
    Err(prohibited(
        "ttl-exceeded",
        format!(
            "your certificate is {} old, more than principal {:?} allows for {}; get a new one",
            crate::util::format_duration(Duration::from_secs(age.as_secs())),
            grant.principal,
            target.name
        ),
    ))
}

fn via(v: &Via) -> String {
    match v {
        Via::User => "user".into(),
        Via::Group(g) => format!("group:{g}"),
        Via::Temporary { reason, .. } => format!("temporary:{reason}"),
    }
}

pub(super) async fn run(req: Request) {
    let Request {
        shared,
        identity,
        base,
        host,
        port,
        channel,
        reply,
        slot,
        forwards,
    } = req;
    let _slot = slot;
    let metrics = shared.metrics.clone();
    let shown_host = escape(&host);
    let policy = shared.policy.current();
    let now = SystemTime::now();
    let base = base
        .with("host", &shown_host)
        .with("port", port)
        .with("policy_version", &policy.version);

    let (target, grant) = match authorize(&policy, &identity, &host, port, now) {
        Ok(ok) => ok,
        Err(r) => return refuse(&shared, &base, reply, r, Event::new("")).await,
    };
    let decided = Event::new("")
        .with("target", &target.name)
        .with("address", format!("{}:{}", target.address, target.port))
        .with("principal", &grant.principal)
        .with("via", via(&grant.via));

    // F5: dial with a deadline; the SSH connection stays up whatever happens here.
    let dial = TcpStream::connect((target.address.as_str(), target.port));
    let stream = match tokio::time::timeout(shared.cfg.connect_timeout, dial).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let r = ForwardRefusal {
                code: "connect-failed",
                message: format!("{}: cannot connect: {e}", target.name),
                ssh_code: 2,
            };
            return refuse(&shared, &base, reply, r, decided).await;
        }
        Err(_) => {
            let r = ForwardRefusal {
                code: "connect-timeout",
                message: format!(
                    "{}: no answer within {}",
                    target.name,
                    crate::util::format_duration(shared.cfg.connect_timeout)
                ),
                ssh_code: 2,
            };
            return refuse(&shared, &base, reply, r, decided).await;
        }
    };
    let _ = stream.set_nodelay(true);

    // The record is on disk before the channel opens (fail closed).
    let mut opened = Event::new("forward.opened");
    opened.fields = base.fields.clone();
    opened.fields.extend(decided.fields.clone());
    if !shared.record(opened).await {
        let r = prohibited(
            super::server::code::AUDIT_UNAVAILABLE,
            "the bastion cannot write its audit log; try again later".into(),
        );
        return refuse(&shared, &base, reply, r, decided).await;
    }
    reply.accept().await;
    BastionMetrics::inc(&metrics.forwards_total);
    BastionMetrics::inc(&metrics.forwards_active);
    forwards.fetch_add(1, Ordering::SeqCst);
    info!(key_id = %escape(&identity.key_id), target = %target.name, principal = %grant.principal, "forward opened");

    let started = Instant::now();
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let mut cut = shared.cut.clone();
    let (rx, tx) = channel.split();
    let end = tokio::select! {
        r = pipe(rx, &tx, stream, &metrics, &up, &down) => match r {
            Ok(()) => "closed",
            Err(e) => {
                debug!(error = %e, "forward ended with an error");
                // A client that closes while the target still sends ends the copy with
                // "channel closed": a normal close (CRATE-NOTES).
                "closed"
            }
        },
        _ = cut.wait_for(|v| *v) => "shutdown",
    };
    // Close our side of the channel (`into_stream` did it on drop); bounded, the session
    // may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
    forwards.fetch_sub(1, Ordering::SeqCst);
    BastionMetrics::dec(&metrics.forwards_active);

    let mut closed = Event::new("forward.closed");
    closed.fields = base.fields;
    closed.fields.extend(decided.fields);
    let closed = closed
        .with("bytes_client_to_target", up.load(Ordering::Relaxed))
        .with("bytes_target_to_client", down.load(Ordering::Relaxed))
        .with("duration_ms", started.elapsed().as_millis() as u64)
        .with("end", end);
    let _ = shared.record(closed).await;
}

async fn refuse(
    shared: &Shared,
    base: &Event,
    reply: ChannelOpenHandle,
    r: ForwardRefusal,
    extra: Event,
) {
    shared.metrics.refused(r.code);
    let mut event = base.clone();
    event.fields.extend(extra.fields);
    let event = event.with("reason", r.code).with("message", &r.message);
    let _ = shared.record(event).await;
    info!(code = r.code, message = %r.message, "forward refused");
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
/// (THREATS row 20: such a forward used to outlive its SSH connection, with its target
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
        while let Some(msg) = rx.wait().await {
            match msg {
                ChannelMsg::Data { data } if writing => {
                    tw.write_all(&data).await?;
                    let n = data.len() as u64;
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
