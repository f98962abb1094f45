//! Failed-login limits per user and per client address (THREATS 29).
//!
//! After `max_failures` failed password logins within `window`, for one user name or from
//! one client address, further attempts are refused with a retry delay **without hashing**
//! until the oldest counted failure leaves the window. IPv6 clients are counted per /64
//! (one host usually holds a whole /64).
//!
//! A successful login clears the user's counter but not the address's: otherwise an
//! attacker holding one valid account could reset their address's count between guesses
//! at other accounts. The per-user limit means an attacker can lock a known user out of
//! password logins for `window`; tokens and OIDC are unaffected.
//!
//! [`LoginLimiter`] is the seam for a shared (PostgreSQL) backend; [`MemoryLimiter`] keeps
//! bounded memory: expired entries are pruned, and past [`MemoryLimiter::MAX_KEYS`] keys
//! the stalest entry is evicted.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Counts failed logins; shared by all requests of a process (or, later, all replicas).
pub trait LoginLimiter: Send + Sync {
    /// `Err(retry_after)` when `user` or `client` is over the limit at `now`.
    fn check(&self, user: &str, client: IpAddr, now: SystemTime) -> Result<(), Duration>;
    /// Counts one failed login for both `user` and `client`.
    fn failure(&self, user: &str, client: IpAddr, now: SystemTime);
    /// A successful login: clears the user's count (not the address's).
    fn success(&self, user: &str, client: IpAddr, now: SystemTime);
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

fn addr_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::Addr(IpAddr::V4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Addr(IpAddr::V4(v4)),
            None => {
                let mut seg = v6.segments();
                for s in &mut seg[4..] {
                    *s = 0;
                }
                Key::Addr(IpAddr::V6(seg.into()))
            }
        },
    }
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

impl LoginLimiter for MemoryLimiter {
    fn check(&self, user: &str, client: IpAddr, now: SystemTime) -> Result<(), Duration> {
        let Ok(map) = self.failures.lock() else {
            return Ok(());
        };
        let by_user = self.retry_after(map.get(&Key::User(user.to_owned())), now);
        let by_addr = self.retry_after(map.get(&addr_key(client)), now);
        match (by_user, by_addr) {
            (None, None) => Ok(()),
            (a, b) => Err(a.unwrap_or_default().max(b.unwrap_or_default())),
        }
    }

    fn failure(&self, user: &str, client: IpAddr, now: SystemTime) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        self.add(&mut map, Key::User(user.to_owned()), now);
        self.add(&mut map, addr_key(client), now);
    }

    fn success(&self, user: &str, _client: IpAddr, _now: SystemTime) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&Key::User(user.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_user_and_per_address() {
        let l = MemoryLimiter::new(3, Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..3 {
            assert!(l.check("alice", ip("192.0.2.1"), t0).is_ok());
            l.failure("alice", ip("192.0.2.1"), t0 + Duration::from_secs(i));
        }
        let t = t0 + Duration::from_secs(10);
        let wait = l.check("alice", ip("198.51.100.7"), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        let wait = l.check("bob", ip("192.0.2.1"), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.check("bob", ip("198.51.100.7"), t).is_ok());
        // The window slides.
        assert!(
            l.check("alice", ip("198.51.100.7"), t0 + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let l = MemoryLimiter::new(2, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        l.failure("alice", ip("192.0.2.1"), t);
        l.failure("alice", ip("192.0.2.1"), t);
        l.success("alice", ip("192.0.2.1"), t);
        assert!(l.check("alice", ip("198.51.100.1"), t).is_ok());
        assert!(l.check("carol", ip("192.0.2.1"), t).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = MemoryLimiter::new(1, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        l.failure("a", ip("2001:db8:1:2::1"), t);
        assert!(l.check("b", ip("2001:db8:1:2:ffff::9"), t).is_err());
        assert!(l.check("b", ip("2001:db8:1:3::1"), t).is_ok());
        l.failure("c", ip("::ffff:192.0.2.9"), t);
        assert!(l.check("d", ip("192.0.2.9"), t).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let l = MemoryLimiter::new(5, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..(MemoryLimiter::MAX_KEYS as u32 + 50) {
            l.failure(&format!("u{i}"), ip("192.0.2.1"), t);
        }
        assert!(l.tracked() <= MemoryLimiter::MAX_KEYS);
        // Expired entries are pruned when room is needed.
        let later = t + Duration::from_secs(120);
        l.failure("fresh", ip("198.51.100.1"), later);
        assert!(l.tracked() < 10, "{}", l.tracked());
    }
}
