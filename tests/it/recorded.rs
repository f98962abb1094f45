//! Recorded sessions (issue 18): the bastion's SSH server inside the channel, its own
//! connection to the target with a per-session certificate, the relay and the recording,
//! driven with the real OpenSSH client (`ssh -J`, a stock known_hosts holding only the
//! `@cert-authority` line, `StrictHostKeyChecking yes`) and a real sshd as the target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::dmz::{Bastion, start_with};
use crate::support::process::wait_until;

/// Adds `record = true` to web-1 in the policy folder `dir`.
fn record_web1(dir: &Path) {
    let p = dir.join("hosts.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains("[hosts.web-1]\n"), "{s}");
    std::fs::write(
        &p,
        s.replace("[hosts.web-1]\n", "[hosts.web-1]\nrecord = true\n"),
    )
    .unwrap();
}

/// A bastion in front of web-1 (the test sshd) with web-1 recorded.
fn recorded_bastion() -> Option<Bastion> {
    let b = start_with("", &[])?;
    b.reload_policy(record_web1);
    Some(b)
}

fn sessions_dir(b: &Bastion) -> PathBuf {
    b.d.path().join("var/sessions")
}

/// The one recording of the session `id`, as its lines of JSON.
fn cast(b: &Bastion, id: &str) -> Vec<Value> {
    let p = sessions_dir(b).join(format!("{id}.cast"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Output events (`"o"`) joined.
fn output_of(events: &[Value]) -> String {
    events
        .iter()
        .skip(1)
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap_or_default().to_string())
        .collect()
}

fn markers_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .skip(1)
        .filter(|e| e[1] == "m")
        .map(|e| e[2].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The session id of the one `session.ended` record (waiting for it).
fn ended(b: &Bastion) -> Value {
    let mut found = None;
    wait_until(
        Duration::from_secs(10),
        || {
            found = b.find("session.ended", &[]).pop();
            found.is_some()
        },
        || format!("a session.ended record; log: {:#?}", b.records()),
    );
    found.unwrap()
}

#[test]
fn exec_through_a_recorded_host_records_command_output_and_exit_status() {
    let Some(b) = recorded_bastion() else { return };
    let key = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 11, &[]);
    let out = b
        .client("alice", &key)
        .run(&["web-1", "echo hello-recorded; exit 3"]);
    assert_eq!(out.code(), 3, "{out:?}");
    assert_eq!(out.stdout.trim(), "hello-recorded", "{out:?}");
    assert!(
        out.stderr.contains("this session is recorded, session"),
        "the banner: {out:?}"
    );
    let e = ended(&b);
    let id = e["session"].as_str().unwrap();
    assert_eq!(e["exit_status"], 3, "{e}");
    assert_eq!(e["target"], "web-1", "{e}");
    assert_eq!(e["login"], "root", "{e}");
    let started = b.expect_record("session.started", &[("session", id)]);
    assert_eq!(
        started["principals"],
        serde_json::json!(["web-admin"]),
        "{started}"
    );
    let events = cast(&b, id);
    assert_eq!(events[0]["version"], 2, "{:?}", events[0]);
    assert!(output_of(&events).contains("hello-recorded"), "{events:?}");
    let marks = markers_of(&events);
    assert!(
        marks
            .iter()
            .any(|m| m == "exec echo hello-recorded; exit 3"),
        "{marks:?}"
    );
    assert!(marks.iter().any(|m| m == "exit 3"), "{marks:?}");
    // The recording's size and hash are in session.ended.
    let bytes = std::fs::read(sessions_dir(&b).join(format!("{id}.cast"))).unwrap();
    assert_eq!(e["recording_size"], bytes.len() as u64, "{e}");
}
