//! Leases: every third of `[state] lease` a replica renews the rows of its open
//! connections and forwards (and its own row in `replicas`), and deletes every row whose
//! lease ran out: a row whose delete failed during an outage (no longer renewed), and those of a replica that died (`kill -9`, a lost machine) stop counting against
//! the per-user cap and leave the list of open forwards within one lease, without anyone
//! cleaning up by hand. Failed-login rows older than the login window go too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::counts::PgCounts;
use super::db::Db;
use super::forwards::PgRegistry;

/// Renews until `stop`.
pub async fn run(
    db: Arc<Db>,
    counts: Arc<PgCounts>,
    forwards: Arc<PgRegistry>,
    login_window: Duration,
    stop: CancellationToken,
) {
    let every = db.target().lease / 3;
    loop {
        if let Err(e) = renew(&db, &counts, &forwards, login_window).await {
            tracing::warn!(error = %e, "could not renew this replica's leases");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One renewal (also called by tests).
pub async fn renew(
    db: &Db,
    counts: &PgCounts,
    forwards: &PgRegistry,
    login_window: Duration,
) -> Result<(), super::StateError> {
    let replica = db.replica().to_string();
    let lease_ms = i64::try_from(db.target().lease.as_millis()).unwrap_or(15_000);
    // Only what is open is renewed: a row left behind (its delete failed) expires.
    let conns = counts.live();
    let fwds = forwards.live();
    let window_ms = i64::try_from(login_window.as_millis()).unwrap_or(i64::MAX);
    db.run(|c| async move {
        let lease = "now() + $2::bigint * interval '1 millisecond'";
        c.execute(
            &format!(
                "INSERT INTO replicas (replica, lease_until) VALUES ($1, {lease}) \
                 ON CONFLICT (replica) DO UPDATE SET lease_until = EXCLUDED.lease_until"
            ),
            &[&replica, &lease_ms],
        )
        .await?;
        for table in ["ssh_connections", "open_forwards"] {
            let (col, live) = if table == "ssh_connections" {
                ("conn", &conns)
            } else {
                ("forward", &fwds)
            };
            c.execute(
                &format!(
                    "UPDATE {table} SET lease_until = {lease} \
                     WHERE replica = $1 AND {col} = ANY($3)"
                ),
                &[&replica, &lease_ms, live],
            )
            .await?;
            c.execute(
                &format!("DELETE FROM {table} WHERE lease_until < now()"),
                &[],
            )
            .await?;
        }
        // A TOTP code is valid one 30 s step either side of now: older steps never return.
        c.execute(
            "DELETE FROM totp_used WHERE step < (extract(epoch from now()) / 30)::bigint - 10",
            &[],
        )
        .await?;
        // Device logins 10 minutes past their expiry (pending::TOMBSTONE), and starts
        // older than the minute they count in.
        c.execute(
            "DELETE FROM device_logins WHERE expires_at < now() - interval '600 seconds'",
            &[],
        )
        .await?;
        c.execute(
            "DELETE FROM device_starts WHERE at < now() - interval '1 minute'",
            &[],
        )
        .await?;
        c.execute(
            "DELETE FROM replicas WHERE lease_until < now() - interval '1 day'",
            &[],
        )
        .await?;
        c.execute(
            "DELETE FROM login_attempts WHERE at_ms < \
             (extract(epoch from now()) * 1000)::bigint - $1",
            &[&window_ms],
        )
        .await?;
        Ok(())
    })
    .await
}

/// The ids of a replica's rows that its lease renews (its connections or its forwards):
/// any other row of the replica's is stale.
#[derive(Debug, Default)]
pub struct LiveIds(Mutex<HashSet<i64>>);

impl LiveIds {
    pub fn ids(&self) -> Vec<i64> {
        let live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().copied().collect()
    }

    pub fn set(&self, id: i64, on: bool) {
        let mut live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            live.insert(id);
        } else {
            live.remove(&id);
        }
    }
}
