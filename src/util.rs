//! Small helpers shared by several modules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses a human duration such as `90s`, `15m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration {s:?}: {e} (use a number and a unit, e.g. \"90s\", \"15m\", \"1h\")"
        )
    })
}

/// Formats a duration the way the config and policy files write it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC text for a time, e.g. `2026-11-25T06:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Escapes control characters (newline, ESC, NUL, ...) so attacker-chosen text
/// (user names, key ids, host names) cannot forge log lines or drive a terminal.
pub fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}

/// A peer-chosen string as a log line or a record shows it: escaped ([`escape`]) and at
/// most [`PEER_TEXT_BYTES`] bytes of that (plus `…` when cut), whatever the peer sent.
pub fn shown(s: &str) -> String {
    let raw = cut(s, PEER_TEXT_BYTES);
    let escaped = escape(raw);
    let kept = cut(&escaped, PEER_TEXT_BYTES);
    if raw.len() == s.len() && kept.len() == escaped.len() {
        return escaped;
    }
    let mut out = kept.to_owned();
    out.push('…');
    out
}

/// Most bytes of a peer-chosen string (claimed user name, key id, host name, path,
/// principal) kept in an audit record or a log line. The rest is represented by the
/// string's full length and SHA-256 ([`PeerText`]), so a client sending 100 KB names
/// costs the log a few hundred bytes per record, and two long names can still be told
/// apart.
pub const PEER_TEXT_BYTES: usize = 256;

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A peer-chosen string as it may be recorded: its first [`PEER_TEXT_BYTES`] bytes and,
/// when that is not all of it, its full length and SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerText<'a> {
    pub kept: &'a str,
    /// `(full length in bytes, SHA-256)` when `kept` is not the whole string.
    pub cut: Option<(usize, String)>,
}

/// The one place peer-chosen strings are bounded for records and log lines.
pub fn peer_text(s: &str) -> PeerText<'_> {
    use sha2::{Digest, Sha256};
    let kept = cut(s, PEER_TEXT_BYTES);
    let cut = (kept.len() < s.len()).then(|| (s.len(), hex::encode(Sha256::digest(s.as_bytes()))));
    PeerText { kept, cut }
}

/// The source a client address is counted under for per-source limits: its first
/// `v4_bits` bits for IPv4 (and IPv4-mapped IPv6), its first `v6_bits` bits for other
/// IPv6 (one host usually holds a whole /64, so counting single IPv6 addresses would let
/// it count as 2^64 sources). Bits past 32 / 128 are treated as 32 / 128.
pub fn source_prefix(ip: std::net::IpAddr, v4_bits: u8, v6_bits: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    fn mask(bits: u8, width: u8) -> u128 {
        let bits = bits.min(width);
        if bits == 0 {
            0
        } else {
            (!0u128) << (width - bits)
        }
    }
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask(v4_bits, 32) as u32).into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => source_prefix(IpAddr::V4(v4), v4_bits, v6_bits),
            None => IpAddr::V6((u128::from(v6) & mask(v6_bits, 128)).into()),
        },
    }
}

/// serde helper: a `Duration` written as a human string (`"15m"`).
pub mod serde_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn escapes_control_characters() {
        assert_eq!(escape("a\nb\u{1b}[31m\0"), "a\\nb\\u{1b}[31m\\0");
    }

    #[test]
    fn source_prefixes() {
        let p = |s: &str, a, b| source_prefix(s.parse().unwrap(), a, b).to_string();
        assert_eq!(p("192.0.2.77", 32, 64), "192.0.2.77");
        assert_eq!(p("192.0.2.77", 24, 64), "192.0.2.0");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 32, 48), "2001:db8:1::");
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 32, 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(p("::ffff:192.0.2.9", 32, 64), "192.0.2.9");
        assert_eq!(p("192.0.2.9", 0, 64), "0.0.0.0");
    }

    #[test]
    fn shown_cuts_long_text_first() {
        let long = "\u{1}".repeat(60_000);
        let shown = shown(&long);
        assert_eq!(shown.len(), 256 + '…'.len_utf8());
        assert!(shown.starts_with("\\u{1}\\u{1}"));
        assert_eq!(super::shown("a\nb"), "a\\nb");
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn peer_text_is_cut_on_a_char_boundary_with_length_and_hash() {
        assert_eq!(
            peer_text("alice"),
            PeerText {
                kept: "alice",
                cut: None
            }
        );
        // 255 ASCII bytes then a 3-byte character across the 256-byte mark.
        let long = format!("{}\u{20ac}{}", "a".repeat(255), "z".repeat(100_000));
        let t = peer_text(&long);
        assert_eq!(t.kept, "a".repeat(255));
        let (len, sha) = t.cut.unwrap();
        assert_eq!(len, long.len());
        assert_eq!(sha.len(), 64);
        // Two long names with the same start are told apart by the hash.
        let other = format!("{}\u{20ac}{}", "a".repeat(255), "y".repeat(100_000));
        assert_ne!(peer_text(&other).cut.unwrap().1, sha);
        assert_eq!(cut("\u{20ac}", 2), "");
    }
}
