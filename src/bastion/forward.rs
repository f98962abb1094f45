//! `direct-tcpip`: decide under the policy loaded now, record, dial the inventory
//! address, accept the channel, pipe bytes both ways until the end or a cut, record the
//! close.
//!
//! Order: decide → `forward.opened` on disk → register (live re-checks see it from here
//! on) → dial → accept. A forward whose record cannot be written never dials. A failed
//! dial ends the forward with `forward.closed`, `end` = `connect-failed` or
//! `connect-timeout` (every `forward.opened` is followed by one `forward.closed`), and the
//! client gets the channel-open failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::BastionMetrics;
use super::registry;
use super::shared::{ChannelSlot, Shared};
use super::targets::{malformed, resolve_for};
use super::verify::CertIdentity;
use crate::audit::Event;
use crate::policy::{Carried, Held, Host, Policy, Via};
use crate::util::escape;

/// Largest read from the target at once (PERF-NOTES: 64 KiB buffers); russh cuts it into
/// packets of the client's maximum size.
const COPY_BUFFER: usize = 64 * 1024;

pub(super) struct Request {
    pub shared: Arc<Shared>,
    pub identity: Arc<CertIdentity>,
    /// The SSH connection's number.
    pub conn: u64,
    /// Ends the SSH connection with a message (a cut of the certificate itself).
    pub cert_cut: Arc<tokio::sync::watch::Sender<Option<String>>>,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardRefusal {
    pub code: &'static str,
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

fn prohibited(code: &'static str, message: String) -> ForwardRefusal {
    ForwardRefusal {
        code,
        message,
        ssh_code: 1,
        ..ForwardRefusal::default()
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
    let carried = Carried {
        key_id: &id.key_id,
        serial: id.serial,
        key_fingerprint: &id.key_fingerprint,
        principals: &id.principals,
        idp_groups: &id.idp_groups,
    };
    let held = policy
        .still_holds(&carried, now, Some(id.age(now)))
        .map_err(|lost| ForwardRefusal {
            rule: Some(lost.rule()),
            lost_principal: lost.principal().map(str::to_string),
            ..prohibited(lost.code(), lost.message())
        })?;
    if now >= id.valid_before {
        return Err(prohibited(
            "cert-expired",
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

fn via(v: &Via) -> String {
    match v {
        Via::User => "user".into(),
        Via::Group(g) => format!("group:{g}"),
        Via::Temporary { reason, .. } => format!("temporary:{reason}"),
    }
}

/// The `grants` field of `forward.opened`: each granting principal and how it is held.
fn grants_field(grants: &[Held]) -> serde_json::Value {
    grants
        .iter()
        .map(|g| {
            json!({
                "principal": g.principal,
                "via": g.via.iter().map(via).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub(super) async fn run(req: Request) {
    let Request {
        shared,
        identity,
        conn,
        cert_cut,
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

    let allowed = match authorize(&policy, &identity, &host, port, now) {
        Ok(ok) => ok,
        Err(r) => return refuse(&shared, &base, reply, r, Event::new("")).await,
    };
    let target = allowed.target;
    let Some(first) = allowed.grants.first() else {
        // `authorize` never allows without a granting principal; refuse if it ever did.
        let r = prohibited("denied", super::targets::not_reachable(&host));
        return refuse(&shared, &base, reply, r, Event::new("")).await;
    };
    let decided = Event::new("")
        .with("target", &target.name)
        .with("address", format!("{}:{}", target.address, target.port))
        .with("principal", &first.principal)
        .with("via", first.via.first().map(via).unwrap_or_default())
        .with("grants", grants_field(&allowed.grants));

    // The record is on disk before anything reaches the target (fail closed).
    let mut opened = Event::new("forward.opened");
    opened.fields = base.fields.clone();
    opened.fields.extend(decided.fields.clone());
    if !shared.record(opened.clone()).await {
        let r = prohibited(
            super::codes::AUDIT_UNAVAILABLE,
            "the bastion cannot write its audit log; try again later".into(),
        );
        return refuse(&shared, &base, reply, r, decided).await;
    }
    let mut closed = Event::new("forward.closed");
    closed.fields = opened.fields;
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

    // F5: dial with a deadline; the SSH connection stays up whatever happens here.
    let dial = TcpStream::connect((target.address.as_str(), target.port));
    let failed = |code: &'static str, message: String| ForwardRefusal {
        code,
        message,
        ssh_code: 2,
        ..ForwardRefusal::default()
    };
    let stream = match tokio::time::timeout(shared.cfg.connect_timeout, dial).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let r = failed(
                "connect-failed",
                format!("{}: cannot connect: {e}", target.name),
            );
            return end_unopened(&shared, closed, reply, r, started).await;
        }
        Err(_) => {
            let r = failed(
                "connect-timeout",
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
                // "channel closed": a normal close (CRATE-NOTES).
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

    let mut closed = closed
        .with("bytes_client_to_target", up.load(Ordering::Relaxed))
        .with("bytes_target_to_client", down.load(Ordering::Relaxed))
        .with("duration_ms", started.elapsed().as_millis() as u64)
        .with("end", end);
    // A forward whose connection was ended for its cut (the reason goes first) is cut too.
    if let Some(cut) = registration_cut {
        closed = closed.with("end", "cut").with("rule", &cut.rule);
    }
    let _ = shared.record(closed).await;
}

/// Ends a forward cut before its channel was accepted.
async fn end_cut_unopened(
    shared: &Shared,
    closed: Event,
    reply: ChannelOpenHandle,
    cut: &registry::Cut,
    started: Instant,
) {
    let r = prohibited("cut", cut.message.clone());
    let closed = closed.with("rule", &cut.rule);
    end_unopened(shared, closed, reply, r, started).await
}

/// Ends a forward recorded as opened that never reached the client: `forward.closed`
/// with `end` = the code, then the channel-open failure.
async fn end_unopened(
    shared: &Shared,
    closed: Event,
    reply: ChannelOpenHandle,
    r: ForwardRefusal,
    started: Instant,
) {
    shared.metrics.refused(r.code);
    let closed = closed
        .with("bytes_client_to_target", 0)
        .with("bytes_target_to_client", 0)
        .with("duration_ms", started.elapsed().as_millis() as u64)
        .with("end", r.code)
        .with("reason", r.code)
        .with("message", &r.message);
    let _ = shared.record(closed).await;
    info!(code = r.code, message = %r.message, "forward failed");
    reply
        .reject(ChannelOpenFailure::Other {
            code: r.ssh_code,
            reason: r.message,
        })
        .await;
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
    let mut event = event.with("reason", r.code).with("message", &r.message);
    if let Some(rule) = &r.rule {
        event = event.with("rule", rule);
    }
    if let Some(p) = &r.lost_principal {
        event = event.with("lost_principal", escape(p));
    }
    if let Some(d) = &r.detail {
        event = event.with("detail", d);
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::UNIX_EPOCH;

    const POLICY: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
labels = { role = "web" }
[hosts.web-2]
address = "10.0.0.2:2222"
labels = { role = "web" }
[hosts.db-1]
address = "10.0.0.3"
labels = { role = "db" }
[hosts.echo-1]
address = "10.0.0.1:7"

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]
[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]
[principals.short]
hosts = ["web-1"]
logins = ["root"]
max_ttl = "1m"
[principals.dba]
hosts = ["db-1"]
logins = ["postgres"]

[groups.deployers]
members = ["alice", "carol"]
principals = ["web-deploy"]
[groups.ops]
members = ["carol"]
principals = ["web-admin"]
[groups.idp-ops]
members = []
principals = ["web-admin"]
[users.dave]
principals = ["short", "web-deploy"]

[[temporary]]
user = "bob"
principal = "dba"
until = "2026-12-01T00:00:00Z"
reason = "INC-4711"

[[revoked]]
serial = 666
"#;

    /// 2026-12-01T00:00:00Z, when bob's temporary grant ends.
    const UNTIL: u64 = 1_796_083_200;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A certificate issued at `issued` (valid_after backdated 60 s), valid 1 h.
    fn cert(
        key_id: &str,
        principals: &[&str],
        idp: &[&str],
        serial: u64,
        issued: u64,
    ) -> CertIdentity {
        CertIdentity {
            key_id: key_id.into(),
            serial,
            principals: principals.iter().map(|s| s.to_string()).collect(),
            groups: vec![],
            idp_groups: idp.iter().map(|s| s.to_string()).collect(),
            valid_after: at(issued - 60),
            valid_before: at(issued + 3600),
            ca_fingerprint: String::new(),
            key_fingerprint: String::new(),
            reason: None,
        }
    }

    enum Want {
        /// Allowed to this target, granted by these principals.
        Allow(&'static str, &'static [&'static str]),
        /// Refused with this code, and a message equal to (`=`) or containing the text.
        Refuse(&'static str, &'static str),
    }
    use Want::*;

    #[test]
    fn authorize_table() {
        let p = Policy::from_toml("p.toml", POLICY).unwrap();
        let t0 = UNTIL - 3600;
        let lost = |role: &str| {
            format!(
                "=your certificate carries role {role} that you no longer hold: get a new certificate"
            )
        };
        let lost_admin = lost("web-admin");
        let lost_dba = lost("dba");
        #[rustfmt::skip]
        let cases: Vec<(&str, CertIdentity, &str, u32, u64, Want)> = vec![
            ("every role held, both grant the host",
             cert("carol", &["web-deploy", "web-admin"], &[], 1, t0), "web-1", 22, t0 + 10,
             Allow("web-1", &["web-deploy", "web-admin"])),
            ("every role held, one grants the host",
             cert("carol", &["web-deploy", "web-admin"], &[], 1, t0), "web-2", 22, t0 + 10,
             Allow("web-2", &["web-admin"])),
            ("a role lost from a group, another still grants the host",
             cert("alice", &["web-deploy", "web-admin"], &[], 1, t0), "web-1", 22, t0 + 10,
             Refuse("denied", Box::leak(lost_admin.clone().into_boxed_str()))),
            ("a role held through the identity provider's group",
             cert("alice", &["web-deploy", "web-admin"], &["idp-ops"], 1, t0), "web-1", 22, t0 + 10,
             Allow("web-1", &["web-deploy", "web-admin"])),
            ("a temporary grant before its until",
             cert("bob", &["dba"], &[], 1, t0), "db-1", 22, UNTIL - 1,
             Allow("db-1", &["dba"])),
            ("a temporary grant at its until",
             cert("bob", &["dba"], &[], 1, t0), "db-1", 22, UNTIL,
             Refuse("denied", Box::leak(lost_dba.clone().into_boxed_str()))),
            ("a role past its max_ttl, another grants the host",
             cert("dave", &["short", "web-deploy"], &[], 1, t0), "web-1", 22, t0 + 120,
             Refuse("ttl-exceeded", "carries role short that allows certificates up to 1m old")),
            ("within max_ttl",
             cert("dave", &["short", "web-deploy"], &[], 1, t0), "web-1", 22, t0 + 30,
             Allow("web-1", &["short", "web-deploy"])),
            ("revoked by serial",
             cert("carol", &["web-admin"], &[], 666, t0), "web-1", 22, t0 + 10,
             Refuse("revoked", "=your certificate is revoked")),
            ("expired",
             cert("carol", &["web-admin"], &[], 1, t0), "web-1", 22, t0 + 3600,
             Refuse("cert-expired", "has expired")),
            ("a host no role grants: said as for an unknown host",
             cert("carol", &["web-admin"], &[], 1, t0), "db-1", 22, t0 + 10,
             Refuse("denied", "=host \"db-1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("not in the inventory",
             cert("carol", &["web-admin"], &[], 1, t0), "db-9", 22, t0 + 10,
             Refuse("unknown-host", "=host \"db-9\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("a shared address: only the caller's hosts are named",
             cert("carol", &["web-deploy"], &[], 1, t0), "10.0.0.1", 23, t0 + 10,
             Refuse("unknown-host", "=address \"10.0.0.1\" is not forwarded by address; connect by host name: web-1")),
            ("a shared address, exact port of a host not granted",
             cert("carol", &["web-deploy"], &[], 1, t0), "10.0.0.1", 7, t0 + 10,
             Refuse("denied", "=host \"10.0.0.1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("by exact address",
             cert("carol", &["web-admin"], &[], 1, t0), "10.0.0.2", 2222, t0 + 10,
             Allow("web-2", &["web-admin"])),
            ("another port of a reachable host: its port is told",
             cert("carol", &["web-admin"], &[], 1, t0), "web-2", 80, t0 + 10,
             Refuse("unknown-host", "only its inventory port 2222 (or 22)")),
            ("another port of an unreachable host: nothing is told",
             cert("carol", &["web-deploy"], &[], 1, t0), "web-2", 80, t0 + 10,
             Refuse("denied", "=host \"web-2\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("a spelling hint for a reachable host",
             cert("carol", &["web-admin"], &[], 1, t0), "WEB-1", 22, t0 + 10,
             Refuse("unknown-host", "write \"web-1\"")),
            ("control characters are refused first, whatever the certificate",
             cert("alice", &["web-deploy", "web-admin"], &[], 1, t0), "web-1\n", 22, t0 + 10,
             Refuse("unknown-host", "control characters in the host name")),
            ("no spelling hint for an unreachable host",
             cert("carol", &["web-admin"], &[], 1, t0), "DB-1", 22, t0 + 10,
             Refuse("unknown-host", "=host \"DB-1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
        ];
        for (name, id, host, port, now, want) in cases {
            let got = authorize(&p, &id, host, port, at(now));
            match (want, got) {
                (Allow(target, principals), Ok(a)) => {
                    assert_eq!(a.target.name, target, "{name}");
                    let names: Vec<&str> = a.grants.iter().map(|g| g.principal.as_str()).collect();
                    assert_eq!(names, principals, "{name}");
                }
                (Refuse(code, text), Err(r)) => {
                    assert_eq!(r.code, code, "{name}: {r:?}");
                    match text.strip_prefix('=') {
                        Some(exact) => assert_eq!(r.message, exact, "{name}"),
                        None => assert!(r.message.contains(text), "{name}: {r:?}"),
                    }
                    for secret in ["echo-1", "10.0.0.3", "10.0.0.2"] {
                        assert!(!r.message.contains(secret), "{name}: {r:?}");
                    }
                }
                (Allow(..), Err(r)) => panic!("{name}: refused {r:?}"),
                (Refuse(..), Ok(a)) => panic!("{name}: allowed {a:?}"),
            }
        }
    }

    #[test]
    fn refusals_name_the_rule_for_the_audit_log() {
        let p = Policy::from_toml("p.toml", POLICY).unwrap();
        let t0 = UNTIL - 3600;
        let r = authorize(
            &p,
            &cert("alice", &["web-deploy", "web-admin"], &[], 1, t0),
            "web-1",
            22,
            at(t0),
        )
        .unwrap_err();
        assert_eq!(r.lost_principal.as_deref(), Some("web-admin"));
        assert!(
            r.rule
                .as_deref()
                .is_some_and(|x| x.contains("web-admin no longer held")),
            "{r:?}"
        );
        let r = authorize(
            &p,
            &cert("carol", &["web-admin"], &[], 666, t0),
            "web-1",
            22,
            at(t0),
        )
        .unwrap_err();
        assert!(
            r.rule
                .as_deref()
                .is_some_and(|x| x.starts_with("[[revoked]] p.toml:")),
            "{r:?}"
        );
        let r = authorize(
            &p,
            &cert("carol", &["web-deploy"], &[], 1, t0),
            "10.0.0.1",
            23,
            at(t0),
        )
        .unwrap_err();
        assert!(
            r.detail.as_deref().is_some_and(|d| d.contains("echo-1")),
            "{r:?}"
        );
    }
}
