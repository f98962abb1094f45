//! Failed-login limits per user and per client address (docs/threats.md T29).
//!
//! After `max_failures` failed password logins within `window`, for one user name or from
//! one client address, further attempts are refused with a retry delay **without hashing**
//! until the oldest counted failure leaves the window. IPv6 clients are counted per /64
//! (one host usually holds a whole /64).
//!
//! An attempt is counted when it is let through, before its password is hashed, in the
//! same locked step as the check ([`LoginLimiter::reserve`]): otherwise many concurrent
//! guesses would all pass the check while none had been counted yet, and a client could
//! try as many passwords per window as it can send at once. A successful attempt is given
//! back ([`LoginLimiter::success`]); one that was never tried (the hashing pool was full)
//! is given back too ([`LoginLimiter::refund`]); an attempt whose client went away
//! mid-hash stays counted.
//!
//! A successful login clears the user's counter but not the address's (only its own
//! attempt is given back): otherwise an attacker holding one valid account could reset
//! their address's count between guesses at other accounts. The per-user limit means an
//! attacker can lock a known user out of password logins for `window`; tokens and OIDC are
//! unaffected.
//!
//! [`LoginLimiter`] has two implementations: [`MemoryLimiter`] (one process) and
//! `state::limiter::PgLimiter` (every replica, in PostgreSQL); both pass the same tests
//! ([`contract`]). [`MemoryLimiter`] keeps bounded memory: expired entries are pruned, and
//! past [`MemoryLimiter::MAX_KEYS`] keys the stalest entry is evicted. A shared limiter
//! that cannot answer refuses the attempt ([`Refused::Unavailable`]): no password is
//! tried that was not counted.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// One password attempt let through and counted, until it is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub(crate) user: String,
    pub(crate) client: IpAddr,
    pub(crate) at: SystemTime,
    /// The rows that count it in a shared limiter (user's, address's).
    pub(crate) rows: Option<(i64, i64)>,
}

/// Why an attempt was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Over the limit: nothing counted; free again after this long.
    RetryAfter(Duration),
    /// The shared limiter did not answer: nothing tried (fail closed).
    Unavailable(String),
}

/// What a limiter's calls return (a shared limiter waits for its database).
pub type LimitFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Counts failed logins; shared by all requests of a process, or of all replicas.
pub trait LoginLimiter: Send + Sync {
    /// Checks `user` and `client` against the limit at `now` and, when both are under it,
    /// counts this attempt as a failure in the same step. `Err` (and nothing counted) when
    /// either is over the limit or the count cannot be taken.
    fn reserve<'a>(
        &'a self,
        user: &'a str,
        client: IpAddr,
        now: SystemTime,
    ) -> LimitFuture<'a, Result<Attempt, Refused>>;
    /// The attempt succeeded: clears the user's count and gives the address this attempt
    /// back (its earlier failures stay).
    fn success<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()>;
    /// The attempt was not tried (e.g. the hashing pool was full): gives it back to both.
    fn refund<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()>;
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

fn addr_key(ip: IpAddr) -> Key {
    Key::Addr(crate::util::source_prefix(ip, 32, 64))
}

/// The in-process limiter.
pub struct MemoryLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<Key, VecDeque<SystemTime>>>,
}

impl MemoryLimiter {
    /// Keys (user names plus addresses) tracked at most.
    pub const MAX_KEYS: usize = 100_000;

