//! One-time codes already used: a TOTP code is accepted once per user (RFC 6238 5.2).
//!
//! [`UsedCodes`] has two implementations: `state::used_codes::PgUsedCodes` (shared by the
//! replicas, in PostgreSQL) and [`MemoryUsedCodes`], the in-process one. It keeps, per user, the steps claimed that could still be
//! presented (a code is valid one step either side of now, so a step more than
//! [`KEEP_STEPS`] behind the newest claim can never come back), and at most
//! [`MemoryUsedCodes::MAX_USERS`] users: when full, users whose claims are all stale are
//! dropped, and if none is, the claim is refused (fail closed: a code is never accepted
//! twice because memory ran short).

use std::collections::HashMap;
use std::sync::Mutex;

/// Steps behind the newest claim still remembered.
pub const KEEP_STEPS: u64 = 3;

/// Records which TOTP steps each user has used.
pub trait UsedCodes: Send + Sync {
    /// Claims `step` for `user`: true the first time, false ever after (and when the
    /// store cannot remember the claim, or a shared store does not answer).
    fn claim<'a>(&'a self, user: &'a str, step: u64) -> super::limiter::LimitFuture<'a, bool>;
}

/// The in-process store.
#[derive(Default)]
pub struct MemoryUsedCodes {
    claimed: Mutex<HashMap<String, Vec<u64>>>,
}

impl MemoryUsedCodes {
    /// Users remembered at most.
    pub const MAX_USERS: usize = 100_000;

    pub fn new() -> MemoryUsedCodes {
        MemoryUsedCodes::default()
    }
}

impl UsedCodes for MemoryUsedCodes {
    fn claim<'a>(&'a self, user: &'a str, step: u64) -> super::limiter::LimitFuture<'a, bool> {
        Box::pin(std::future::ready(self.claim_now(user, step)))
    }
}

impl MemoryUsedCodes {
    fn claim_now(&self, user: &str, step: u64) -> bool {
        let Ok(mut map) = self.claimed.lock() else {
            return false;
        };
        let floor = step.saturating_sub(KEEP_STEPS);
        if !map.contains_key(user) && map.len() >= Self::MAX_USERS {
            map.retain(|_, steps| steps.iter().any(|s| *s >= floor));
            if map.len() >= Self::MAX_USERS {
                return false;
            }
        }
        let steps = map.entry(user.to_owned()).or_default();
        if steps.contains(&step) {
            return false;
        }
        steps.push(step);
        let newest = steps.iter().copied().max().unwrap_or(step);
        steps.retain(|s| *s >= newest.saturating_sub(KEEP_STEPS));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_claimed_once_per_user() {
        let u = MemoryUsedCodes::new();
        assert!(u.claim_now("alice", 100));
        assert!(!u.claim_now("alice", 100));
        assert!(u.claim_now("bob", 100));
        assert!(u.claim_now("alice", 99));
        assert!(u.claim_now("alice", 101));
        assert!(!u.claim_now("alice", 99));
    }

    #[test]
    fn memory_per_user_stays_small() {
        let u = MemoryUsedCodes::new();
        for s in 0..1000 {
            assert!(u.claim_now("alice", s));
        }
        let map = u.claimed.lock().unwrap();
        assert!(map["alice"].len() <= KEEP_STEPS as usize + 1);
    }
}
