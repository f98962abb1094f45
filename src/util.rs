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
}
