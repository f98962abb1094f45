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
//! [`LoginLimiter`] is the seam for a shared (PostgreSQL) backend; [`MemoryLimiter`] keeps
//! bounded memory: expired entries are pruned, and past [`MemoryLimiter::MAX_KEYS`] keys
//! the stalest entry is evicted.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// One password attempt let through and counted, until it is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    user: String,
    client: IpAddr,
    at: SystemTime,
}

/// Counts failed logins; shared by all requests of a process (or, later, all replicas).
pub trait LoginLimiter: Send + Sync {
    /// Checks `user` and `client` against the limit at `now` and, when both are under it,
    /// counts this attempt as a failure in the same step. `Err(retry_after)` (and nothing
    /// counted) when either is over the limit.
    fn reserve(&self, user: &str, client: IpAddr, now: SystemTime) -> Result<Attempt, Duration>;
    /// The attempt succeeded: clears the user's count and gives the address this attempt
    /// back (its earlier failures stay).
    fn success(&self, attempt: &Attempt);
    /// The attempt was not tried (e.g. the hashing pool was full): gives it back to both.
    fn refund(&self, attempt: &Attempt);
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

impl LoginLimiter for MemoryLimiter {
    fn reserve(&self, user: &str, client: IpAddr, now: SystemTime) -> Result<Attempt, Duration> {
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
        })
    }

    fn success(&self, attempt: &Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&Key::User(attempt.user.clone()));
        Self::give_back(&mut map, &addr_key(attempt.client), attempt.at);
    }

    fn refund(&self, attempt: &Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::give_back(&mut map, &Key::User(attempt.user.clone()), attempt.at);
        Self::give_back(&mut map, &addr_key(attempt.client), attempt.at);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One failed attempt: reserved, tried, not given back.
    fn fail(l: &MemoryLimiter, user: &str, client: IpAddr, t: SystemTime) {
        l.reserve(user, client, t).unwrap();
    }

    #[test]
    fn limits_per_user_and_per_address() {
        let l = MemoryLimiter::new(3, Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..3 {
            fail(&l, "alice", ip("192.0.2.1"), t0 + Duration::from_secs(i));
        }
        let t = t0 + Duration::from_secs(10);
        let wait = l.reserve("alice", ip("198.51.100.7"), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        let wait = l.reserve("bob", ip("192.0.2.1"), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.reserve("bob", ip("198.51.100.7"), t).is_ok());
        // The window slides.
        assert!(
            l.reserve("alice", ip("198.51.100.8"), t0 + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn concurrent_attempts_are_counted_before_any_is_tried() {
        // Thirty guesses in flight at once: the limit lets through `max_failures` of them,
        // since each is counted when it is let through, not when its hash is done.
        let l = std::sync::Arc::new(MemoryLimiter::new(5, Duration::from_secs(60)));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let threads: Vec<_> = (0..30)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    l.reserve("alice", ip(&format!("192.0.2.{i}")), t).is_ok()
                })
            })
            .collect();
        let through = threads
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(through, 5);
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let l = MemoryLimiter::new(2, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        fail(&l, "alice", ip("192.0.2.1"), t);
        let ok = l.reserve("alice", ip("192.0.2.1"), t).unwrap();
        l.success(&ok);
        assert!(l.reserve("alice", ip("198.51.100.1"), t).is_ok());
        // The address keeps its earlier failure (one of two), and its next one fills it.
        fail(&l, "carol", ip("192.0.2.1"), t);
        assert!(l.reserve("carol", ip("192.0.2.1"), t).is_err());
    }

    #[test]
    fn an_attempt_never_tried_is_refunded() {
        let l = MemoryLimiter::new(1, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = l.reserve("alice", ip("192.0.2.1"), t).unwrap();
        assert!(l.reserve("alice", ip("192.0.2.2"), t).is_err());
        l.refund(&a);
        assert!(l.reserve("alice", ip("192.0.2.1"), t).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = MemoryLimiter::new(1, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        fail(&l, "a", ip("2001:db8:1:2::1"), t);
        assert!(l.reserve("b", ip("2001:db8:1:2:ffff::9"), t).is_err());
        assert!(l.reserve("b", ip("2001:db8:1:3::1"), t).is_ok());
        fail(&l, "c", ip("::ffff:192.0.2.9"), t);
        assert!(l.reserve("d", ip("192.0.2.9"), t).is_err());
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
