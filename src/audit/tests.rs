#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use super::record::{VerifyFailure, verify, verify_reader};
use super::*;

fn temp() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/audit.log");
    (dir, path)
}

async fn write_n(audit: &Audit, n: usize) {
    for i in 0..n {
        audit
            .record_raw(Event::new("test.event").with("i", i).with("user", "alice"))
            .await
            .unwrap();
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn failure_line(r: Result<VerifySummary, VerifyFailure>) -> (u64, String) {
    match r {
        Err(VerifyFailure::Record { line, what }) => (line, what),
        other => panic!("expected a record failure, got {other:?}"),
    }
}

#[tokio::test]
async fn chain_round_trip() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    assert!(audit.healthy());
    write_n(&audit, 5).await;
    let summary = verify(&path).unwrap();
    assert_eq!(summary.records, 5);
    assert_eq!(audit.head(), (5, summary.last_hash.clone()));

    let lines = lines_of(&path);
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["replica"], "r1");
    assert_eq!(first["event"], "test.event");
    assert_eq!(first["user"], "alice");
    let ts = first["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-25T06:35:00.123Z".len(),
        "{ts}"
    );
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["prev"], first["hash"]);
    // The line is the canonical form: re-serialising gives the same bytes.
    assert_eq!(record::canonical(&first), lines[0]);
}

#[cfg(unix)]
#[tokio::test]
async fn file_is_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, path) = temp();
    let _audit = Audit::open(&path, "r1").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn empty_log_verifies() {
    let (_d, path) = temp();
    let _audit = Audit::open(&path, "r1").unwrap();
    let s = verify(&path).unwrap();
    assert_eq!(s.records, 0);
    assert_eq!(s.last_hash, GENESIS);
}

/// docs/threats.md T22: newline, ESC and NUL in a field stay escaped; one record is one line.
#[tokio::test]
async fn control_characters_stay_on_one_line() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    let evil = "mallory\n{\"seq\":99}\u{1b}[31m\0end\r";
    audit
        .record_raw(
            Event::new("ssh.auth.failed")
                .with("user", evil)
                .with("key_id", evil),
        )
        .await
        .unwrap();
    write_n(&audit, 1).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches('\n').count(), 2);
    assert!(!text.contains('\u{1b}') && !text.contains('\0') && !text.contains('\r'));
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["user"], evil);
    assert_eq!(verify(&path).unwrap().records, 2);
}

#[tokio::test]
async fn reserved_field_names_cannot_forge_the_chain() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    audit
        .record_raw(
            Event::new("x")
                .with("seq", 77)
                .with("hash", "abc")
                .with("prev", "zz"),
        )
        .await
        .unwrap();
    let line: Value = serde_json::from_str(&lines_of(&path)[0]).unwrap();
    assert_eq!(line["seq"], 1);
    assert_eq!(line["field.seq"], 77);
    assert_eq!(line["field.hash"], "abc");
    assert!(verify(&path).is_ok());
}

#[tokio::test]
async fn verify_names_an_edited_record() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 5).await;
    let mut lines = lines_of(&path);
    lines[2] = lines[2].replace("alice", "mallory");
    write_lines(&path, &lines);
    let (line, what) = failure_line(verify(&path));
    assert_eq!(line, 3);
    assert!(what.contains("hash mismatch"), "{what}");
}

#[tokio::test]
async fn verify_catches_an_edit_with_a_recomputed_hash() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 5).await;
    let mut lines = lines_of(&path);
    let mut v: Map<String, Value> = serde_json::from_str(&lines[2]).unwrap();
    v.insert("user".into(), "mallory".into());
    let h = record::record_hash(&v);
    v.insert("hash".into(), h.into());
    lines[2] = record::canonical(&Value::Object(v));
    write_lines(&path, &lines);
    let (line, what) = failure_line(verify(&path));
    assert_eq!(line, 4);
    assert!(what.contains("\"prev\" does not match"), "{what}");
}