    pub fn new(max_failures: u32, window: Duration) -> MemoryLimiter {
        MemoryLimiter {
            max_failures: (max_failures as usize).max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn retry_after(
        &self,
        times: Option<&VecDeque<SystemTime>>,
        now: SystemTime,
    ) -> Option<Duration> {
        let times = times?;
        let recent: Vec<&SystemTime> = times
            .iter()
            .filter(|t| {
                now.duration_since(**t)
                    .map(|d| d < self.window)
                    .unwrap_or(true)
            })
            .collect();
        if recent.len() < self.max_failures {
            return None;
        }
        // Free again when the oldest counted failure leaves the window.
        let oldest = recent[recent.len() - self.max_failures];
        let age = now.duration_since(*oldest).unwrap_or(Duration::ZERO);
        Some(self.window.saturating_sub(age).max(Duration::from_secs(1)))
    }

    fn prune(&self, map: &mut HashMap<Key, VecDeque<SystemTime>>, now: SystemTime) {
        let window = self.window;
        map.retain(|_, times| {
            times.retain(|t| now.duration_since(*t).map(|d| d < window).unwrap_or(true));
            !times.is_empty()
        });
    }

    fn add(&self, map: &mut HashMap<Key, VecDeque<SystemTime>>, key: Key, now: SystemTime) {
        if !map.contains_key(&key) && map.len() >= Self::MAX_KEYS {
            self.prune(map, now);
            if map.len() >= Self::MAX_KEYS {
                let stalest = map
                    .iter()
                    .min_by_key(|(_, t)| t.back().copied().unwrap_or(SystemTime::UNIX_EPOCH))
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    map.remove(&k);
                }
            }
        }
        let times = map.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl MemoryLimiter {
    /// Removes one counted attempt made at `at` under `key`.
    fn give_back(map: &mut HashMap<Key, VecDeque<SystemTime>>, key: &Key, at: SystemTime) {
        if let Some(times) = map.get_mut(key) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                map.remove(key);
            }
        }
    }
}

impl MemoryLimiter {
    fn reserve_now(
        &self,
        user: &str,
        client: IpAddr,
        now: SystemTime,
    ) -> Result<Attempt, Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let user_key = Key::User(user.to_owned());
        let client_key = addr_key(client);
        let by_user = self.retry_after(map.get(&user_key), now);
        let by_addr = self.retry_after(map.get(&client_key), now);
        if by_user.is_some() || by_addr.is_some() {
            return Err(by_user.unwrap_or_default().max(by_addr.unwrap_or_default()));
        }
        self.add(&mut map, user_key, now);
        self.add(&mut map, client_key, now);
        Ok(Attempt {
            user: user.to_owned(),
            client,
            at: now,
            rows: None,
        })
    }

    fn success_now(&self, attempt: &Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&Key::User(attempt.user.clone()));
        Self::give_back(&mut map, &addr_key(attempt.client), attempt.at);
    }

    fn refund_now(&self, attempt: &Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::give_back(&mut map, &Key::User(attempt.user.clone()), attempt.at);
        Self::give_back(&mut map, &addr_key(attempt.client), attempt.at);
    }
}

impl LoginLimiter for MemoryLimiter {
    fn reserve<'a>(
        &'a self,
        user: &'a str,
        client: IpAddr,
        now: SystemTime,
    ) -> LimitFuture<'a, Result<Attempt, Refused>> {
        let r = self
            .reserve_now(user, client, now)
            .map_err(Refused::RetryAfter);
        Box::pin(std::future::ready(r))
    }
    fn success<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()> {
        self.success_now(attempt);
        Box::pin(std::future::ready(()))
    }
    fn refund<'a>(&'a self, attempt: &'a Attempt) -> LimitFuture<'a, ()> {
        self.refund_now(attempt);
        Box::pin(std::future::ready(()))
    }
}

/// The keys a limiter counts an attempt under: the user name, and the address (IPv6 per
/// /64, a mapped IPv4 address as IPv4). Shared limiters store these texts.
pub fn keys_of(user: &str, client: IpAddr) -> (String, String) {
    (
        format!("u:{user}"),
        format!("a:{}", crate::util::source_prefix(client, 32, 64)),
    )
}

/// The behaviour every limiter must have: run on [`MemoryLimiter`] by the unit tests and
/// on the PostgreSQL limiter by the integration tests (`tests/it/state.rs`). Each check
/// takes a fresh limiter of `max_failures` per 60 s from `make`.
#[doc(hidden)]
pub mod contract {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::sync::Arc;

    pub type Make<'a> = &'a (dyn Fn(u32) -> Arc<dyn LoginLimiter> + Sync);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    async fn fail(l: &dyn LoginLimiter, user: &str, client: IpAddr, t: SystemTime) {
        l.reserve(user, client, t).await.unwrap();
    }

    async fn wait(l: &dyn LoginLimiter, user: &str, client: &str, t: SystemTime) -> Duration {
        match l.reserve(user, ip(client), t).await {
            Err(Refused::RetryAfter(d)) => d,
            other => panic!("{user} from {client}: expected a retry delay, got {other:?}"),
        }
    }

