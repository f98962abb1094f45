//! The record format, its canonical form and hash, and `verify`.
//!
//! # The rule, for anyone re-implementing `audit verify`
//!
//! A log file is UTF-8 text, one record per line, each line ending in `\n`. A record is a
//! JSON object with these keys, plus the event's own fields:
//!
//! | key | value |
//! |---|---|
//! | `seq` | integer, 1 for the first record of the file, +1 for each record after it |
//! | `ts` | RFC 3339 UTC time with milliseconds, e.g. `2026-11-25T06:35:00.123Z` |
//! | `replica` | the name of the replica that wrote the file (one chain per replica) |
//! | `event` | what happened, e.g. `cert.issued` |
//! | `prev` | the `hash` of the previous record, lowercase hex; 64 zeros for the first |
//! | `hash` | lowercase hex SHA-256 of the record's canonical form **without** the `hash` key |
//!
//! The canonical form of a JSON value is its compact serialisation (no whitespace) where
//! the keys of every object, at every depth, are sorted by their UTF-8 bytes; strings are
//! escaped as serde_json does (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other characters
//! below U+0020 as `\u00xx` with lowercase hex, everything else as literal UTF-8); numbers
//! are written as serde_json writes them (integers in plain decimal). Each line in the file
//! *is* the canonical form of the whole record (with `hash`), so a re-implementation may
//! also check that.
//!
//! To verify: for each line, parse it, remove `hash`, canonicalise, SHA-256, compare with
//! `hash` (a mismatch means the record was edited); check `prev` equals the previous
//! record's `hash` and `seq` is one more than the previous `seq` (a mismatch means records
//! were deleted or reordered).
//!
//! Deleting records **from the end** of a file leaves a valid, shorter chain, and an edit
//! followed by recomputing every later hash leaves a valid chain too: neither can be
//! detected from the file alone. The service's signed checkpoints, kept beside the log and
//! shipped elsewhere, catch both ([`super::checkpoint`], [`super::anchor`]).
//!
//! Because JSON escapes control characters, a field holding a newline, ESC or NUL can
//! never split a record or reach a terminal raw (docs/threats.md T22).

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The keys drawbridge sets on every record. An event field with one of these names is
/// stored as `field.<name>` instead, so an event can never forge the chain.
pub const RESERVED: [&str; 6] = ["seq", "ts", "replica", "event", "prev", "hash"];

/// Appends the canonical form of `v` to `out`.
pub fn canonical_into(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(k, out);
                out.push(':');
                if let Some(val) = map.get(k.as_str()) {
                    canonical_into(val, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_into(item, out);
            }
            out.push(']');
        }
        Value::String(s) => push_json_string(s, out),
        // Null, booleans and numbers have one serialisation in serde_json.
        other => out.push_str(&other.to_string()),
    }
}

fn push_json_string(s: &str, out: &mut String) {
    // serde_json's string serialisation is the documented escaping rule.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// The canonical form of `v`.
pub fn canonical(v: &Value) -> String {
    let mut out = String::with_capacity(256);
    canonical_into(v, &mut out);
    out
}

/// Lowercase hex SHA-256 of the canonical form of `record` without its `hash` key.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut keys: Vec<&String> = record.keys().filter(|k| k.as_str() != "hash").collect();
    keys.sort_unstable();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(k, &mut out);
        out.push(':');
        if let Some(val) = record.get(k.as_str()) {
            canonical_into(val, &mut out);
        }
    }
    out.push('}');
    hex::encode(Sha256::digest(out.as_bytes()))
}

/// Builds one complete record line (with its trailing `\n`) and returns it with its hash.
pub fn build_line(
    seq: u64,
    ts: &str,
    replica: &str,
    kind: &str,
    fields: &Map<String, Value>,
    prev: &str,
) -> (String, String) {
    let mut record = Map::new();
    for (k, v) in fields {
        if RESERVED.contains(&k.as_str()) {
            record.insert(format!("field.{k}"), v.clone());
        } else {
            record.insert(k.clone(), v.clone());
        }
    }
    record.insert("seq".into(), Value::from(seq));
    record.insert("ts".into(), Value::from(ts));
    record.insert("replica".into(), Value::from(replica));
    record.insert("event".into(), Value::from(kind));
    record.insert("prev".into(), Value::from(prev));
    let hash = record_hash(&record);
    record.insert("hash".into(), Value::from(hash.clone()));
    let mut line = canonical(&Value::Object(record));
    line.push('\n');
    (line, hash)
}

