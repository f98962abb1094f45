//! What `drawbridge serve` builds from `[state] postgres`: the schema migrated, the
//! shared connection, and each part's PostgreSQL implementation.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::StateError;
use super::audit_sink::PgSink;
use super::connect::Target;
use super::counts::PgCounts;
use super::db::Db;
use super::forwards::PgRegistry;
use super::limiter::PgLimiter;
use crate::audit::{Audit, AuditError};
use crate::config::Config;

/// The shared parts of one replica.
#[derive(Clone)]
pub struct Shared {
    pub db: Arc<Db>,
    pub limiter: Arc<PgLimiter>,
    pub counts: Arc<PgCounts>,
    pub forwards: Arc<PgRegistry>,
    pub used_codes: Arc<super::used_codes::PgUsedCodes>,
}

impl Shared {
    /// Migrates the schema and builds the parts (the service does not start without the
    /// database).
    pub async fn start(target: Target, config: &Config) -> Result<Shared, StateError> {
        let applied = super::migrate::run(&target).await?;
        tracing::info!(database = %target.shown, replica = %target.replica, applied,
            "shared state ready");
        let db = Db::new(target);
        Ok(Shared {
            limiter: Arc::new(PgLimiter::new(
                db.clone(),
                config.login.max_failures,
                config.login.window,
            )),
            counts: Arc::new(PgCounts::new(db.clone())),
            forwards: Arc::new(PgRegistry::new(db.clone())),
            used_codes: Arc::new(super::used_codes::PgUsedCodes::new(db.clone())),
            db,
        })
    }

    /// This replica's audit chain in the database.
    pub fn audit(&self) -> Result<Audit, AuditError> {
        let target = self.db.target().clone();
        let replica = target.replica.clone();
        let sink = PgSink::open(target)
            .map_err(|e| AuditError::Unavailable(format!("the audit chain in PostgreSQL: {e}")))?;
        Audit::with_sink(Box::new(sink), &replica)
    }

    /// The bastion's counts and registry.
    pub fn bastion(&self) -> crate::bastion::BastionState {
        crate::bastion::BastionState {
            counts: self.counts.clone(),
            registry: self.forwards.clone(),
        }
    }

    /// Renews this replica's leases until `stop`.
    pub fn spawn_leases(&self, login_window: std::time::Duration, stop: CancellationToken) {
        tokio::spawn(super::lease::run(
            self.db.clone(),
            self.counts.clone(),
            self.forwards.clone(),
            login_window,
            stop,
        ));
    }
}
