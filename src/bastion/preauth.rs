//! Places for connections that have not authenticated yet, shared fairly between sources.
//!
//! A connection holds a place from accept until it authenticates or ends. What the limits
//! are for is connections that hold a place without progress (a client that stalls after
//! the banner, or never finishes authenticating): an honest burst that authenticates
//! promptly, such as 200 `ssh -J` started at once by one Ansible control host, must pass.
//!
//! Connections are counted per *source*: the client address cut to a prefix (IPv4 /32 and
//! IPv6 /64 by default; one host usually holds a whole IPv6 /64). A source's *share* is
//! the table (`max_unauthenticated`) divided by the sources holding places, a new one
//! included. A new connection:
//!
//! 1. is refused when its source holds `max_unauthenticated_per_source` places
//!    ([`Refused::Cap`]);
//! 2. when the table is full, takes the place of the oldest unauthenticated connection of
//!    the source holding the most places, if that source holds more than its share and
//!    the newcomer's holds less ([`Slot::eviction`] fires for the one displaced); otherwise
//!    it is refused ([`Refused::Cap`]);
//! 3. when the table is *under pressure* (at least `preauth_drop_start` places taken), is
//!    refused if its source is penalized ([`Refused::Penalty`], see below), and, if its
//!    source already holds its share, is dropped at random ([`Refused::EarlyDrop`]) with a
//!    chance rising from `preauth_drop_rate` percent at the start mark to 100% at the full
//!    mark, like sshd's `MaxStartups start:rate:full`.
//!
//! So one host alone may use the whole table (its share is all of it: a burst passes
//! untouched), and whoever holds the table, a connection from a source below its share
//! gets in: at worst it displaces a connection of the biggest holder, which has been
//! waiting longest without authenticating. No handful of addresses can keep everyone else
//! out.
//!
//! # Penalties (like sshd's `PerSourcePenalties`)
//!
//! A connection that hits the login grace time adds `penalty_grace` to its source's
//! penalty; one that ends unauthenticated after a refused authentication adds
//! `penalty_auth_failed`. Penalties add up from now (at most `penalty_max` ahead) and
//! count once at least `penalty_min` remains, so one honest mistake costs nothing. A
//! penalized source is refused only while the table is under pressure: a penalty never
//! locks anyone out of an idle bastion. At most [`MAX_PENALIZED`] sources are tracked.

use crate::audit::RefusalCode;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::SshConfig;

/// Sources with a penalty tracked at most; past that, expired ones are pruned, then the
/// one that expires first is forgotten.
pub const MAX_PENALIZED: usize = 65_536;

/// The limits, from `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub full: usize,
    pub per_source: usize,
    pub start: usize,
    /// Percent.
    pub rate: u8,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub penalty_grace: Duration,
    pub penalty_auth_failed: Duration,
    pub penalty_min: Duration,
    pub penalty_max: Duration,
    /// The login grace time: a place held unauthenticated this long hit it.
    pub grace: Duration,
}

impl Limits {
    pub fn from_config(c: &SshConfig) -> Limits {
        Limits {
            full: c.max_unauthenticated,
            per_source: c.max_unauthenticated_per_source,
            start: c.preauth_drop_start.min(c.max_unauthenticated),
            rate: c.preauth_drop_rate.min(100),
            ipv4_prefix: c.preauth_ipv4_prefix,
            ipv6_prefix: c.preauth_ipv6_prefix,
            penalty_grace: c.penalty_grace,
            penalty_auth_failed: c.penalty_auth_failed,
            penalty_min: c.penalty_min,
            penalty_max: c.penalty_max,
            grace: c.login_grace_time,
        }
    }
}

/// The metrics reason of a connection closed because its place was taken
/// ([`Slot::eviction`]).
pub const EVICTED: RefusalCode = RefusalCode::PreAuthEvicted;

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is full, or the source holds its most places.
    Cap,
    /// Under pressure, the source holds its share.
    Share,
    /// Under pressure, dropped at random (the source already holds places).
    EarlyDrop,
    /// Under pressure, the source is penalized.
    Penalty,
}

impl Refused {
    /// The metrics reason.
    pub fn code(self) -> RefusalCode {
        match self {
            Refused::Cap => RefusalCode::PreAuthCap,
            Refused::Share => RefusalCode::PreAuthShare,
            Refused::EarlyDrop => RefusalCode::PreAuthEarlyDrop,
            Refused::Penalty => RefusalCode::PreAuthPenalty,
        }
    }
}

