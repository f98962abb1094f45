//! The device logins in progress: drawbridge's own `device_code`s, each bound to the
//! provider's, with the polling pace, the expiry and single use. No I/O and no clock:
//! every operation takes `now`.
//!
//! Codes are kept by their SHA-256, never as given out. A login ends once (success or a
//! terminal error); its entry stays as a tombstone until its expiry so that a reuse gets a
//! clear refusal, then it is forgotten (and the code is unknown, as a guessed one).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::identity::Secret;

/// RFC 8628 3.5: each `slow_down` adds this to the interval, for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// A poll that has not come back after this long (its request was cut) no longer blocks
/// the next one.
pub const POLL_STUCK: Duration = Duration::from_secs(60);
/// An ended or expired login is remembered this long after its expiry (a later poll gets
/// its real answer, `expired_token` or "already used"), then forgotten.
pub const TOMBSTONE: Duration = Duration::from_secs(600);

/// The limits, from `[login]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub pending: usize,
    pub pending_per_source: usize,
    pub starts_per_minute: usize,
}

/// Why a start is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRefused {
    /// All pending places taken (`login.device_pending`).
    Full,
    /// This source holds `login.device_pending_per_source` pending logins.
    SourceFull,
    /// This source started `login.device_starts_per_minute` in the last minute.
    TooFast,
}

/// How an ended login ended, for later polls of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A token was handed out: the code is used up.
    Used,
    /// The person refused at the provider.
    Denied,
    /// The provider said the code expired, or refused it.
    Failed,
}

/// What a poll may do now.
#[derive(Debug)]
pub enum PollGate {
    /// Ask the provider, with its device code.
    Ask(Secret<String>),
    /// Never handed out (or forgotten after its expiry).
    Unknown,
    /// Past its expiry.
    Expired,
    /// Polled sooner than the interval (or while another poll of it is at the provider);
    /// the interval is now this.
    SlowDown(Duration),
    /// Already ended.
    Ended(Ended),
}

/// What the provider said to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// Not yet: poll again after the interval.
    Pending,
    /// The provider asked us to slow down: the interval grows.
    SlowDown,
    /// The provider could not be asked or answered nonsense: the login stays pending.
    Retry,
    /// The login ended.
    End(Ended),
}

enum State {
    Waiting,
    Polling(Instant),
    Ended(Ended),
}

struct Entry {
    provider_code: Secret<String>,
    source: IpAddr,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    state: State,
}

/// The pending device logins of this process.
pub struct Pending {
    limits: Limits,
    entries: HashMap<[u8; 32], Entry>,
    starts: HashMap<IpAddr, VecDeque<Instant>>,
}

