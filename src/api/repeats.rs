//! Refusals that repeat: one audit record per second, with a count.
//!
//! A login refused for load (`busy`: the hashing queue is full) or for past failures
//! (`rate_limited`) is answered without looking at the credential, thousands of times a
//! second if a client insists. Writing (and fsyncing) each of them would let any anonymous
//! client grow the audit log at its request rate and take the CPU from issuance. So per
//! (reason, client source, method) the first refusal of each one-second window is
//! recorded as usual (`login.failed`, before the answer), and the ones after it in the
//! same window are counted and written as one `login.failed.repeated` record with
//! `repeats` when the window has ended (at most about two seconds later, and at shutdown).
//! The claimed user name is not part of the key: a client that varies the name on every
//! try still shares one window per source (an IPv4 address, or an IPv6 /64, which one
//! host usually holds whole); the name claimed first in the window is in both records.
//! Every refusal still reaches the client with its reason; the audit log gets each
//! first one whole and the rest as a count. At most [`MAX_KEYS`] windows are open at once;
//! past that, refusals are recorded one by one again (never dropped).
//!
//! A counted refusal is also answered [`REPEAT_DELAY`] late: a client that keeps knocking
//! after its 429 on a kept-alive connection is slowed to a few requests a second per
//! connection instead of thousands, so the CPU it costs (TLS, HTTP) stays small beside
//! certificate issuance. A first refusal, and anyone else's request, is not delayed.

use crate::audit::RefusalCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(1);
/// How late a counted (repeated) refusal is answered.
pub const REPEAT_DELAY: Duration = Duration::from_millis(250);
/// Most windows open at once (one per distinct key).
pub const MAX_KEYS: usize = 65_536;

/// What a repeated refusal is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepeatKey {
    pub reason: RefusalCode,
    /// The rule that refused (a config key).
    pub rule: &'static str,
    /// The client's source: its IPv4 address, or its IPv6 /64.
    pub client: IpAddr,
    pub method: &'static str,
}

impl RepeatKey {
    /// The key of a refusal from `client` (counted per source, whatever name it claims).
    pub fn new(
        reason: RefusalCode,
        rule: &'static str,
        client: IpAddr,
        method: &'static str,
    ) -> Self {
        Self {
            reason,
            rule,
            client: source_of(client),
            method,
        }
    }
}

/// The source a client address is counted under: IPv4 (and IPv4-mapped IPv6) as is,
/// other IPv6 addresses by their /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    crate::util::source_prefix(ip, 32, 64)
}

/// A window that ended with refusals that were counted, not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated {
    pub key: RepeatKey,
    /// When the window's first (recorded) refusal happened.
    pub since: SystemTime,
    /// Refusals after the first, in the window.
    pub repeats: u64,
    /// The user name claimed by the window's first refusal, cut to 128 bytes.
    pub user: Option<String>,
}

struct Window {
    opened: Instant,
    since: SystemTime,
    repeats: u64,
    user: Option<String>,
}

impl Window {
    fn new(now: Instant, user: Option<&str>) -> Window {
        Window {
            opened: now,
            since: SystemTime::now(),
            repeats: 0,
            user: user.map(|u| crate::identity::user_key(u).to_owned()),
        }
    }
}

#[derive(Default)]
struct Inner {
    open: HashMap<RepeatKey, Window>,
    /// Windows replaced by a new one before the flusher saw them.
    ended: Vec<Repeated>,
}

/// The open windows. Cheap to call from every refused request.
#[derive(Default)]
pub struct Repeats {
    inner: Mutex<Inner>,
}

impl Repeats {
    /// True when this refusal must be recorded now (the first of its window, or no room
    /// to count it); false when it was counted and will be written as a repeat.
    /// `user` is the name the refused request claimed, if any.
    pub fn record_now(&self, key: RepeatKey, user: Option<&str>, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = inner.open.get_mut(&key) {
            if now.saturating_duration_since(w.opened) < WINDOW {
                w.repeats += 1;
                return false;
            }
            let old = std::mem::replace(w, Window::new(now, user));
            if old.repeats > 0 {
                inner.ended.push(Repeated {
                    key,
                    since: old.since,
                    repeats: old.repeats,
                    user: old.user,
                });
            }
            return true;
        }
        if inner.open.len() < MAX_KEYS {
            inner.open.insert(key, Window::new(now, user));
        }
        true
    }