    /// Every check, in order.
    pub async fn all(make: Make<'_>) {
        limits_per_user_and_per_address(make).await;
        concurrent_attempts_are_counted_before_any_is_tried(make).await;
        success_clears_the_user_but_not_the_address(make).await;
        an_attempt_never_tried_is_refunded(make).await;
        ipv6_counts_per_64_and_mapped_v4_as_v4(make).await;
    }

    pub async fn limits_per_user_and_per_address(make: Make<'_>) {
        let l = make(3);
        for i in 0..3 {
            fail(&*l, "alice", ip("192.0.2.1"), t0() + Duration::from_secs(i)).await;
        }
        let t = t0() + Duration::from_secs(10);
        assert_eq!(
            wait(&*l, "alice", "198.51.100.7", t).await,
            Duration::from_secs(50)
        );
        assert_eq!(
            wait(&*l, "bob", "192.0.2.1", t).await,
            Duration::from_secs(50)
        );
        assert!(l.reserve("bob", ip("198.51.100.7"), t).await.is_ok());
        // The window slides.
        let later = t0() + Duration::from_secs(61);
        assert!(l.reserve("alice", ip("198.51.100.8"), later).await.is_ok());
    }

    pub async fn concurrent_attempts_are_counted_before_any_is_tried(make: Make<'_>) {
        // Thirty guesses in flight at once: the limit lets through `max_failures` of them,
        // since each is counted when it is let through, not when its hash is done.
        let l = make(5);
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.reserve("alice", ip(&format!("192.0.2.{i}")), t0())
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut through = 0;
        for t in tasks {
            if t.await.unwrap() {
                through += 1;
            }
        }
        assert_eq!(through, 5);
    }

    pub async fn success_clears_the_user_but_not_the_address(make: Make<'_>) {
        let l = make(2);
        let t = t0();
        fail(&*l, "alice", ip("192.0.2.1"), t).await;
        let ok = l.reserve("alice", ip("192.0.2.1"), t).await.unwrap();
        l.success(&ok).await;
        assert!(l.reserve("alice", ip("198.51.100.1"), t).await.is_ok());
        // The address keeps its earlier failure (one of two), and its next one fills it.
        fail(&*l, "carol", ip("192.0.2.1"), t).await;
        assert!(l.reserve("carol", ip("192.0.2.1"), t).await.is_err());
    }

    pub async fn an_attempt_never_tried_is_refunded(make: Make<'_>) {
        let l = make(1);
        let t = t0();
        let a = l.reserve("alice", ip("192.0.2.1"), t).await.unwrap();
        assert!(l.reserve("alice", ip("192.0.2.2"), t).await.is_err());
        l.refund(&a).await;
        assert!(l.reserve("alice", ip("192.0.2.1"), t).await.is_ok());
    }

    pub async fn ipv6_counts_per_64_and_mapped_v4_as_v4(make: Make<'_>) {
        let l = make(1);
        let t = t0();
        fail(&*l, "a", ip("2001:db8:1:2::1"), t).await;
        assert!(l.reserve("b", ip("2001:db8:1:2:ffff::9"), t).await.is_err());
        assert!(l.reserve("b", ip("2001:db8:1:3::1"), t).await.is_ok());
        fail(&*l, "c", ip("::ffff:192.0.2.9"), t).await;
        assert!(l.reserve("d", ip("192.0.2.9"), t).await.is_err());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn memory(max: u32) -> Arc<dyn LoginLimiter> {
        Arc::new(MemoryLimiter::new(max, Duration::from_secs(60)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_memory_limiter_keeps_the_contract() {
        contract::all(&memory).await;
    }

    /// One failed attempt: reserved, tried, not given back.
    fn fail(l: &MemoryLimiter, user: &str, client: IpAddr, t: SystemTime) {
        l.reserve_now(user, client, t).unwrap();
    }

    #[test]
    fn memory_is_bounded() {
        let l = MemoryLimiter::new(5, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Each attempt counts a user and an address: two keys.
        for i in 0..(MemoryLimiter::MAX_KEYS as u32 / 2 + 50) {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            fail(&l, &format!("u{i}"), client, t);
        }
        assert!(l.tracked() <= MemoryLimiter::MAX_KEYS);
        // Expired entries are pruned when room is needed.
        let later = t + Duration::from_secs(120);
        fail(&l, "fresh", ip("198.51.100.1"), later);
        assert!(l.tracked() < 10, "{}", l.tracked());
    }
}
