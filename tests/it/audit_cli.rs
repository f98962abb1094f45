//! `drawbridge audit verify FILE` run as the real binary.

use crate::support::drawbridge::run;
use std::path::Path;

use drawbridge::audit::{Audit, AuditEvent};

fn verify_cmd(file: &Path) -> (i32, String, String) {
    let dir = file.parent().unwrap();
    run(&["audit", "verify", file.to_str().unwrap()], dir, None)
}

#[tokio::test]
async fn audit_verify_ok_then_names_the_edited_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = Audit::open(&path, "test-1").unwrap();
    for i in 0..4 {
        audit
            .record(AuditEvent::LoginOk {
                user: "alice".into(),
                client: "127.0.0.1".into(),
                method: "password".into(),
                token_expires_at: format!("t{i}"),
                policy_version: "v".into(),
                rule: "paths.users".into(),
            })
            .await
            .unwrap();
    }
    let (last_seq, last_hash) = audit.head();
    assert_eq!(last_seq, 4);

    let (code, stdout, _) = verify_cmd(&path);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("ok: 4 records, last hash {last_hash}")
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let edited = lines[1].replace("alice", "mallory");
    lines[1] = &edited;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, stdout, stderr) = verify_cmd(&path);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2: hash mismatch", path.display())),
        "{stderr}"
    );
}

#[test]
fn audit_verify_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = verify_cmd(&dir.path().join("nope.log"));
    assert_eq!(code, 1);
    assert!(stderr.contains("nope.log"), "{stderr}");
}