    /// Takes the windows that have ended by `now` (every window when `all`), returning
    /// those that counted refusals, and forgets the rest.
    pub fn take_ended(&self, now: Instant, all: bool) -> Vec<Repeated> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::mem::take(&mut inner.ended);
        inner.open.retain(|key, w: &mut Window| {
            if !all && now.saturating_duration_since(w.opened) < WINDOW {
                return true;
            }
            if w.repeats > 0 {
                out.push(Repeated {
                    key: key.clone(),
                    since: w.since,
                    repeats: w.repeats,
                    user: w.user.take(),
                });
            }
            false
        });
        out
    }

    /// Windows open now (for tests).
    pub fn open_windows(&self) -> usize {
        self.inner.lock().map(|i| i.open.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(client: &str) -> RepeatKey {
        RepeatKey::new(
            RefusalCode::Busy,
            "login.hash_queue",
            client.parse().unwrap(),
            "password",
        )
    }

    #[test]
    fn varied_names_and_addresses_of_one_64_share_a_window() {
        let r = Repeats::default();
        let now = Instant::now();
        assert!(r.record_now(key("2001:db8:1:2::1"), Some("alice"), now));
        assert!(!r.record_now(key("2001:db8:1:2:ffff::9"), Some("bob"), now));
        assert!(r.record_now(key("2001:db8:1:3::1"), Some("alice"), now));
        assert!(r.record_now(key("192.0.2.7"), Some("alice"), now));
        assert!(!r.record_now(key("::ffff:192.0.2.7"), Some("alice"), now));
        assert_eq!(r.open_windows(), 3);
    }

    #[test]
    fn the_first_of_each_window_is_recorded_the_rest_counted() {
        let r = Repeats::default();
        let t0 = Instant::now();
        assert!(r.record_now(key("192.0.2.1"), Some("alice"), t0));
        for i in 0..9 {
            assert!(!r.record_now(
                key("192.0.2.1"),
                Some("alice"),
                t0 + Duration::from_millis(i * 100)
            ));
        }
        // Another address has its own window.
        assert!(r.record_now(key("192.0.2.2"), Some("alice"), t0));
        assert!(
            r.take_ended(t0 + Duration::from_millis(500), false)
                .is_empty()
        );
        // A refusal after the window opens a new one; the old count is kept for the flusher.
        assert!(r.record_now(key("192.0.2.1"), Some("alice"), t0 + WINDOW));
        assert!(!r.record_now(key("192.0.2.1"), Some("alice"), t0 + WINDOW));
        let ended = r.take_ended(t0 + WINDOW, false);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].repeats, 9);
        assert_eq!(ended[0].key, key("192.0.2.1"));
        // 192.0.2.2 ended with nothing counted: forgotten, not reported.
        assert_eq!(r.open_windows(), 1);
        // At shutdown every window is taken.
        let last = r.take_ended(t0 + WINDOW, true);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].repeats, 1);
        assert_eq!(r.open_windows(), 0);
    }

    #[test]
    fn past_the_bound_refusals_are_recorded_one_by_one() {
        let r = Repeats::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let k = RepeatKey {
                client: ip,
                ..key("192.0.2.1")
            };
            assert!(r.record_now(k, Some("alice"), t0));
        }
        assert_eq!(r.open_windows(), MAX_KEYS);
        // A new key finds no room: recorded now, every time.
        assert!(r.record_now(key("192.0.2.9"), Some("alice"), t0));
        assert!(r.record_now(key("192.0.2.9"), Some("alice"), t0));
        assert_eq!(r.open_windows(), MAX_KEYS);
    }
}