/// The chain position a record claims, read from one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
}

/// Parses one line (without its `\n`) and checks its own hash. Does not check `prev`.
pub fn parse_line(line: &[u8]) -> Result<Parsed, String> {
    parse_record(line).map(|(parsed, _)| parsed)
}

/// [`parse_line`], also returning the whole record.
pub fn parse_record(line: &[u8]) -> Result<(Parsed, Map<String, Value>), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not a JSON record: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let seq = map
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("missing or non-integer \"seq\"")?;
    let prev = hex_field(&map, "prev")?;
    let hash = hex_field(&map, "hash")?;
    for key in ["ts", "replica", "event"] {
        if !map.get(key).is_some_and(Value::is_string) {
            return Err(format!("missing or non-string \"{key}\""));
        }
    }
    let computed = record_hash(&map);
    if computed != hash {
        return Err(format!(
            "hash mismatch: the record was edited (stored {hash}, computed {computed})"
        ));
    }
    Ok((Parsed { seq, prev, hash }, map))
}

fn hex_field(map: &Map<String, Value>, key: &str) -> Result<String, String> {
    let s = map
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing or non-string \"{key}\""))?;
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("\"{key}\" is not 64 lowercase hex digits"));
    }
    Ok(s.to_owned())
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    /// The last record's hash ([`GENESIS`] for an empty file). Compare it with a copy kept
    /// elsewhere to detect records deleted from the end.
    pub last_hash: String,
}

/// Why a chain did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The file could not be read at all.
    Io(String),
    /// The first bad record: its 1-based line number and what is wrong with it.
    Record { line: u64, what: String },
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyFailure::Io(e) => write!(f, "{e}"),
            VerifyFailure::Record { line, what } => write!(f, "{line}: {what}"),
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// Checks the whole chain of the file at `path` and names the first bad record.
pub fn verify(path: &Path) -> Result<VerifySummary, VerifyFailure> {
    let file = std::fs::File::open(path).map_err(|e| VerifyFailure::Io(e.to_string()))?;
    verify_reader(BufReader::new(file))
}

/// [`verify`] over any reader.
pub fn verify_reader(reader: impl BufRead) -> Result<VerifySummary, VerifyFailure> {
    verify_reader_with(reader, |_, _| Ok(()))
}

/// [`verify_reader`], also showing each record that passed the chain checks to `visit`
/// (in order); an `Err` from `visit` is reported as that record's failure.
pub fn verify_reader_with(
    mut reader: impl BufRead,
    mut visit: impl FnMut(&Parsed, &Map<String, Value>) -> Result<(), String>,
) -> Result<VerifySummary, VerifyFailure> {
    let mut line_no: u64 = 0;
    let mut last_hash = GENESIS.to_string();
    let mut last_seq: u64 = 0;
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyFailure::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let bad = |what: String| VerifyFailure::Record {
            line: line_no,
            what,
        };
        if buf.last() != Some(&b'\n') {
            return Err(bad(
                "incomplete record at the end of the file (no newline): a write was cut off".into(),
            ));
        }
        buf.pop();
        let (rec, map) = parse_record(&buf).map_err(bad)?;
        if rec.prev != last_hash {
            let after = if line_no == 1 {
                "the start of the file".to_string()
            } else {
                format!("line {}", line_no - 1)
            };
            return Err(bad(format!(
                "\"prev\" does not match the hash of {after}: records were deleted or reordered (seq {}, previous seq {last_seq})",
                rec.seq
            )));
        }
        if rec.seq != last_seq.wrapping_add(1) {
            return Err(bad(format!(
                "seq {} where {} was expected: records were deleted or reordered",
                rec.seq,
                last_seq.wrapping_add(1)
            )));
        }
        visit(&rec, &map).map_err(bad)?;
        last_seq = rec.seq;
        last_hash = rec.hash;
    }
    Ok(VerifySummary {
        records: line_no,
        last_hash,
    })
}