/// The places one source holds, oldest first, each with the token that displaces it.
#[derive(Default)]
struct Held {
    slots: BTreeMap<u64, CancellationToken>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    next_id: u64,
    held: HashMap<IpAddr, Held>,
    /// When each penalized source's penalty ends.
    penalties: HashMap<IpAddr, Instant>,
}

/// The table of places.
pub struct Table {
    limits: Limits,
    inner: Mutex<Inner>,
}

/// What happened to a connection, for its source's penalty.
const OUTCOME_NONE: u8 = 0;
const OUTCOME_AUTH_FAILED: u8 = 1;
const OUTCOME_GRACE: u8 = 2;
const OUTCOME_AUTHENTICATED: u8 = 3;

/// One place; given back on drop, when the connection's outcome adds to its source's
/// penalty.
pub struct Slot {
    table: Arc<Table>,
    source: IpAddr,
    id: u64,
    since: Instant,
    outcome: AtomicU8,
    evicted: CancellationToken,
}

impl Slot {
    /// Cancelled when a newcomer from a source below its share took this place: the
    /// connection must then be closed (unless it has authenticated meanwhile).
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// An authentication on this connection was refused.
    pub fn auth_refused(&self) {
        let _ = self.outcome.compare_exchange(
            OUTCOME_NONE,
            OUTCOME_AUTH_FAILED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The connection hit the login grace time. (A place given back unauthenticated
    /// after the grace time counts as that without this call.)
    pub fn grace_exceeded(&self) {
        let _ = self
            .outcome
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                (o != OUTCOME_AUTHENTICATED).then_some(OUTCOME_GRACE)
            });
    }

    /// The connection authenticated: no penalty.
    pub fn authenticated(&self) {
        self.outcome.store(OUTCOME_AUTHENTICATED, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut outcome = self.outcome.load(Ordering::SeqCst);
        if outcome != OUTCOME_AUTHENTICATED
            && now.saturating_duration_since(self.since) >= self.table.limits.grace
        {
            outcome = OUTCOME_GRACE;
        }
        let penalty = match outcome {
            OUTCOME_GRACE => self.table.limits.penalty_grace,
            OUTCOME_AUTH_FAILED => self.table.limits.penalty_auth_failed,
            _ => Duration::ZERO,
        };
        self.table.release(self.source, self.id, penalty, now);
    }
}

impl Table {
    pub fn new(limits: Limits) -> Arc<Table> {
        Arc::new(Table {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The source `ip` is counted under.
    pub fn source(&self, ip: IpAddr) -> IpAddr {
        crate::util::source_prefix(ip, self.limits.ipv4_prefix, self.limits.ipv6_prefix)
    }

    /// A place for a new connection from `ip` at `now`, or why not. `roll` is a random
    /// number in 0..100 for the early drop.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant, roll: u8) -> Result<Slot, Refused> {
        let l = &self.limits;
        let source = self.source(ip);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let here = inner.held.get(&source).map_or(0, |h| h.slots.len());
        if here >= l.per_source {
            return Err(Refused::Cap);
        }
        let sources = inner.held.len() + usize::from(here == 0);
        let share = (l.full / sources.max(1)).max(1);
        if inner.total >= l.start && Self::penalized(&inner, source, now, l.penalty_min) {
            return Err(Refused::Penalty);
        }
        if inner.total >= l.full {
            if here >= share || !Self::evict_one(&mut inner, share) {
                return Err(Refused::Cap);
            }
        } else if inner.total >= l.start
            && here >= share
            && roll < Self::drop_percent(l, inner.total)
        {
            return Err(Refused::EarlyDrop);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.total += 1;
        let evicted = CancellationToken::new();
        inner
            .held
            .entry(source)
            .or_default()
            .slots
            .insert(id, evicted.clone());
        Ok(Slot {
            table: self.clone(),
            source,
            id,
            since: now,
            outcome: AtomicU8::new(OUTCOME_NONE),
            evicted,
        })
    }

    /// Frees the oldest place of the source holding the most (the longest waiting among
    /// equals), if it holds more than `share`. Whether one was freed.
    fn evict_one(inner: &mut Inner, share: usize) -> bool {
        let Some((&victim, _)) = inner
            .held
            .iter()
            .filter(|(_, h)| h.slots.len() > share)
            // The biggest holder; among equals, the one waiting longest.
            .max_by_key(|(_, h)| {
                let oldest = h.slots.keys().next().copied().unwrap_or(u64::MAX);
                (h.slots.len(), std::cmp::Reverse(oldest))
            })
        else {
            return false;
        };
        let Some(held) = inner.held.get_mut(&victim) else {
            return false;
        };
        let Some((_, token)) = held.slots.pop_first() else {
            return false;
        };
        if held.slots.is_empty() {
            inner.held.remove(&victim);
        }
        inner.total = inner.total.saturating_sub(1);
        token.cancel();
        true
    }

    /// The chance (percent) of an early drop with `total` places taken, from `rate` at the
    /// start mark to 100 at the full mark.
    fn drop_percent(l: &Limits, total: usize) -> u8 {
        if l.full <= l.start {
            return 100;
        }
        let span = (l.full - l.start) as u64;
        let over = total.saturating_sub(l.start) as u64;
        let rate = u64::from(l.rate);
        (rate + (100 - rate) * over / span).min(100) as u8
    }

    fn penalized(inner: &Inner, source: IpAddr, now: Instant, min: Duration) -> bool {
        inner
            .penalties
            .get(&source)
            .is_some_and(|until| until.saturating_duration_since(now) >= min)
    }

    /// Gives place `id` back and adds `penalty` to its source's. A place already taken
    /// away (evicted) was counted out then and earns no penalty.
    fn release(&self, source: IpAddr, id: u64, penalty: Duration, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = inner.held.get_mut(&source) else {
            return;
        };
        if held.slots.remove(&id).is_none() {
            return;
        }
        if held.slots.is_empty() {
            inner.held.remove(&source);
        }
        inner.total = inner.total.saturating_sub(1);
        if penalty.is_zero() {
            return;
        }
        if !inner.penalties.contains_key(&source) && inner.penalties.len() >= MAX_PENALIZED {
            inner.penalties.retain(|_, until| *until > now);
            if inner.penalties.len() >= MAX_PENALIZED {
                let first = inner
                    .penalties
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(s, _)| *s);
                if let Some(s) = first {
                    inner.penalties.remove(&s);
                }
            }
        }
        let max = now + self.limits.penalty_max;
        let until = inner.penalties.entry(source).or_insert(now);
        *until = ((*until).max(now) + penalty).min(max);
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.inner.lock().map(|i| i.total).unwrap_or(0)
    }

    /// Whether `ip`'s source is penalized at `now` (for tests and logs).
    pub fn is_penalized(&self, ip: IpAddr, now: Instant) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Self::penalized(&inner, self.source(ip), now, self.limits.penalty_min)
    }
}

/// A random number in 0..100 for [`Table::admit`].
pub fn roll() -> u8 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    (u16::from_le_bytes(b) % 100) as u8
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> Limits {
        Limits {
            full: 256,
            per_source: 256,
            start: 128,
            rate: 30,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            penalty_grace: Duration::from_secs(20),
            penalty_auth_failed: Duration::from_secs(5),
            penalty_min: Duration::from_secs(15),
            penalty_max: Duration::from_secs(600),
            grace: Duration::from_secs(30),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Tries `n` connections from `from`, keeping those admitted.
    fn flood(t: &Arc<Table>, from: &str, n: usize, now: Instant, held: &mut Vec<Slot>) -> usize {
        let mut got = 0;
        for i in 0..n {
            // A fixed spread of draws, so the test does not depend on chance.
            if let Ok(s) = t.admit(ip(from), now, ((i * 37) % 100) as u8) {
                held.push(s);
                got += 1;
            }
        }
        got
    }

    #[test]
    fn four_stalling_addresses_leave_room_for_a_fifth() {
        let t = Table::new(limits());
        let now = Instant::now();
        let mut held = Vec::new();
        let got: Vec<usize> = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
            .iter()
            .map(|a| flood(&t, a, 64, now, &mut held))
            .collect();
        // Each stays within its share: the table is full.
        assert_eq!(got, vec![64, 64, 64, 64]);
        assert_eq!(t.taken(), 256);
        // Someone new gets in, even with the worst draw, in place of the oldest
        // connection of a source holding more than its share.
        let newcomer = t.admit(ip("198.51.100.7"), now, 0).unwrap();
        assert_eq!(t.taken(), 256);
        assert!(
            held[0].eviction().is_cancelled(),
            "the oldest place was not taken"
        );
        assert_eq!(
            held.iter().filter(|s| s.eviction().is_cancelled()).count(),
            1
        );
        // The hoarders cannot take places back, however often they retry.
        for a in ["192.0.2.1", "192.0.2.3"] {
            assert_eq!(flood(&t, a, 1_000, now, &mut held), 0);
        }
        // Another newcomer gets in too; the first one is not displaced (it holds one).
        let _second = t.admit(ip("203.0.113.9"), now, 0).unwrap();
        assert!(!newcomer.eviction().is_cancelled());
        // A displaced place given back later is not counted twice.
        let before = t.taken();
        held.remove(0);
        assert_eq!(t.taken(), before);
    }

    #[test]
    fn a_burst_from_one_host_passes_untouched() {
        let t = Table::new(limits());
        let now = Instant::now();
        let mut held = Vec::new();
        // One host alone: its share is the whole table, and every draw is admitted.
        for _ in 0..256 {
            held.push(t.admit(ip("192.0.2.1"), now, 0).unwrap());
        }
        assert_eq!(t.admit(ip("192.0.2.1"), now, 99).err(), Some(Refused::Cap));
        // A second host gets its share (half), then the table is full.
        held.truncate(128);
        let mut kept = Vec::new();
        assert_eq!(flood(&t, "192.0.2.2", 200, now, &mut kept), 128);
        held.clear();
        kept.clear();
        assert_eq!(t.taken(), 0);
    }

    #[test]
    fn past_the_start_mark_connections_beyond_a_share_are_dropped_at_random() {
        let t = Table::new(limits());
        let now = Instant::now();
        let mut held = Vec::new();
        assert_eq!(flood(&t, "192.0.2.1", 200, now, &mut held), 200);
        // A second source halves the first one's share: its further connections are
        // dropped at random (about 70% here, rising to 100% at the full mark).
        held.push(t.admit(ip("192.0.2.2"), now, 0).unwrap());
        let got = flood(&t, "192.0.2.1", 100, now, &mut held);
        assert!(got > 0 && got < 55, "{got}");
        assert!(t.taken() < 256);
    }

    #[test]
    fn caps_count_per_prefix() {
        let t = Table::new(Limits {
            per_source: 2,
            ..limits()
        });
        let now = Instant::now();
        let _a = t.admit(ip("2001:db8:1:2::1"), now, 99).unwrap();
        let _b = t.admit(ip("2001:db8:1:2:ffff::2"), now, 99).unwrap();
        // The same /64: at its cap.
        assert_eq!(
            t.admit(ip("2001:db8:1:2::3"), now, 99).err(),
            Some(Refused::Cap)
        );
        assert!(t.admit(ip("2001:db8:1:3::1"), now, 99).is_ok());
        let t = Table::new(Limits {
            full: 1,
            ..limits()
        });
        let _c = t.admit(ip("192.0.2.1"), now, 99).unwrap();
        assert_eq!(t.admit(ip("192.0.2.2"), now, 99).err(), Some(Refused::Cap));
    }

    #[test]
    fn early_drop_rises_from_rate_to_full() {
        let l = limits();
        assert_eq!(Table::drop_percent(&l, 128), 30);
        assert_eq!(Table::drop_percent(&l, 192), 65);
        assert_eq!(Table::drop_percent(&l, 256), 100);
    }

    #[test]
    fn grace_hits_penalize_a_source_only_under_pressure() {
        let t = Table::new(limits());
        let now = Instant::now();
        let s = t.admit(ip("192.0.2.1"), now, 99).unwrap();
        s.grace_exceeded();
        drop(s);
        assert!(t.is_penalized(ip("192.0.2.1"), Instant::now()));
        // Idle table: a penalty refuses nobody.
        let again = t.admit(ip("192.0.2.1"), now, 99).unwrap();
        drop(again);
        // Under pressure it does.
        let mut held = Vec::new();
        for i in 0..128u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            held.push(t.admit(a, now, 99).unwrap());
        }
        assert_eq!(
            t.admit(ip("192.0.2.1"), Instant::now(), 99).err(),
            Some(Refused::Penalty)
        );
        // A few refused authentications stay under the minimum (15 s); a fourth in a row
        // (20 s) does not.
        let t = Table::new(limits());
        for n in 1..=4 {
            let s = t.admit(ip("192.0.2.9"), now, 99).unwrap();
            s.auth_refused();
            drop(s);
            assert_eq!(t.is_penalized(ip("192.0.2.9"), Instant::now()), n == 4);
        }
        // An authenticated connection adds nothing.
        let s = t.admit(ip("192.0.2.10"), now, 99).unwrap();
        s.auth_refused();
        s.authenticated();
        s.grace_exceeded();
        drop(s);
        assert!(!t.is_penalized(ip("192.0.2.10"), Instant::now()));
        // A place held unauthenticated past the grace time counts as a grace hit.
        let long_ago = Instant::now() - Duration::from_secs(31);
        drop(t.admit(ip("192.0.2.11"), long_ago, 99).unwrap());
        assert!(t.is_penalized(ip("192.0.2.11"), Instant::now()));
    }
}
