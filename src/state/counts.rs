//! Authenticated SSH connections per user across replicas: a row per connection in
//! `ssh_connections`, taken by the SQL function `drawbridge_take_connection` (an advisory
//! lock per key id, so two replicas never both take the last place), renewed by its
//! replica ([`super::lease`]), deleted when the connection ends. The rows of a replica
//! that died stop counting when their lease runs out.

use std::sync::Arc;

use super::db::Db;
use super::lease::LiveIds;
use crate::bastion::counts::{ConnectionCounts, CountFuture, NoPlace};

/// The shared count of this replica.
pub struct PgCounts {
    db: Arc<Db>,
    /// This replica's connections holding (or taking) a place: the rows its lease renews.
    live: LiveIds,
}

impl PgCounts {
    pub fn new(db: Arc<Db>) -> PgCounts {
        PgCounts {
            db,
            live: LiveIds::default(),
        }
    }

    /// The connections whose rows this replica renews; any other row of its is stale.
    pub fn live(&self) -> Vec<i64> {
        self.live.ids()
    }
}

fn conn_id(conn: u64) -> i64 {
    i64::try_from(conn).unwrap_or(i64::MAX)
}

impl ConnectionCounts for PgCounts {
    fn take<'a>(
        &'a self,
        key_id: &'a str,
        conn: u64,
        max: usize,
    ) -> CountFuture<'a, Result<(), NoPlace>> {
        Box::pin(async move {
            let replica = self.db.replica().to_string();
            let lease_ms = i64::try_from(self.db.target().lease.as_millis()).unwrap_or(15_000);
            let max = i32::try_from(max).unwrap_or(i32::MAX);
            let id = conn_id(conn);
            // Live before the row exists, so the lease never deletes a row being taken.
            self.live.set(id, true);
            let taken = self
                .db
                .run(|c| async move {
                    c.query_one(
                        "SELECT drawbridge_take_connection($1, $2, $3, $4, $5)",
                        &[&replica, &id, &key_id, &max, &lease_ms],
                    )
                    .await
                    .map(|r| r.get(0))
                })
                .await;
            match taken {
                Ok(true) => Ok(()),
                Ok(false) => {
                    self.live.set(id, false);
                    Err(NoPlace::Full)
                }
                Err(e) => {
                    self.live.set(id, false);
                    Err(NoPlace::Unavailable(e.to_string()))
                }
            }
        })
    }

    fn give_back(&self, _key_id: &str, conn: u64) {
        self.live.set(conn_id(conn), false);
        let db = self.db.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let replica = db.replica().to_string();
            let id = conn_id(conn);
            let done = db
                .run(|c| async move {
                    c.execute(
                        "DELETE FROM ssh_connections WHERE replica = $1 AND conn = $2",
                        &[&replica, &id],
                    )
                    .await
                })
                .await;
            if let Err(e) = done {
                // The lease task deletes the row (it is no longer live); until then the
                // user has one place fewer, never one more.
                tracing::warn!(error = %e, "could not give back a connection place");
            }
        });
    }
}
