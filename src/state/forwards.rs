//! The open forwards of every replica: a row per forward in `open_forwards`, written by
//! the replica that holds it, renewed with the lease ([`super::lease`]), deleted when the
//! forward ends; a dead replica's rows expire with their lease.
//!
//! Cutting stays local: each replica re-checks its own forwards whenever the policy it has
//! loaded changes (each replica loads the policy itself), so [`PgRegistry::open`] lists
//! this replica's forwards, and the rows are what operators (and `session list --live`)
//! see of all of them.

use std::sync::Arc;

use super::db::Db;
use super::lease::LiveIds;
use crate::bastion::registry::{ForwardRegistry, MemoryRegistry, OpenForward};

/// This replica's registry, mirrored in PostgreSQL.
pub struct PgRegistry {
    db: Arc<Db>,
    local: MemoryRegistry,
    live: LiveIds,
}

impl PgRegistry {
    pub fn new(db: Arc<Db>) -> PgRegistry {
        PgRegistry {
            db,
            local: MemoryRegistry::default(),
            live: LiveIds::default(),
        }
    }

    /// The forwards whose rows this replica renews.
    pub fn live(&self) -> Vec<i64> {
        self.live.ids()
    }

    fn spawn(&self, what: &'static str, op: Op) {
        let db = self.db.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let replica = db.replica().to_string();
            let lease_ms = i64::try_from(db.target().lease.as_millis()).unwrap_or(15_000);
            let done = db
                .run(|c| async move {
                    match op {
                        Op::Insert {
                            id,
                            conn,
                            key_id,
                            serial,
                            target,
                        } => {
                            // A row left by this replica's previous life (same name, ids
                            // counted from 1 again) is taken over, not kept.
                            c.execute(
                                "INSERT INTO open_forwards \
                                 (replica, forward, conn, key_id, serial, target, lease_until) \
                                 VALUES ($1, $2, $3, $4, $5, $6, \
                                         now() + $7::bigint * interval '1 millisecond') \
                                 ON CONFLICT (replica, forward) DO UPDATE SET \
                                 conn = EXCLUDED.conn, key_id = EXCLUDED.key_id, \
                                 serial = EXCLUDED.serial, target = EXCLUDED.target, \
                                 opened_at = now(), lease_until = EXCLUDED.lease_until",
                                &[&replica, &id, &conn, &key_id, &serial, &target, &lease_ms],
                            )
                            .await
                        }
                        Op::Delete { id } => {
                            c.execute(
                                "DELETE FROM open_forwards WHERE replica = $1 AND forward = $2",
                                &[&replica, &id],
                            )
                            .await
                        }
                    }
                })
                .await;
            if let Err(e) = done {
                // Cutting is local and unaffected; the shared list misses this forward (or
                // keeps a closed one until the lease task deletes rows not open here).
                tracing::warn!(error = %e, "could not {what} an open forward's row");
            }
        });
    }
}

enum Op {
    Insert {
        id: i64,
        conn: i64,
        key_id: String,
        serial: String,
        target: String,
    },
    Delete {
        id: i64,
    },
}

fn id64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ForwardRegistry for PgRegistry {
    fn insert(&self, forward: Arc<OpenForward>) {
        let id = id64(forward.id);
        self.live.set(id, true);
        let op = Op::Insert {
            id,
            conn: id64(forward.conn),
            key_id: crate::util::shown(&forward.identity.key_id),
            serial: forward.identity.serial.to_string(),
            target: forward.target.clone(),
        };
        self.local.insert(forward);
        self.spawn("write", op);
    }

    fn remove(&self, id: u64) {
        self.local.remove(id);
        self.live.set(id64(id), false);
        self.spawn("delete", Op::Delete { id: id64(id) });
    }

    fn open(&self) -> Vec<Arc<OpenForward>> {
        self.local.open()
    }
}