fn key(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

fn source_key(ip: IpAddr) -> IpAddr {
    crate::util::source_prefix(ip, 32, 64)
}

impl Pending {
    pub fn new(limits: Limits) -> Pending {
        Pending {
            limits,
            entries: HashMap::new(),
            starts: HashMap::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| now < e.expires + TOMBSTONE);
        let minute = Duration::from_secs(60);
        self.starts.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= minute)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    /// Checks the limits for a new login from `source` and counts the start (before the
    /// provider is asked, so a flood of starts is cut here).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Result<(), StartRefused> {
        self.prune(now);
        let src = source_key(source);
        if self.entries.len() >= self.limits.pending.max(1) {
            return Err(StartRefused::Full);
        }
        let held = self
            .entries
            .values()
            .filter(|e| {
                source_key(e.source) == src
                    && now < e.expires
                    && !matches!(e.state, State::Ended(_))
            })
            .count();
        if held >= self.limits.pending_per_source.max(1) {
            return Err(StartRefused::SourceFull);
        }
        let times = self.starts.entry(src).or_default();
        if times.len() >= self.limits.starts_per_minute.max(1) {
            return Err(StartRefused::TooFast);
        }
        times.push_back(now);
        Ok(())
    }

    /// Records a started login under drawbridge's `code`. False (and nothing kept) when the
    /// places filled up while the provider was asked.
    pub fn insert(
        &mut self,
        code: &str,
        provider_code: Secret<String>,
        source: IpAddr,
        expires_in: Duration,
        interval: Duration,
        now: Instant,
    ) -> bool {
        self.prune(now);
        if self.entries.len() >= self.limits.pending.max(1) {
            return false;
        }
        self.entries.insert(
            key(code),
            Entry {
                provider_code,
                source,
                expires: now + expires_in,
                interval,
                last_poll: None,
                state: State::Waiting,
            },
        );
        true
    }

    /// Whether `code` may be polled at the provider now; when it may, the poll is marked as
    /// in progress (a second poll meanwhile gets `SlowDown`).
    pub fn gate(&mut self, code: &str, now: Instant) -> PollGate {
        let k = key(code);
        let Some(e) = self.entries.get_mut(&k) else {
            return PollGate::Unknown;
        };
        if now >= e.expires + TOMBSTONE {
            // Forgotten, as a code never handed out.
            self.entries.remove(&k);
            return PollGate::Unknown;
        }
        if let State::Ended(how) = e.state {
            return PollGate::Ended(how);
        }
        if now >= e.expires {
            e.state = State::Ended(Ended::Failed);
            return PollGate::Expired;
        }
        let busy = matches!(e.state, State::Polling(since) if now.saturating_duration_since(since) < POLL_STUCK);
        // The first poll may come at once; each later one at least `interval` after the
        // one before (RFC 8628 3.5).
        let too_soon = e
            .last_poll
            .is_some_and(|last| now.saturating_duration_since(last) < e.interval);
        if busy || too_soon {
            e.interval += SLOW_DOWN_STEP;
            e.last_poll = Some(now);
            return PollGate::SlowDown(e.interval);
        }
        e.last_poll = Some(now);
        e.state = State::Polling(now);
        PollGate::Ask(e.provider_code.clone())
    }

    /// Records what the provider said to the poll [`gate`](Self::gate) let through.
    /// Returns the interval now in force.
    pub fn finish(&mut self, code: &str, outcome: PollOutcome) -> Duration {
        let Some(e) = self.entries.get_mut(&key(code)) else {
            return SLOW_DOWN_STEP;
        };
        e.state = match outcome {
            PollOutcome::Pending | PollOutcome::Retry => State::Waiting,
            PollOutcome::SlowDown => {
                e.interval += SLOW_DOWN_STEP;
                State::Waiting
            }
            PollOutcome::End(how) => State::Ended(how),
        };
        e.interval
    }

    /// Logins held (pending and ended, until their expiry).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits() -> Limits {
        Limits {
            pending: 4,
            pending_per_source: 2,
            starts_per_minute: 3,
        }
    }

    fn started(p: &mut Pending, code: &str, src: &str, now: Instant) {
        p.admit(ip(src), now).unwrap();
        assert!(p.insert(
            code,
            Secret::new(format!("provider-{code}")),
            ip(src),
            Duration::from_secs(600),
            Duration::from_secs(5),
            now,
        ));
    }

    #[test]
    fn polling_faster_than_the_interval_slows_down_by_5_s_each_time() {
        let t0 = Instant::now();
        let mut p = Pending::new(limits());
        started(&mut p, "c1", "192.0.2.1", t0);
        assert!(matches!(p.gate("c1", t0), PollGate::Ask(_)));
        // Another poll while the first is at the provider.
        assert!(matches!(p.gate("c1", t0), PollGate::SlowDown(d) if d == Duration::from_secs(10)));
        assert_eq!(
            p.finish("c1", PollOutcome::Pending),
            Duration::from_secs(10)
        );
        let t1 = t0 + Duration::from_secs(9);
        assert!(matches!(p.gate("c1", t1), PollGate::SlowDown(d) if d == Duration::from_secs(15)));
        let t2 = t1 + Duration::from_secs(15);
        assert!(matches!(p.gate("c1", t2), PollGate::Ask(_)));
        assert_eq!(
            p.finish("c1", PollOutcome::SlowDown),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn a_code_is_used_once_and_forgotten_after_its_expiry() {
        let t0 = Instant::now();
        let mut p = Pending::new(limits());
        started(&mut p, "c1", "192.0.2.1", t0);
        assert!(matches!(p.gate("c1", t0), PollGate::Ask(s) if s.expose() == "provider-c1"));
        p.finish("c1", PollOutcome::End(Ended::Used));
        let t1 = t0 + Duration::from_secs(30);
        assert!(matches!(p.gate("c1", t1), PollGate::Ended(Ended::Used)));
        assert!(matches!(p.gate("guess", t1), PollGate::Unknown));
        let late = t0 + Duration::from_secs(600) + TOMBSTONE;
        assert!(matches!(p.gate("c1", late), PollGate::Unknown));
    }

    #[test]
    fn an_expired_code_says_so() {
        let t0 = Instant::now();
        let mut p = Pending::new(limits());
        started(&mut p, "c1", "192.0.2.1", t0);
        let t1 = t0 + Duration::from_secs(600);
        assert!(matches!(p.gate("c1", t1), PollGate::Expired));
        assert!(matches!(p.gate("c1", t1), PollGate::Ended(Ended::Failed)));
    }

    #[test]
    fn limits_per_source_per_minute_and_in_all() {
        let t0 = Instant::now();
        let mut p = Pending::new(limits());
        started(&mut p, "a", "192.0.2.1", t0);
        started(&mut p, "b", "192.0.2.1", t0);
        assert_eq!(p.admit(ip("192.0.2.1"), t0), Err(StartRefused::SourceFull));
        started(&mut p, "c", "198.51.100.1", t0);
        started(&mut p, "d", "198.51.100.2", t0);
        assert_eq!(p.admit(ip("203.0.113.1"), t0), Err(StartRefused::Full));
        let mut q = Pending::new(Limits {
            pending: 100,
            pending_per_source: 100,
            starts_per_minute: 3,
        });
        for _ in 0..3 {
            q.admit(ip("192.0.2.1"), t0).unwrap();
        }
        assert_eq!(q.admit(ip("192.0.2.1"), t0), Err(StartRefused::TooFast));
        assert!(
            q.admit(ip("192.0.2.1"), t0 + Duration::from_secs(60))
                .is_ok()
        );
    }
}
