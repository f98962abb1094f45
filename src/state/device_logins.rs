//! Device logins in progress shared by the replicas: a row per login in `device_logins`,
//! decided by the SQL functions of `migrations/V3__device_logins.sql` (an advisory lock
//! for starts, a row lock per poll), so a login started on one replica is polled on any
//! other with the same pace, limits and single use as in one process. The provider's code
//! is stored sealed under drawbridge's own code ([`crate::identity::device::seal`]). The
//! database's clock decides expiry and pace. A store the database does not answer refuses
//! (fail closed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::db::Db;
use crate::identity::Secret;
use crate::identity::device::pending::{
    Ended, Limits, POLL_STUCK, PollGate, PollOutcome, SLOW_DOWN_STEP, StartRefused, TOMBSTONE,
};
use crate::identity::device::seal;
use crate::identity::device::store::{DeviceStore, StoreDown};
use crate::identity::limiter::LimitFuture;

pub struct PgDevices {
    db: Arc<Db>,
    limits: Limits,
}

impl PgDevices {
    pub fn new(db: Arc<Db>, limits: Limits) -> PgDevices {
        PgDevices { db, limits }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn count(n: usize) -> i64 {
    i64::try_from(n.max(1)).unwrap_or(i64::MAX)
}

fn down(e: super::StateError) -> StoreDown {
    tracing::warn!(error = %e, "device login refused: shared state unavailable");
    StoreDown(e.to_string())
}

/// The per-source key of `ip`, as the memory store counts it.
fn source(ip: IpAddr) -> String {
    crate::util::source_prefix(ip, 32, 64).to_string()
}

impl DeviceStore for PgDevices {
    fn admit<'a>(
        &'a self,
        ip: IpAddr,
    ) -> LimitFuture<'a, Result<Result<(), StartRefused>, StoreDown>> {
        Box::pin(async move {
            let src = source(ip);
            let l = self.limits;
            let (pending, per_source, per_minute) = (
                count(l.pending),
                count(l.pending_per_source),
                count(l.starts_per_minute),
            );
            let tombstone = ms(TOMBSTONE);
            let verdict: String = self
                .db
                .run(|c| async move {
                    c.query_one(
                        "SELECT drawbridge_device_admit($1, $2, $3, $4, $5)",
                        &[&src, &pending, &per_source, &per_minute, &tombstone],
                    )
                    .await
                    .map(|r| r.get(0))
                })
                .await
                .map_err(down)?;
            Ok(match verdict.as_str() {
                "ok" => Ok(()),
                "source-full" => Err(StartRefused::SourceFull),
                "too-fast" => Err(StartRefused::TooFast),
                _ => Err(StartRefused::Full),
            })
        })
    }

    fn insert<'a>(
        &'a self,
        code: &'a str,
        provider_code: Secret<String>,
        ip: IpAddr,
        expires_in: Duration,
        interval: Duration,
    ) -> LimitFuture<'a, Result<bool, StoreDown>> {
        Box::pin(async move {
            let hash = seal::lookup(code).to_vec();
            let sealed = seal::seal(code, provider_code.expose()).map_err(StoreDown)?;
            let src = source(ip);
            let (expires, interval, pending) =
                (ms(expires_in), ms(interval), count(self.limits.pending));
            self.db
                .run(|c| async move {
                    c.query_one(
                        "SELECT drawbridge_device_insert($1, $2, $3, $4, $5, $6)",
                        &[&hash, &sealed, &src, &expires, &interval, &pending],
                    )
                    .await
                    .map(|r| r.get(0))
                })
                .await
                .map_err(down)
        })
    }

    fn gate<'a>(&'a self, code: &'a str) -> LimitFuture<'a, Result<PollGate, StoreDown>> {
        Box::pin(async move {
            let hash = seal::lookup(code).to_vec();
            let (tombstone, stuck, step) = (ms(TOMBSTONE), ms(POLL_STUCK), ms(SLOW_DOWN_STEP));
            let (verdict, interval, sealed): (String, Option<i64>, Option<Vec<u8>>) = self
                .db
                .run(|c| async move {
                    c.query_one(
                        "SELECT verdict, next_interval_ms, sealed_code \
                         FROM drawbridge_device_gate($1, $2, $3, $4)",
                        &[&hash, &tombstone, &stuck, &step],
                    )
                    .await
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                })
                .await
                .map_err(down)?;
            let interval = Duration::from_millis(interval.unwrap_or(0).max(0) as u64);
            Ok(match verdict.as_str() {
                "ask" => match sealed.as_deref().and_then(|s| seal::open(code, s)) {
                    Some(c) => PollGate::Ask(Secret::new(c)),
                    // Sealed under another code: not this login's (never expected).
                    None => PollGate::Unknown,
                },
                "slow-down" => PollGate::SlowDown(interval),
                "expired" => PollGate::Expired,
                "used" => PollGate::Ended(Ended::Used),
                "denied" => PollGate::Ended(Ended::Denied),
                "failed" => PollGate::Ended(Ended::Failed),
                _ => PollGate::Unknown,
            })
        })
    }

    fn finish<'a>(
        &'a self,
        code: &'a str,
        outcome: PollOutcome,
    ) -> LimitFuture<'a, Result<Duration, StoreDown>> {
        Box::pin(async move {
            let hash = seal::lookup(code).to_vec();
            let grow = if outcome == PollOutcome::SlowDown {
                ms(SLOW_DOWN_STEP)
            } else {
                0
            };
            let ended: Option<&'static str> = match outcome {
                PollOutcome::End(Ended::Used) => Some("used"),
                PollOutcome::End(Ended::Denied) => Some("denied"),
                PollOutcome::End(Ended::Failed) => Some("failed"),
                _ => None,
            };
            let interval: Option<i64> = self
                .db
                .run(|c| async move {
                    c.query_opt(
                        "UPDATE device_logins SET polling_since = NULL, \
                         interval_ms = interval_ms + $2, ended = coalesce($3, ended) \
                         WHERE code_hash = $1 RETURNING interval_ms",
                        &[&hash, &grow, &ended],
                    )
                    .await
                    .map(|r| r.map(|r| r.get(0)))
                })
                .await
                .map_err(down)?;
            Ok(interval
                .map(|i| Duration::from_millis(i.max(0) as u64))
                .unwrap_or(SLOW_DOWN_STEP))
        })
    }
}
