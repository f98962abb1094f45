//! `docs/audit-events.md` and the schema ([`super::event`], [`super::refusal`]) agree:
//! every record kind, field and JSON type in the table is what the code writes, and the
//! other way round; every refusal code is listed once.

use std::collections::BTreeSet;

use serde_json::Value;

use super::event::samples;
use super::{Event, RefusalCode};

const DOC: &str = include_str!("../../docs/audit-events.md");

/// The cells of the table rows under the heading `## {title}` (header and rule skipped).
fn table(title: &str) -> Vec<Vec<String>> {
    let heading = format!("## {title}");
    let mut lines = DOC.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut rows = Vec::new();
    for l in lines.by_ref() {
        let l = l.trim();
        if l.starts_with("## ") {
            break;
        }
        if !l.starts_with('|') || l.starts_with("|---") || l.starts_with("| ---") {
            continue;
        }
        let cells: Vec<String> = l
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect();
        rows.push(cells);
    }
    assert!(!rows.is_empty(), "no table under {heading:?}");
    // The first row is the header.
    rows.remove(0);
    rows
}

/// The JSON type as the table writes it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Array(a) if a.first().is_some_and(Value::is_object) => "[grant]",
        Value::Array(_) => "[string]",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// `(event, field, type)` of every field the code writes.
fn from_code() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for e in samples() {
        let e = Event::from(e);
        for (k, v) in &e.fields {
            out.insert((e.kind.clone(), k.clone(), json_type(v).to_string()));
        }
        if e.kind == super::checkpoint::EVENT {
            // Added by the writer, which signs the head the record follows.
            out.insert((e.kind.clone(), "checkpoint".into(), "object".into()));
        }
    }
    out
}

fn from_doc() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for row in table("Record kinds") {
        assert!(
            row.len() >= 4,
            "a row of the record table has fewer than 4 cells: {row:?}"
        );
        let triple = (row[0].clone(), row[1].clone(), row[2].clone());
        assert!(out.insert(triple.clone()), "listed twice: {triple:?}");
    }
    out
}

#[test]
fn the_record_table_matches_the_schema() {
    let code = from_code();
    let doc = from_doc();
    let missing: Vec<_> = code.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/audit-events.md and the schema disagree.\nwritten by the code, not in the table: {missing:#?}\nin the table, not written by the code: {extra:#?}"
    );
}

#[test]
fn the_refusal_code_table_matches_the_enum() {
    let doc: Vec<String> = table("Refusal codes")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let doc_set: BTreeSet<&str> = doc.iter().map(String::as_str).collect();
    assert_eq!(doc.len(), doc_set.len(), "a code is listed twice");
    let code: BTreeSet<&str> = RefusalCode::ALL.iter().map(|c| c.as_str()).collect();
    let missing: Vec<_> = code.difference(&doc_set).collect();
    let extra: Vec<_> = doc_set.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/audit-events.md and RefusalCode disagree.\nin RefusalCode, not in the table: {missing:?}\nin the table, not in RefusalCode: {extra:?}"
    );
}

#[test]
fn every_sample_kind_is_a_distinct_kind() {
    let kinds: Vec<String> = samples().into_iter().map(|e| Event::from(e).kind).collect();
    let set: BTreeSet<&String> = kinds.iter().collect();
    assert_eq!(kinds.len(), set.len(), "a kind has two samples: {kinds:?}");
}

#[test]
fn a_cut_peer_text_spreads_into_three_fields() {
    let long = "é".repeat(200);
    let e = Event::from(super::AuditEvent::LoginFailed {
        client: "c".into(),
        reason: RefusalCode::InvalidCredentials,
        detail: "d".into(),
        method: "password".into(),
        user: Some(super::PeerText::cut(&long)),
        policy_version: "v".into(),
        rule: "paths.users".into(),
    });
    assert!(e.fields["user"].as_str().unwrap().len() <= 256 + "…".len());
    assert_eq!(e.fields["user_len"], Value::from(400));
    assert_eq!(e.fields["user_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(e.fields["reason"], Value::from("invalid_credentials"));
    let short = Event::from(super::AuditEvent::LoginFailed {
        client: "c".into(),
        reason: RefusalCode::InvalidCredentials,
        detail: "d".into(),
        method: "password".into(),
        user: Some(super::PeerText::cut("bob\n")),
        policy_version: "v".into(),
        rule: "paths.users".into(),
    });
    assert_eq!(short.fields["user"], Value::from("bob\\n"));
    assert!(!short.fields.contains_key("user_len"));
}

/// Every record kind is asserted by some test: its name appears, quoted, in an
/// integration test (`tests/it/`) or in the audit module's own tests. (Those tests read
/// the records a real run wrote; every run of the binary in `tests/it` is also checked
/// against the table, in `support::drawbridge`'s `Drop`.)
#[test]
fn every_record_kind_is_asserted_by_some_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = String::new();
    for dir in ["tests/it", "src/audit"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let is_test = dir == "tests/it" || name.contains("tests");
            if is_test && name.ends_with(".rs") && name != "schema_tests.rs" {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let kinds: BTreeSet<String> = from_doc().into_iter().map(|(k, _, _)| k).collect();
    let missing: Vec<&String> = kinds
        .iter()
        .filter(|k| !text.contains(&format!("\"{k}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "no test asserts these kinds: {missing:?}"
    );
}
