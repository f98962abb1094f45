//! The HTTPS API (axum): login, certificate issuance, CA and host-trust material.
//!
//! Invariant: callers are authenticated (a `FromRequestParts` extractor) before any body is
//! read, so an anonymous request with a bad body gets 401, not 400 or 413.

mod device;
pub mod disk;
pub mod error;
pub mod metrics;
mod public;
pub mod repeats;
pub mod request;
mod routes;
pub mod server;
pub mod ssh_config;

pub use routes::{Caller, router};

use std::sync::Arc;

use crate::audit::Audit;
use crate::config::Config;
use crate::identity::Authenticator;
use crate::issuer::keys::IssuerKeys;
use crate::policy::Policy;
use crate::policy::watch::PolicyStore;
use metrics::Metrics;

/// With `[state] postgres`: the database (for `/healthz`), the shared login limiter and
/// the shared store of used one-time codes.
pub type SharedLogin = (
    Arc<crate::state::db::Db>,
    Arc<dyn crate::identity::LoginLimiter>,
    Arc<dyn crate::identity::UsedCodes>,
);

/// Everything the handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub policy: Arc<PolicyStore>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Load and rate-limit refusals counted rather than recorded one by one.
    pub repeats: repeats::Repeats,
    /// Refused bearer tokens recorded one by one per source, the rest counted.
    pub token_refusals: crate::audit::budget::Budget,
    /// The device login through an identity provider, when one has a `client_id`.
    pub device: Option<Arc<crate::identity::device::DeviceLogin>>,
    keys: Arc<IssuerKeys>,
    /// The shared state (`[state] postgres`), whose health `/healthz` reports.
    pub shared_state: Option<Arc<crate::state::db::Db>>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        policy: Arc<PolicyStore>,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<AppState>> {
        Self::with_shared(config, policy, audit, metrics, None)
    }

    /// [`new`](Self::new), with the shared state's connection and login limiter when
    /// `[state] postgres` is set.
    pub fn with_shared(
        config: Arc<Config>,
        policy: Arc<PolicyStore>,
        audit: Audit,
        metrics: Arc<Metrics>,
        shared: Option<SharedLogin>,
    ) -> anyhow::Result<Arc<AppState>> {
        let keys = IssuerKeys::load(&config.ca_dir())?;
        let (shared_state, auth) = match shared {
            Some((db, limiter, used_codes)) => (
                Some(db),
                Authenticator::with_shared(&config, limiter, used_codes)?,
            ),
            None => (None, Authenticator::new(&config)?),
        };
        let device = crate::identity::device::DeviceLogin::from_config(&config)?.map(|d| {
            // With `[state] postgres` a login started here is polled on any replica.
            let d = match &shared_state {
                Some(db) => d.with_store(Arc::new(crate::state::device_logins::PgDevices::new(
                    db.clone(),
                    crate::identity::device::limits(&config),
                ))),
                None => d,
            };
            Arc::new(d)
        });
        Ok(Arc::new(AppState {
            shared_state,
            config,
            policy,
            audit,
            metrics,
            auth: Arc::new(auth),
            repeats: repeats::Repeats::default(),
            token_refusals: crate::audit::budget::Budget::default(),
            device,
            keys: Arc::new(keys),
        }))
    }

    /// The CA keys in force. After `drawbridge ca rotate` the service is restarted, so the
    /// API and the bastion switch together (the bastion must trust the new CA before any
    /// certificate it signed is shown to it).
    pub fn issuer_keys(&self) -> Arc<IssuerKeys> {
        self.keys.clone()
    }

    /// The KRL of `policy`'s revocations for every trusted user CA (built per request:
    /// the list is small, and a cache keyed on the version could serve a stale list for
    /// an uncommitted change).
    pub fn krl_for(&self, policy: &Policy) -> anyhow::Result<Vec<u8>> {
        let keys = self.issuer_keys();
        Ok(crate::issuer::krl::build_krl(
            &policy.revoked,
            &keys.trusted_user_cas,
            std::time::SystemTime::now(),
        ))
    }
}

/// Writes the counted repeats of refused logins (`login.failed.repeated`) once a second
/// until `shutdown`, then every window still open, and returns. See [`repeats`].
pub async fn write_repeats(state: Arc<AppState>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(repeats::WINDOW) => false,
        };
        for r in state
            .repeats
            .take_ended(std::time::Instant::now(), stopping)
        {
            let ev = crate::audit::AuditEvent::LoginFailedRepeated {
                client: r.key.client.to_string(),
                reason: r.key.reason,
                method: r.key.method.to_string(),
                repeats: r.repeats,
                since: crate::util::rfc3339(r.since),
                window_secs: repeats::WINDOW.as_secs(),
                user: r.user.as_deref().map(crate::audit::PeerText::cut),
                policy_version: state.policy.current().version.clone(),
                rule: r.key.rule.to_string(),
            };
            if let Err(e) = state.audit.record(ev).await {
                tracing::error!(error = %e, repeats = r.repeats, reason = %r.key.reason,
                    "could not record repeated login refusals");
            }
        }
        // Refused bearer tokens past their source's budget, one record per source and
        // reason (the budget's window is the time since the first one counted).
        for c in state.token_refusals.take_counted() {
            let ev = crate::audit::AuditEvent::LoginFailedRepeated {
                client: c.source.to_string(),
                reason: c.reason,
                method: "token".to_string(),
                repeats: c.repeats,
                since: crate::util::rfc3339(c.since),
                window_secs: repeats::WINDOW.as_secs(),
                user: None,
                policy_version: state.policy.current().version.clone(),
                rule: "token".to_string(),
            };
            if let Err(e) = state.audit.record(ev).await {
                tracing::error!(error = %e, repeats = c.repeats, reason = %c.reason,
                    "could not record repeated token refusals");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
