//! Free loopback ports for tests, chosen below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default). A port taken from the
//! ephemeral range with `bind(0)` and released can be taken again, before the test's
//! server binds it, by any outgoing connection of a test running beside it (some open a
//! thousand); a port below the range is never handed out that way.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOW: u32 = 20_000;
const SPAN: u32 = 12_000;
/// Coprime with `SPAN`, so one process walks every port of the span before repeating one.
const STRIDE: u32 = 7_919;

static NEXT: AtomicU32 = AtomicU32::new(0);
static SEED: OnceLock<u32> = OnceLock::new();

/// A TCP port on 127.0.0.1 between 20000 and 31999 that nothing listens on now.
pub fn free_port() -> u16 {
    // Each process starts somewhere else in the span (scripts run by tests pick ports too),
    // chosen once: a seed drawn per call would let two calls of one process land on the
    // same port before either has bound it.
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        std::process::id().wrapping_mul(2_654_435_761) ^ nanos
    });
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(STRIDE)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN - 1)
}