#[tokio::test]
async fn verify_names_a_deleted_record() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 5).await;
    let mut lines = lines_of(&path);
    lines.remove(2);
    write_lines(&path, &lines);
    let (line, what) = failure_line(verify(&path));
    assert_eq!(line, 3);
    assert!(what.contains("deleted or reordered"), "{what}");

    // Deleting the first record is caught too.
    let mut lines = lines_of(&path);
    lines.remove(0);
    write_lines(&path, &lines);
    let (line, _) = failure_line(verify(&path));
    assert_eq!(line, 1);
}

#[tokio::test]
async fn verify_names_reordered_records() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 5).await;
    let mut lines = lines_of(&path);
    lines.swap(1, 2);
    write_lines(&path, &lines);
    let (line, what) = failure_line(verify(&path));
    assert_eq!(line, 2);
    assert!(what.contains("deleted or reordered"), "{what}");
}

#[tokio::test]
async fn verify_names_a_cut_off_record_and_garbage() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 3).await;
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 10]).unwrap();
    let (line, what) = failure_line(verify(&path));
    assert_eq!(line, 3);
    assert!(what.contains("incomplete"), "{what}");

    let (line, what) = failure_line(verify_reader(&b"{\"seq\":1}\nnot json\n"[..]));
    assert_eq!(line, 1);
    assert!(what.contains("prev"), "{what}");
    let (line, what) = failure_line(verify_reader(&b"not json\n"[..]));
    assert_eq!(line, 1);
    assert!(what.contains("not a JSON record"), "{what}");
}

#[tokio::test]
async fn reopen_continues_the_chain() {
    let (_d, path) = temp();
    {
        let audit = Audit::open(&path, "r1").unwrap();
        write_n(&audit, 3).await;
    }
    let audit = Audit::open(&path, "r1").unwrap();
    assert_eq!(audit.head().0, 3);
    write_n(&audit, 2).await;
    let s = verify(&path).unwrap();
    assert_eq!(s.records, 5);
}

