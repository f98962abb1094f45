//! Where the device logins in progress are kept: in this process ([`MemoryDevices`], the
//! default) or shared by the replicas (`state::device_logins::PgDevices`, with `[state]
//! postgres`), behind one trait so a login started on one replica is polled on any
//! other. Both keep the rules of [`Pending`]: the limits, the polling pace, single use.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pending::{Limits, Pending, PollGate, PollOutcome, StartRefused};
use crate::identity::Secret;
use crate::identity::limiter::LimitFuture;

/// The store could not be asked (the shared state is away); the text is for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDown(pub String);

/// The device logins in progress.
pub trait DeviceStore: Send + Sync {
    /// Whether `source` may start a login now (counted as a start when it may).
    fn admit<'a>(
        &'a self,
        source: IpAddr,
    ) -> LimitFuture<'a, Result<Result<(), StartRefused>, StoreDown>>;

    /// Keeps a started login: drawbridge's `code` bound to the provider's; `false` when
    /// every place is taken.
    fn insert<'a>(
        &'a self,
        code: &'a str,
        provider_code: Secret<String>,
        source: IpAddr,
        expires_in: Duration,
        interval: Duration,
    ) -> LimitFuture<'a, Result<bool, StoreDown>>;

    /// What a poll of `code` may do now.
    fn gate<'a>(&'a self, code: &'a str) -> LimitFuture<'a, Result<PollGate, StoreDown>>;

    /// What the provider said to the poll [`DeviceStore::gate`] let through; the interval
    /// from now on.
    fn finish<'a>(
        &'a self,
        code: &'a str,
        outcome: PollOutcome,
    ) -> LimitFuture<'a, Result<Duration, StoreDown>>;
}

/// The logins of this process only.
pub struct MemoryDevices {
    pending: Mutex<Pending>,
}

impl MemoryDevices {
    pub fn new(limits: Limits) -> MemoryDevices {
        MemoryDevices {
            pending: Mutex::new(Pending::new(limits)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p)
    }
}

impl DeviceStore for MemoryDevices {
    fn admit<'a>(
        &'a self,
        source: IpAddr,
    ) -> LimitFuture<'a, Result<Result<(), StartRefused>, StoreDown>> {
        let r = self.with(|p| p.admit(source, Instant::now()));
        Box::pin(async move { Ok(r) })
    }

    fn insert<'a>(
        &'a self,
        code: &'a str,
        provider_code: Secret<String>,
        source: IpAddr,
        expires_in: Duration,
        interval: Duration,
    ) -> LimitFuture<'a, Result<bool, StoreDown>> {
        let r = self.with(|p| {
            p.insert(
                code,
                provider_code,
                source,
                expires_in,
                interval,
                Instant::now(),
            )
        });
        Box::pin(async move { Ok(r) })
    }

    fn gate<'a>(&'a self, code: &'a str) -> LimitFuture<'a, Result<PollGate, StoreDown>> {
        let r = self.with(|p| p.gate(code, Instant::now()));
        Box::pin(async move { Ok(r) })
    }

    fn finish<'a>(
        &'a self,
        code: &'a str,
        outcome: PollOutcome,
    ) -> LimitFuture<'a, Result<Duration, StoreDown>> {
        let r = self.with(|p| p.finish(code, outcome));
        Box::pin(async move { Ok(r) })
    }
}

/// The contract every store keeps, run on the memory store here and on PostgreSQL by the
/// integration tests (`state::`). Real time, short intervals: about 2.5 s.
#[doc(hidden)]
pub mod contract {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Admits `source` and keeps a login `code` for it; both must succeed.
    async fn started(
        store: &dyn DeviceStore,
        code: &str,
        source: IpAddr,
        expires_in: Duration,
        interval: Duration,
    ) {
        assert_eq!(store.admit(source).await, Ok(Ok(())), "start {code}");
        let provider = Secret::new(format!("provider-{code}"));
        assert_eq!(
            store
                .insert(code, provider, source, expires_in, interval)
                .await,
            Ok(true),
            "keep {code}"
        );
    }

    pub async fn check(store: &dyn DeviceStore, limits: Limits) {
        use crate::identity::device::pending::Ended;
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        let code = |i: usize| format!("contract-code-{i}-{}", std::process::id());
        // Start: admitted, kept; the provider's code comes back on the first poll only.
        assert_eq!(store.admit(a).await, Ok(Ok(())));
        let secret = Secret::new("the provider's code".to_string());
        let one_s = Duration::from_secs(1);
        assert_eq!(
            store
                .insert(&code(1), secret, a, Duration::from_secs(600), one_s)
                .await,
            Ok(true)
        );
        match store.gate(&code(1)).await {
            Ok(PollGate::Ask(c)) => assert_eq!(c.expose(), "the provider's code"),
            other => panic!("first poll: {other:?}"),
        }
        // While that poll is at the provider, another is slowed down by 5 s.
        assert!(matches!(
            store.gate(&code(1)).await,
            Ok(PollGate::SlowDown(d)) if d == Duration::from_secs(6)
        ));
        assert_eq!(
            store.finish(&code(1), PollOutcome::Pending).await,
            Ok(Duration::from_secs(6))
        );
        // Sooner than the interval: slowed down again.
        assert!(matches!(
            store.gate(&code(1)).await,
            Ok(PollGate::SlowDown(d)) if d == Duration::from_secs(11)
        ));
        // A guessed code is unknown.
        assert!(matches!(
            store.gate("never-handed-out").await,
            Ok(PollGate::Unknown)
        ));
        // A login that ended with a token is used up.
        let ms = Duration::from_millis;
        started(store, &code(2), a, Duration::from_secs(600), ms(100)).await;
        assert!(matches!(store.gate(&code(2)).await, Ok(PollGate::Ask(_))));
        store
            .finish(&code(2), PollOutcome::End(Ended::Used))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(
            store.gate(&code(2)).await,
            Ok(PollGate::Ended(Ended::Used))
        ));
        // One that expires: `expired` once, then remembered as failed.
        started(store, &code(3), b, ms(300), ms(100)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(store.gate(&code(3)).await, Ok(PollGate::Expired)));
        assert!(matches!(
            store.gate(&code(3)).await,
            Ok(PollGate::Ended(Ended::Failed))
        ));
        // Per source: `limits.pending_per_source` waiting logins, then refused; another
        // source is not.
        let src: IpAddr = "203.0.113.9".parse().unwrap();
        for i in 0..limits.pending_per_source {
            started(store, &code(100 + i), src, Duration::from_secs(600), one_s).await;
        }
        assert_eq!(store.admit(src).await, Ok(Err(StartRefused::SourceFull)));
        assert_eq!(store.admit(b).await, Ok(Ok(())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        let limits = Limits {
            pending: 64,
            pending_per_source: 3,
            starts_per_minute: 10,
        };
        contract::check(&MemoryDevices::new(limits), limits).await;
    }
}
