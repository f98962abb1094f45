//! Prometheus metrics of the issuer (`GET /metrics`). The bastion's own counters are
//! registered into the same registry by `serve`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The issuer's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub certs_issued: Counter,
    pub cert_refusals: Family<ReasonLabel, Counter>,
    pub logins_ok: Counter,
    pub login_failures: Family<ReasonLabel, Counter>,
    pub tokens_issued: Counter,
    pub signing_seconds: Histogram,
    /// The audit log file's size, as of the last scrape.
    pub audit_log_bytes: Gauge,
    /// How fast it grew over the last few minutes of scrapes.
    pub audit_log_growth: Gauge<f64, AtomicU64>,
    /// Space left for unprivileged writers on the disk holding the audit log.
    pub audit_disk_free_bytes: Gauge,
    audit_samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// How far back the audit log's growth rate looks.
pub const GROWTH_WINDOW: Duration = Duration::from_secs(300);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drawbridge");
        let certs_issued = Counter::default();
        let cert_refusals = Family::<ReasonLabel, Counter>::default();
        let logins_ok = Counter::default();
        let login_failures = Family::<ReasonLabel, Counter>::default();
        let tokens_issued = Counter::default();
        // 10 µs .. ~10 ms
        let signing_seconds = Histogram::new(exponential_buckets(0.00001, 2.0, 11));
        registry.register(
            "certs_issued",
            "User certificates issued",
            certs_issued.clone(),
        );
        registry.register(
            "cert_refusals",
            "Certificate requests refused, by reason",
            cert_refusals.clone(),
        );
        registry.register("logins_ok", "Successful authentications", logins_ok.clone());
        registry.register(
            "login_failures",
            "Failed authentications (password or token), by reason",
            login_failures.clone(),
        );
        registry.register(
            "tokens_issued",
            "Bearer tokens issued by POST /v1/login",
            tokens_issued.clone(),
        );
        registry.register(
            "signing_seconds",
            "Time to sign one user certificate",
            signing_seconds.clone(),
        );
        let audit_log_bytes = Gauge::default();
        let audit_log_growth = Gauge::<f64, AtomicU64>::default();
        let audit_disk_free_bytes = Gauge::default();
        registry.register(
            "audit_log_bytes",
            "Size of the audit log file",
            audit_log_bytes.clone(),
        );
        registry.register(
            "audit_log_growth_bytes_per_second",
            "Growth of the audit log file over the last five minutes of scrapes",
            audit_log_growth.clone(),
        );
        registry.register(
            "audit_disk_free_bytes",
            "Space left on the disk holding the audit log",
            audit_disk_free_bytes.clone(),
        );
        Metrics {
            audit_log_bytes,
            audit_log_growth,
            audit_disk_free_bytes,
            audit_samples: Mutex::new(VecDeque::new()),
            registry: Mutex::new(registry),
            certs_issued,
            cert_refusals,
            logins_ok,
            login_failures,
            tokens_issued,
            signing_seconds,
        }
    }

    /// Registers more metrics (the bastion's) in the same registry.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.registry.lock() {
            f(&mut r);
        }
    }

    pub fn refuse(&self, reason: &str) {
        self.cert_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn login_failed(&self, reason: &str) {
        self.login_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Notes the audit log's size at `now` (on each scrape) and updates its growth rate:
    /// bytes per second since the oldest sample of the last [`GROWTH_WINDOW`].
    pub fn observe_audit_log(&self, bytes: u64, now: Instant) {
        self.audit_log_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let mut samples = self.audit_samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples.len() > 1
            && samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > GROWTH_WINDOW)
        {
            samples.pop_front();
        }
        if samples.len() >= 256 {
            samples.pop_front();
        }
        samples.push_back((now, bytes));
        let rate = match samples.front() {
            Some((t, b)) if now.saturating_duration_since(*t) >= Duration::from_secs(1) => {
                bytes.saturating_sub(*b) as f64 / now.saturating_duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        };
        self.audit_log_growth.set(rate);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_log_size_and_growth() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.observe_audit_log(1000, t0);
        m.observe_audit_log(3000, t0 + Duration::from_secs(10));
        let text = m.encode();
        assert!(text.contains("drawbridge_audit_log_bytes 3000"), "{text}");
        assert!(
            text.contains("drawbridge_audit_log_growth_bytes_per_second 200.0"),
            "{text}"
        );
        // Old samples leave the window.
        m.observe_audit_log(3000, t0 + GROWTH_WINDOW + Duration::from_secs(20));
        assert!(
            m.encode()
                .contains("drawbridge_audit_log_growth_bytes_per_second 0.0")
        );
    }

    #[test]
    fn encodes_counters_with_reasons() {
        let m = Metrics::new();
        m.certs_issued.inc();
        m.refuse("principal_not_held");
        let text = m.encode();
        assert!(text.contains("drawbridge_certs_issued_total 1"), "{text}");
        assert!(
            text.contains("drawbridge_cert_refusals_total{reason=\"principal_not_held\"} 1"),
            "{text}"
        );
    }
}

/// Exposes the bastion's atomics on each scrape.
#[derive(Debug)]
struct BastionCollector(std::sync::Arc<crate::bastion::BastionMetrics>);

impl prometheus_client::collector::Collector for BastionCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.0;
        let gauges = [
            (
                "bastion_connections_active",
                "SSH connections open now",
                &m.connections_active,
            ),
            (
                "bastion_unauthenticated_active",
                "SSH connections not yet authenticated",
                &m.unauthenticated_active,
            ),
            (
                "bastion_forwards_active",
                "Forwards open now",
                &m.forwards_active,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v.load(Relaxed) as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters = [
            (
                "bastion_connections",
                "SSH connections accepted",
                &m.connections_total,
            ),
            (
                "bastion_connections_dropped",
                "SSH connections dropped at accept by the pre-auth caps",
                &m.connections_dropped,
            ),
            (
                "bastion_login_grace_expired",
                "SSH connections closed at the login grace limit",
                &m.login_grace_expired,
            ),
            ("bastion_accept_errors", "accept() errors", &m.accept_errors),
            (
                "bastion_auth_ok",
                "Successful certificate authentications",
                &m.auth_ok,
            ),
            ("bastion_forwards", "Forwards opened", &m.forwards_total),
            (
                "bastion_bytes_client_to_target",
                "Bytes forwarded from clients to DMZ hosts",
                &m.bytes_client_to_target,
            ),
            (
                "bastion_bytes_target_to_client",
                "Bytes forwarded from DMZ hosts to clients",
                &m.bytes_target_to_client,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v.load(Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let refusals = m.refusals();
        if !refusals.is_empty() {
            let mut family = encoder.encode_descriptor(
                "bastion_refusals",
                "SSH authentications, forwards and sessions refused, by reason",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (code, n) in refusals {
                let labels = ReasonLabel {
                    reason: code.to_string(),
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds the bastion's counters to `/metrics`.
    pub fn register_bastion(&self, m: std::sync::Arc<crate::bastion::BastionMetrics>) {
        self.with_registry(|r| r.register_collector(Box::new(BastionCollector(m))));
    }
}