#[tokio::test]
async fn reopen_truncates_a_partial_line_and_records_it() {
    let (_d, path) = temp();
    {
        let audit = Audit::open(&path, "r1").unwrap();
        write_n(&audit, 2).await;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let partial = b"{\"seq\":3,\"event\":\"cert.iss";
    f.write_all(partial).unwrap();
    drop(f);
    assert!(verify(&path).is_err());

    let audit = Audit::open(&path, "r1").unwrap();
    write_n(&audit, 1).await;
    assert_eq!(verify(&path).unwrap().records, 4);
    let lines = lines_of(&path);
    let rec: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(rec["event"], "audit.recovered");
    assert_eq!(rec["dropped_bytes"], partial.len());
    assert_eq!(rec["seq"], 3);
}

#[tokio::test]
async fn open_refuses_an_edited_last_record() {
    let (_d, path) = temp();
    {
        let audit = Audit::open(&path, "r1").unwrap();
        write_n(&audit, 2).await;
    }
    let mut lines = lines_of(&path);
    lines[1] = lines[1].replace("alice", "mallory");
    write_lines(&path, &lines);
    let Err(AuditError::Unavailable(msg)) = Audit::open(&path, "r1") else {
        panic!("opened an edited log");
    };
    assert!(msg.contains("audit verify"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_form_one_valid_chain() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1")
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let tasks = 200;
    let per_task = 25;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let audit = audit.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                audit
                    .record_raw(Event::new("load").with("task", t).with("i", i))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    let n = tasks * per_task;
    let s = verify(&path).unwrap();
    assert_eq!(s.records, n as u64);
    eprintln!(
        "group commit: {n} records from {tasks} tasks in {:?} = {:.0} records/s",
        elapsed,
        n as f64 / elapsed.as_secs_f64()
    );
    // For comparison: one caller at a time, one fsync per record.
    let started = Instant::now();
    write_n(&audit, 200).await;
    let elapsed = started.elapsed();
    eprintln!(
        "one caller: 200 records in {elapsed:?} = {:.0} records/s",
        200.0 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn failing_sink_fails_closed_then_recovers() {
    let sink = MemorySink::new();
    let audit = Audit::with_sink(Box::new(sink.clone()), "r1").unwrap();
    write_n(&audit, 2).await;

    sink.set_failing(true);
    let started = Instant::now();
    let err = audit.record_raw(Event::new("cert.issued")).await;
    assert!(matches!(err, Err(AuditError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!audit.healthy());
    // Still failing, still closed.
    assert!(audit.record_raw(Event::new("cert.issued")).await.is_err());
    assert!(!audit.healthy());

    sink.set_failing(false);
    write_n(&audit, 1).await;
    assert!(audit.healthy());
    let s = verify_reader(sink.text().as_bytes()).unwrap();
    assert_eq!(s.records, 3, "failed records are not in the chain");
    assert_eq!(audit.head(), (3, s.last_hash));
}

/// Regression (found by tests/faults_http.rs f06): health came back only with the next
/// real record, so a replica a load balancer had taken out on 503 never came back.
#[tokio::test]
async fn probe_restores_health_without_other_traffic() {
    let sink = MemorySink::new();
    let audit = Audit::with_sink(Box::new(sink.clone()), "r1").unwrap();
    write_n(&audit, 1).await;
    assert!(audit.probe().await, "healthy: no write");
    assert_eq!(sink.lines().len(), 1);

    sink.set_failing(true);
    assert!(audit.record_raw(Event::new("cert.issued")).await.is_err());
    assert!(!audit.probe().await, "still failing");
    sink.set_failing(false);
    // At most one try per PROBE_EVERY, whoever asks.
    assert!(!audit.probe().await);
    assert!(!audit.healthy());
    tokio::time::sleep(PROBE_EVERY).await;
    assert!(audit.probe().await);
    assert!(audit.healthy());
    let lines = sink.lines();
    assert_eq!(lines.len(), 2);
    let resumed: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(resumed["event"], "audit.resumed", "{}", lines[1]);
    verify_reader(sink.text().as_bytes()).unwrap();
}

#[tokio::test]
async fn stalled_sink_answers_within_the_timeout() {
    let sink = MemorySink::new();
    let audit = Audit::with_sink(Box::new(sink.clone()), "r1").unwrap();
    assert_eq!(audit.timeout(), Duration::from_secs(1));
    let audit = audit.with_timeout(Duration::from_millis(200));
    sink.set_delay(Duration::from_millis(800));
    let started = Instant::now();
    let r = audit.record_raw(Event::new("cert.issued")).await;
    assert!(matches!(r, Err(AuditError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_millis(700));
    assert!(!audit.healthy());
    sink.set_delay(Duration::ZERO);
    let audit = audit.with_timeout(Duration::from_secs(5));
    write_n(&audit, 1).await;
    assert!(audit.healthy());
    assert!(verify_reader(sink.text().as_bytes()).is_ok());
}

#[tokio::test]
async fn with_sink_continues_an_existing_chain() {
    let sink = MemorySink::new();
    {
        let audit = Audit::with_sink(Box::new(sink.clone()), "r1").unwrap();
        write_n(&audit, 2).await;
    }
    let audit = Audit::with_sink(Box::new(sink.clone()), "r1").unwrap();
    write_n(&audit, 2).await;
    assert_eq!(verify_reader(sink.text().as_bytes()).unwrap().records, 4);
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_refused() {
    let (_d, path) = temp();
    let _first = Audit::open(&path, "r1").unwrap();
    let started = Instant::now();
    let Err(AuditError::Unavailable(msg)) = Audit::open(&path, "r2") else {
        panic!("two writers on one file");
    };
    assert!(msg.contains("locked by another process"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn session_records_are_written_with_their_kinds() {
    let (_d, path) = temp();
    let audit = Audit::open(&path, "r1").unwrap();
    for e in event::samples().into_iter().filter(|e| {
        matches!(
            e,
            AuditEvent::SessionStarted(_)
                | AuditEvent::SessionEnded(_)
                | AuditEvent::SessionRefused(_)
        )
    }) {
        audit.record(e).await.unwrap();
    }
    let kinds: Vec<String> = lines_of(&path)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        ["session.started", "session.ended", "session.refused"]
    );
    let refused: Value = serde_json::from_str(&lines_of(&path)[2]).unwrap();
    assert_eq!(refused["reason"], "recording-unavailable");
    assert_eq!(refused["rule"], "recording.dir");
    verify(&path).unwrap();
}
