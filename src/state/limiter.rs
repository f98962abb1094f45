//! Failed-login limits shared by every replica, in `login_attempts`.
//!
//! [`PgLimiter::reserve`] is one call of the SQL function `drawbridge_login_reserve`
//! (`migrations/`): in one transaction it takes advisory locks on the user's and the
//! address's keys (in a fixed order), counts what is in the window and, when both are
//! under the limit, inserts the attempt under both keys. So five guesses spread over
//! three replicas, even at the same instant, are counted as five for the user, before any
//! password is hashed. When the database does not answer the attempt is refused
//! (`Refused::Unavailable`): a password is never tried uncounted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::db::Db;
use crate::identity::limiter::{Attempt, LimitFuture, LoginLimiter, Refused, keys_of};

/// The shared limiter.
pub struct PgLimiter {
    db: Arc<Db>,
    max_failures: i32,
    window: Duration,
}

impl PgLimiter {
    pub fn new(db: Arc<Db>, max_failures: u32, window: Duration) -> PgLimiter {
        PgLimiter {
            db,
            max_failures: i32::try_from(max_failures.max(1)).unwrap_or(i32::MAX),
            window,
        }
    }
}

fn ms(t: SystemTime) -> i64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LoginLimiter for PgLimiter {
    fn reserve<'a>(
        &'a self,
        user: &'a str,
        client: IpAddr,
        now: SystemTime,
    ) -> LimitFuture<'a, Result<Attempt, Refused>> {
        Box::pin(async move {
            let (user_key, addr_key) = keys_of(user, client);
            let now_ms = ms(now);
            let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
            let max = self.max_failures;
            let row = self
                .db
                .run(|c| async move {
                    c.query_one(
                        "SELECT user_row, addr_row, retry_ms \
                         FROM drawbridge_login_reserve($1, $2, $3, $4, $5)",
                        &[&user_key, &addr_key, &now_ms, &max, &window_ms],
                    )
                    .await
                })
                .await
                .map_err(|e| Refused::Unavailable(e.to_string()))?;
            let user_row: Option<i64> = row.get(0);
            let addr_row: Option<i64> = row.get(1);
            let retry_ms: i64 = row.get(2);
            match (user_row, addr_row) {
                (Some(u), Some(a)) => Ok(Attempt {
                    user: user.to_owned(),
                    client,
                    at: now,
                    rows: Some((u, a)),
                }),
                _ => Err(Refused::RetryAfter(Duration::from_millis(
                    u64::try_from(retry_ms).unwrap_or(1000),
                ))),
            }
        })
    }

    fn success<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            let (user_key, _) = keys_of(&attempt.user, attempt.client);
            let addr_row = attempt.rows.map(|(_, a)| a).unwrap_or(0);
            let done = self
                .db
                .run(|c| async move {
                    c.execute(
                        "DELETE FROM login_attempts WHERE key = $1 OR id = $2",
                        &[&user_key, &addr_row],
                    )
                    .await
                })
                .await;
            if let Err(e) = done {
                // The attempt stays counted: a later login of this user may be refused
                // sooner, never later.
                tracing::warn!(error = %e, "could not clear a user's failed logins");
            }
        })
    }

    fn refund<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()> {
        Box::pin(async move {
            let (u, a) = attempt.rows.unwrap_or((0, 0));
            let done = self
                .db
                .run(|c| async move {
                    c.execute("DELETE FROM login_attempts WHERE id IN ($1, $2)", &[&u, &a])
                        .await
                })
                .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not give back an attempt never tried");
            }
        })
    }
}
