//! TOTP steps already used, shared by the replicas: a row per `(user, step)` in
//! `totp_used`, claimed by one `INSERT … ON CONFLICT DO NOTHING` (the primary key decides
//! between two replicas claiming at once). A claim the database does not answer is refused
//! (fail closed: a code is never accepted twice because the store was away).

use std::sync::Arc;

use super::db::Db;
use crate::identity::UsedCodes;
use crate::identity::limiter::LimitFuture;

pub struct PgUsedCodes {
    db: Arc<Db>,
}

impl PgUsedCodes {
    pub fn new(db: Arc<Db>) -> PgUsedCodes {
        PgUsedCodes { db }
    }
}

impl UsedCodes for PgUsedCodes {
    fn claim<'a>(&'a self, user: &'a str, step: u64) -> LimitFuture<'a, bool> {
        Box::pin(async move {
            let Ok(step) = i64::try_from(step) else {
                return false;
            };
            let user = crate::identity::user_key(user).to_string();
            let inserted = self
                .db
                .run(|c| async move {
                    c.execute(
                        "INSERT INTO totp_used (user_name, step) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                        &[&user, &step],
                    )
                    .await
                })
                .await;
            match inserted {
                Ok(n) => n == 1,
                Err(e) => {
                    tracing::warn!(error = %e, "one-time code refused: shared state unavailable");
                    false
                }
            }
        })
    }
}
