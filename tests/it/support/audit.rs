//! Reading drawbridge's audit log (one JSON record a line) from its file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::process::wait_until;

/// The records of the audit log at `path` (none when it does not exist yet). A complete
/// line that is not JSON fails the test; a last line without its newline is being written
/// and is left for the next read.
pub fn audit_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Records of `event` in the log at `path` whose fields match every `(key, value)`.
pub fn find_records(path: &Path, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
    audit_records(path)
        .into_iter()
        .filter(|r| r["event"] == event)
        .filter(|r| {
            fields.iter().all(|(k, v)| match &r[*k] {
                Value::String(s) => s == v,
                Value::Number(n) => n.to_string() == *v,
                _ => false,
            })
        })
        .collect()
}

/// The first record of `event` matching `fields`, waiting up to 5 s for it (records of
/// a closing connection or forward are written after the client has gone).
#[track_caller]
pub fn expect_record_in(path: &Path, event: &str, fields: &[(&str, &str)]) -> Value {
    expect_record_within(path, event, fields, Duration::from_secs(5))
}

/// [`expect_record_in`], waiting up to `limit` (for a record due at a later time, e.g. a
/// cut at a certificate's end).
#[track_caller]
pub fn expect_record_within(
    path: &Path,
    event: &str,
    fields: &[(&str, &str)],
    limit: Duration,
) -> Value {
    wait_until(
        limit,
        || !find_records(path, event, fields).is_empty(),
        || {
            let all: Vec<String> = audit_records(path).iter().map(Value::to_string).collect();
            format!(
                "no {event} record with {fields:?}; the log has:\n{}",
                all.join("\n")
            )
        },
    );
    find_records(path, event, fields).swap_remove(0)
}

/// When a record was written (its `ts`).
#[track_caller]
pub fn record_time(r: &Value) -> SystemTime {
    r["ts"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no RFC 3339 ts in {r}"))
}

/// The record kinds of `docs/audit-events.md` and the fields each may carry.
fn documented() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let doc = include_str!("../../../docs/audit-events.md");
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut in_table = false;
    for l in doc.lines() {
        let l = l.trim();
        if l.starts_with("## ") {
            in_table = l == "## Record kinds";
            continue;
        }
        if !in_table || !l.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = l
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        out.entry(cells[0].to_string())
            .or_default()
            .insert(cells[1].to_string());
    }
    out
}

/// Kinds that record a decision: each names its policy version and its rule (`rule`,
/// or `grants` for an allow).
const DECISIONS: &[&str] = &[
    "login.ok",
    "login.failed",
    "login.failed.repeated",
    "cert.issued",
    "cert.refused",
    "ssh.auth.ok",
    "ssh.auth.failed",
    "ssh.auth.failed.repeated",
    "ssh.session.refused",
    "forward.opened",
    "forward.closed",
    "forward.cut",
    "forward.refused",
];

/// Checks every record against `docs/audit-events.md`: a documented kind, only
/// documented fields, and for a decision a non-empty `policy_version` and its rule.
/// Returns what is wrong, one line per record.
pub fn schema_problems(records: &[Value]) -> Vec<String> {
    const CHAIN: &[&str] = &["seq", "ts", "replica", "event", "prev", "hash"];
    let doc = documented();
    let mut problems = Vec::new();
    for r in records {
        let kind = r["event"].as_str().unwrap_or_default();
        let Some(fields) = doc.get(kind) else {
            problems.push(format!("undocumented kind {kind:?}: {r}"));
            continue;
        };
        let Some(map) = r.as_object() else {
            problems.push(format!("not an object: {r}"));
            continue;
        };
        let extra: Vec<&String> = map
            .keys()
            .filter(|k| !CHAIN.contains(&k.as_str()) && !fields.contains(*k))
            .collect();
        if !extra.is_empty() {
            problems.push(format!("{kind}: undocumented fields {extra:?}: {r}"));
        }
        if DECISIONS.contains(&kind) {
            if r["policy_version"].as_str().is_none_or(|v| v.is_empty()) {
                problems.push(format!("{kind}: no policy_version: {r}"));
            }
            if !r["rule"].is_string() && !r["grants"].is_array() {
                problems.push(format!("{kind}: no rule: {r}"));
            }
        }
    }
    problems
}
