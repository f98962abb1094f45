//! State shared by every connection of the bastion: configuration, trusted CAs, the policy,
//! the audit log, and the places (pre-auth, per user, per connection) given back on drop.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::BastionMetrics;
use super::preauth;
use super::refusal_budget::Budget;
use super::verify::TrustedCas;
use crate::audit::{Audit, AuditEvent};
use crate::config::SshConfig;
use crate::policy::watch::PolicyStore;

/// State shared by every connection.
pub(super) struct Shared {
    pub cfg: SshConfig,
    pub max_validity: Duration,
    pub trusted: TrustedCas,
    pub policy: Arc<PolicyStore>,
    pub audit: Audit,
    pub metrics: Arc<BastionMetrics>,
    /// Turns true when open forwards must be cut (shutdown grace is over).
    pub cut: watch::Receiver<bool>,
    /// The open forwards, re-checked whenever the policy in force changes.
    pub registry: Arc<dyn super::registry::ForwardRegistry>,
    /// Authenticated connections per key id (this process, or every replica).
    pub counts: Arc<dyn super::counts::ConnectionCounts>,
    pub unauth: Arc<preauth::Table>,
    /// Refusal records per source (see `refusal_budget`).
    pub refusals: Budget,
    pub next_conn: AtomicU64,
    /// Recorded sessions: keys, folder; `None` when this bastion does not record.
    pub recording: Option<Arc<super::recorded::Setup>>,
}

/// One place among the unauthenticated connections ([`preauth`]); given back on drop.
pub(super) struct UnauthSlot {
    shared: Arc<Shared>,
    pub slot: preauth::Slot,
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        BastionMetrics::dec(&self.shared.metrics.unauthenticated_active);
    }
}

/// One of a user's connections; given back on drop.
pub(super) struct UserSlot {
    shared: Arc<Shared>,
    key_id: String,
    conn: u64,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.shared.counts.give_back(&self.key_id, self.conn);
    }
}

impl Shared {
    pub fn take_unauth_slot(self: &Arc<Self>, ip: IpAddr) -> Result<UnauthSlot, preauth::Refused> {
        let slot = self
            .unauth
            .admit(ip, std::time::Instant::now(), preauth::roll())?;
        BastionMetrics::inc(&self.metrics.unauthenticated_active);
        Ok(UnauthSlot {
            shared: self.clone(),
            slot,
        })
    }

    pub async fn take_user_slot(
        self: &Arc<Self>,
        key_id: &str,
        conn: u64,
    ) -> Result<UserSlot, super::counts::NoPlace> {
        self.counts
            .take(key_id, conn, self.cfg.max_connections_per_user)
            .await?;
        Ok(UserSlot {
            shared: self.clone(),
            key_id: key_id.to_string(),
            conn,
        })
    }

    /// Writes an audit record; `false` (and a log line) when the log cannot be written.
    pub async fn record(&self, event: AuditEvent) -> bool {
        match self.audit.record(event).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "audit write failed; refusing");
                false
            }
        }
    }
}

/// Returns one channel place on drop.
pub(super) struct ChannelSlot(pub Arc<AtomicUsize>);
impl Drop for ChannelSlot {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
    }
}

/// A gauge counted up by its owner and down when this drops.
pub(super) struct Gauge<'a>(pub &'a AtomicU64);
impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        BastionMetrics::dec(self.0);
    }
}
