//! The accept loop: the pre-auth caps at accept, one task per connection (on a shard), the periodic
//! flush of counted refusals, and shutdown (stop accepting, grace, cut).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::connection::serve_connection;
use super::preauth;
use super::refusal_budget::{self, Budget};
use super::russh_config::russh_config;
use super::shards::Shards;
use super::shared::Shared;
use super::verify::TrustedCas;
use super::{BastionMetrics, BastionParts};
use crate::audit::AuditEvent;

/// Resolves once shutdown is asked for.
pub(super) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    // A dropped sender counts as "shut down": nobody can stop us otherwise.
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs the bastion until `shutdown` (see [`super::run`]).
pub(super) async fn run(parts: BastionParts, state: super::BastionState) -> anyhow::Result<()> {
    let BastionParts {
        listener,
        cfg,
        max_cert_validity: max_validity,
        keys,
        policy,
        audit,
        metrics,
        mut shutdown,
        recording,
    } = parts;
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
        registry: state.registry,
        counts: state.counts,
        unauth,
        refusals: Budget::default(),
        next_conn: AtomicU64::new(1),
        recording: recording.map(Arc::new),
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
    // Each connection runs on one single-threaded shard (see `shards`).
    let mut shards = Shards::per_core()?;
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
                            debug!(%peer, reason = %refused.code(), "no pre-auth place; connection dropped");
                            drop(socket);
                            continue;
                        }
                    };
                    // The socket moves to the shard's own reactor.
                    let socket = match socket.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(%peer, error = %e, "cannot hand the connection to a shard");
                            continue;
                        }
                    };
                    let (shared, config, drain) = (shared.clone(), config.clone(), drain_rx.clone());
                    conns.spawn_on(
                        async move {
                            match TcpStream::from_std(socket) {
                                Ok(socket) => {
                                    serve_connection(shared, config, socket, peer, slot, drain).await
                                }
                                Err(e) => debug!(%peer, error = %e, "cannot register the connection on its shard"),
                            }
                        },
                        &shards.next(),
                    );
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
    // Joins the shards' threads: blocking, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || shards.stop()).await;
    stop_rechecks();
    flusher.abort();
    flush_refusals(&shared).await;
    Ok(())
}

/// Writes the refusals counted rather than recorded ([`refusal_budget`]): one
/// `ssh.auth.failed.repeated` record per source and reason.
async fn flush_refusals(shared: &Shared) {
    for c in shared.refusals.take_counted() {
        let ev = AuditEvent::SshAuthFailedRepeated {
            source: c.source.to_string(),
            reason: c.reason,
            repeats: c.repeats,
            since: crate::util::rfc3339(c.since),
            policy_version: shared.policy.current().version.clone(),
            rule: super::codes::rule_of(c.reason),
        };
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
