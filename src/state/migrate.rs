//! The schema, created and migrated at start from `migrations/` (refinery, embedded in the
//! binary). Replicas starting together take turns: an advisory lock is held around the
//! run, so two never apply the same migration at once.

use std::time::Duration;

use tokio_postgres::NoTls;

use super::StateError;
use super::connect::Target;
use super::db::db_error;

refinery::embed_migrations!("migrations");

/// Lock key of the migration run (any fixed number; the other locks hash text).
const MIGRATION_LOCK: i64 = 0x6472_6177_6272_6964;
/// Waiting for the database at start at most this long (it may be starting too).
pub(super) const START_WAIT: Duration = Duration::from_secs(10);

/// Connects (retrying for a few seconds), then brings the schema up to date. The service
/// does not start without it.
pub async fn run(target: &Target) -> Result<usize, StateError> {
    let started = std::time::Instant::now();
    let (mut client, connection) = loop {
        match target.pg.connect(NoTls).await {
            Ok(c) => break c,
            Err(e) if started.elapsed() < START_WAIT => {
                tracing::info!(database = %target.shown, error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(StateError::Unavailable(format!(
                    "cannot connect to {}: {e}",
                    target.shown
                )));
            }
        }
    };
    let conn = tokio::spawn(connection);
    let fail = |e: tokio_postgres::Error| StateError::Unavailable(db_error(&e));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let report = migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| StateError::Unavailable(format!("migrating the schema: {e}")));
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = conn.await;
    Ok(report?.applied_migrations().len())
}
