//! How many authentication refusals each source may have recorded one by one: refused
//! SSH certificates at the bastion, refused bearer tokens at the API.
//!
//! Refusing a certificate (or a forged token) costs a client one signature (or nothing)
//! and us one fsynced audit record;
//! with many pre-auth connections and several attempts each, one anonymous source could
//! grow the audit log by megabytes a second. So each source (the pre-auth table's prefix)
//! has a bucket of [`BURST`] records, refilled at [`PER_SECOND`]: a person fumbling with a
//! key, or a test, never notices; a flood gets its first records whole and the rest
//! counted per (source, reason) and written once a second as one
//! `ssh.auth.failed.repeated` (bastion, `accept::flush_refusals`) or
//! `login.failed.repeated` (API, `api::write_repeats`) record with `repeats`. Every
//! refusal still reaches the client and the metrics. At most [`MAX_SOURCES`] buckets and
//! counters are kept; past that, refusals are recorded one by one again (never dropped).

use crate::audit::RefusalCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Records a source may have written at once.
pub const BURST: f64 = 32.0;
/// Records a source earns back per second.
pub const PER_SECOND: f64 = 4.0;
/// Sources tracked at most.
pub const MAX_SOURCES: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refusals counted, not recorded, since `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub source: IpAddr,
    pub reason: RefusalCode,
    pub since: SystemTime,
    pub repeats: u64,
}

#[derive(Default)]
struct Inner {
    buckets: HashMap<IpAddr, Bucket>,
    counted: HashMap<(IpAddr, RefusalCode), Counted>,
}

/// The buckets and the counts. Cheap to call from every refusal.
#[derive(Default)]
pub struct Budget {
    inner: Mutex<Inner>,
}

impl Budget {
    /// True when this refusal from `source` is to be recorded now; false when it was
    /// counted for the next `ssh.auth.failed.repeated`.
    pub fn record_now(&self, source: IpAddr, reason: RefusalCode, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.buckets.contains_key(&source) && inner.buckets.len() >= MAX_SOURCES {
            // Forget the buckets that have refilled: they hold nothing a new one would not.
            inner.buckets.retain(|_, b| Self::refilled(b, now) < BURST);
            if inner.buckets.len() >= MAX_SOURCES {
                return true;
            }
        }
        let bucket = inner.buckets.entry(source).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = Self::refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        let key = (source, reason);
        if !inner.counted.contains_key(&key) && inner.counted.len() >= MAX_SOURCES {
            return true;
        }
        inner
            .counted
            .entry(key)
            .or_insert(Counted {
                source,
                reason,
                since: SystemTime::now(),
                repeats: 0,
            })
            .repeats += 1;
        false
    }

    fn refilled(b: &Bucket, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * PER_SECOND;
        (b.tokens + earned).min(BURST)
    }

    /// Takes every count so far (for one `ssh.auth.failed.repeated` record each).
    pub fn take_counted(&self) -> Vec<Counted> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.counted.drain().map(|(_, c)| c).collect()
    }
}

/// How often the counts are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_burst_is_recorded_then_refusals_are_counted_and_the_bucket_refills() {
        let b = Budget::default();
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..32 {
            assert!(b.record_now(src, RefusalCode::UntrustedCa, t0));
        }
        for _ in 0..10 {
            assert!(!b.record_now(src, RefusalCode::UntrustedCa, t0));
        }
        assert!(!b.record_now(src, RefusalCode::NoCertificate, t0));
        // Another source has its own bucket.
        assert!(b.record_now("192.0.2.2".parse().unwrap(), RefusalCode::UntrustedCa, t0));
        let mut counted = b.take_counted();
        counted.sort_by_key(|c| c.reason.as_str());
        assert_eq!(counted.len(), 2);
        assert_eq!(
            (counted[0].reason, counted[0].repeats),
            (RefusalCode::NoCertificate, 1)
        );
        assert_eq!(
            (counted[1].reason, counted[1].repeats),
            (RefusalCode::UntrustedCa, 10)
        );
        assert!(b.take_counted().is_empty());
        // A second later, four more are recorded one by one.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..4 {
            assert!(b.record_now(src, RefusalCode::UntrustedCa, t1));
        }
        assert!(!b.record_now(src, RefusalCode::UntrustedCa, t1));
    }
}
