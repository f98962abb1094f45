//! `drawbridge audit search`: questions to the log without jq ("who reached web-1 last
//! week, under which policy?").
//!
//! The file is read as a stream, one line at a time (memory stays flat whatever its
//! size). A line that cannot hold a match is skipped before it is parsed: the user, host
//! and event asked for must appear in its text. Search does not check the hash chain
//! (`audit verify` does); lines that are not records are counted and reported.
//!
//! Matching:
//! - `--user U`: the record's `user` (API records) or `key_id` (bastion records: a
//!   certificate's key id is its user) equals `U`;
//! - `--host H`: its `host` (the name asked for) or `target` (the inventory name) equals `H`;
//! - `--event K`: its `event` is `K`, or starts with `K.` (`forward` matches
//!   `forward.opened`, `forward.refused` and `forward.closed`);
//! - `--since T`, `--until T`: `T` ≤ `ts` < `T'`, each an RFC 3339 time
//!   (`2026-11-25T06:00:00Z`), a date (`2026-11-25`, midnight UTC), or a duration before
//!   now (`7d`, `36h`).

use std::io::{self, BufRead, Read, Write};
use std::time::SystemTime;

use serde_json::{Map, Value};

/// Record fields that name the user.
pub const USER_FIELDS: &[&str] = &["user", "key_id"];
/// Record fields that name the host.
pub const HOST_FIELDS: &[&str] = &["host", "target"];
/// Longest line read as a record; longer ones are skipped (and counted).
pub const MAX_LINE: usize = 1024 * 1024;

/// What to look for. Every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub host: Option<String>,
    pub event: Option<String>,
    /// RFC 3339 with milliseconds, as records write `ts` (so text order is time order).
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filter {
    /// Parses a `--since` / `--until` value (see the module docs) into the form records use.
    pub fn time(s: &str, now: SystemTime) -> Result<String, String> {
        let s = s.trim();
        let t = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
            humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
                .map_err(|e| format!("{s:?} is not a date: {e}"))?
        } else if s.contains('T') || s.contains(':') {
            humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
                .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?
        } else {
            let d = crate::util::parse_duration(s)?;
            now.checked_sub(d)
                .ok_or_else(|| format!("{s:?} reaches before 1970"))?
        };
        Ok(humantime::format_rfc3339_millis(t).to_string())
    }

    /// The strings a line must contain to match: each one asked for, as JSON writes it.
    /// Checking them on the raw line is cheap, and false for most lines of a large log.
    fn needles(&self) -> Vec<String> {
        [&self.user, &self.host, &self.event]
            .into_iter()
            .flatten()
            .map(|s| json_inner(s))
            .collect()
    }

    fn matches(&self, rec: &Map<String, Value>) -> bool {
        let text = |k: &str| rec.get(k).and_then(Value::as_str);
        if let Some(u) = &self.user
            && !USER_FIELDS.iter().any(|f| text(f) == Some(u.as_str()))
        {
            return false;
        }
        if let Some(h) = &self.host
            && !HOST_FIELDS.iter().any(|f| text(f) == Some(h.as_str()))
        {
            return false;
        }
        if let Some(kind) = &self.event {
            let e = text("event").unwrap_or("");
            let family = e
                .strip_prefix(kind.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if e != kind && !family {
                return false;
            }
        }
        let ts = text("ts").unwrap_or("");
        if self.since.as_ref().is_some_and(|s| ts < s.as_str()) {
            return false;
        }
        if self.until.as_ref().is_some_and(|u| ts >= u.as_str()) {
            return false;
        }
        true
    }
}

/// `s` as it appears inside a JSON string (without the quotes).
fn json_inner(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// What a search read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    pub matched: u64,
    /// Lines that are not JSON records, or too long.
    pub skipped: u64,
}

/// How matches are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One aligned row per record, for people.
    Table,
    /// The record's line as it is in the log (JSON lines).
    Json,
}

/// Streams `reader`, writing each record that matches `filter` to `out`.
pub fn search(
    mut reader: impl BufRead,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let needles = filter.needles();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    if format == Format::Table {
        writeln!(
            out,
            "{:<24}  {:<20}  {:<14}  {:<12}  {:<14}  {:<12}  DETAIL",
            "TIME", "EVENT", "USER", "HOST", "PRINCIPAL", "POLICY"
        )?;
    }
    loop {
        buf.clear();
        let n = Read::take(&mut reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        stats.lines += 1;
        if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
            // Skip the rest of this overlong line.
            stats.skipped += 1;
            skip_line(&mut reader)?;
            continue;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            stats.skipped += 1;
            continue;
        };
        if !needles.iter().all(|n| line.contains(n.as_str())) {
            continue;
        }
        let Ok(Value::Object(rec)) = serde_json::from_str::<Value>(line) else {
            stats.skipped += 1;
            continue;
        };
        if !filter.matches(&rec) {
            continue;
        }
        stats.matched += 1;
        match format {
            Format::Json => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Format::Table => writeln!(out, "{}", row(&rec))?,
        }
    }
    out.flush()?;
    Ok(stats)
}

fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let (done, used) = {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, chunk.len()),
            }
        };
        reader.consume(used);
        if done {
            return Ok(());
        }
    }
}

/// One table row. Every value is escaped: names come from clients and must not reach a
/// terminal raw.
fn row(rec: &Map<String, Value>) -> String {
    let text = |k: &str| -> String {
        match rec.get(k) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => crate::util::escape(s),
            Some(other) => crate::util::escape(&other.to_string()),
        }
    };
    let first = |keys: &[&str]| {
        keys.iter()
            .map(|k| text(k))
            .find(|v| !v.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let mut policy = first(&["policy_version"]);
    if policy.len() > 12 && !policy.starts_with("sha256:") {
        // A commit: its first 12 digits, and a mark when a content hash follows.
        let dirty = policy.contains('+');
        policy.truncate(12);
        if dirty {
            policy.push('+');
        }
    }
    let mut detail = Vec::new();
    for k in [
        "reason", "login", "ssh_user", "peer", "client", "serial", "message",
    ] {
        let v = text(k);
        if !v.is_empty() {
            detail.push(format!("{k}={v}"));
        }
    }
    format!(
        "{:<24}  {:<20}  {:<14}  {:<12}  {:<14}  {:<12}  {}",
        first(&["ts"]),
        first(&["event"]),
        first(USER_FIELDS),
        first(HOST_FIELDS),
        first(&["principal"]),
        policy,
        detail.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> String {
        [
            r#"{"event":"forward.opened","host":"web-1","key_id":"alice","policy_version":"abc","seq":1,"ts":"2026-11-20T10:00:00.000Z"}"#,
            r#"{"event":"forward.refused","host":"db-1","key_id":"bob","reason":"no-grant","seq":2,"ts":"2026-11-21T10:00:00.000Z"}"#,
            r#"{"event":"cert.issued","user":"alice","seq":3,"ts":"2026-11-22T10:00:00.000Z"}"#,
            "not json at all with alice",
            r#"{"event":"forward.opened","host":"web-10","key_id":"carol","seq":4,"ts":"2026-11-23T10:00:00.000Z"}"#,
        ]
        .join("\n")
            + "\n"
    }

    fn run(filter: Filter) -> (Vec<u64>, Stats) {
        let mut out = Vec::new();
        let stats = search(lines().as_bytes(), &filter, Format::Json, &mut out).unwrap();
        let seqs = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        (seqs, stats)
    }

    #[test]
    fn filters_combine_and_host_is_exact() {
        let f = Filter {
            host: Some("web-1".into()),
            ..Filter::default()
        };
        assert_eq!(run(f).0, vec![1], "web-10 is not web-1");
        let f = Filter {
            user: Some("alice".into()),
            ..Filter::default()
        };
        let (seqs, stats) = run(f);
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(stats.skipped, 1, "the line that is not a record");
        let f = Filter {
            event: Some("forward".into()),
            since: Some("2026-11-21T00:00:00.000Z".into()),
            until: Some("2026-11-23T10:00:00.000Z".into()),
            ..Filter::default()
        };
        assert_eq!(run(f).0, vec![2]);
        let f = Filter {
            event: Some("forward.open".into()),
            ..Filter::default()
        };
        assert!(run(f).0.is_empty(), "an event family is a whole part");
    }

    #[test]
    fn times_parse_in_three_forms() {
        let now = humantime::parse_rfc3339("2026-11-25T00:00:00Z").unwrap();
        assert_eq!(
            Filter::time("2026-11-20", now).unwrap(),
            "2026-11-20T00:00:00.000Z"
        );
        assert_eq!(
            Filter::time("2026-11-20T06:30:00Z", now).unwrap(),
            "2026-11-20T06:30:00.000Z"
        );
        assert_eq!(Filter::time("7d", now).unwrap(), "2026-11-18T00:00:00.000Z");
        assert!(Filter::time("last week", now).is_err());
    }

    #[test]
    fn table_rows_escape_control_characters() {
        let rec: Map<String, Value> = serde_json::from_str(
            r#"{"event":"login.failed","user":"mallory\u001b[31m\nx","ts":"t"}"#,
        )
        .unwrap();
        let r = row(&rec);
        assert!(!r.contains('\u{1b}') && !r.contains('\n'), "{r}");
    }
}
