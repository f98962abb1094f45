//! Recorded sessions from the command line: recordings written through the library
//! (`drawbridge::recording::Recorder`) and their `session.*` records through the real
//! audit log, then read by the real binary (`session list|play|watch`, `audit verify`)
//! and by the real `asciinema` (`asciinema cat`, which needs a terminal: run under
//! `script`).
//!
//! Fails when `asciinema` is missing (`scripts/test` installs the Debian package
//! `asciinema`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drawbridge::audit::{
    Audit, AuditEvent, Conn, Grant, PeerText, SessionBase, SessionEnded, SessionStarted,
};
use drawbridge::policy::Via;
use drawbridge::recording::{CastMeta, Recorder, RecordingSummary, SessionId};

use crate::support::drawbridge::run;
use crate::support::process::{run_with_timeout, wait_with_timeout};

fn conn(user: &str) -> Conn {
    Conn {
        conn: 1,
        peer: "127.0.0.1:40000".into(),
        ssh_user: PeerText::cut(user),
        key_id: Some(PeerText::cut(user)),
        serial: Some(7),
        key_fingerprint: Some("SHA256:k".into()),
        ca_fingerprint: Some("SHA256:ca".into()),
    }
}

fn base(id: &SessionId, user: &str, host: &str) -> SessionBase {
    SessionBase {
        conn: conn(user),
        session: id.to_string(),
        target: host.into(),
        address: "10.0.0.1:22".into(),
        login: PeerText::cut("root"),
        policy_version: "sha256:test".into(),
    }
}

async fn started(audit: &Audit, dir: &Path, id: &SessionId, user: &str, host: &str) {
    audit
        .record(AuditEvent::SessionStarted(SessionStarted {
            base: base(id, user, host),
            principals: vec!["dba".into()],
            grants: vec![Grant::new("dba", &Via::User)],
            rule: format!("hosts.{host}.record"),
            reason: None,
            recording: dir.join(format!("{id}.cast")).display().to_string(),
            input: false,
        }))
        .await
        .unwrap();
}

async fn ended(audit: &Audit, id: &SessionId, user: &str, host: &str, s: &RecordingSummary) {
    audit
        .record(AuditEvent::SessionEnded(SessionEnded {
            exit_status: Some(0),
            duration_ms: 1500,
            recording_size: Some(s.size),
            recording_sha256: Some(s.sha256.clone()),
            ..SessionEnded::new(
                base(id, user, host),
                &s.path.display().to_string(),
                "closed",
            )
        }))
        .await
        .unwrap();
}

fn meta() -> CastMeta {
    CastMeta {
        width: 80,
        height: 24,
        title: "alice@db-1 as root".into(),
        ..CastMeta::default()
    }
}

/// A whole recorded session: started, `chunks` written `gap` apart, ended.
async fn session(
    audit: &Audit,
    dir: &Path,
    user: &str,
    host: &str,
    chunks: &[&[u8]],
    gap: Duration,
) -> (SessionId, RecordingSummary) {
    let id = SessionId::random().unwrap();
    started(audit, dir, &id, user, host).await;
    let mut r = Recorder::create(dir, &id, meta()).unwrap();
    for c in chunks {
        r.output(c).unwrap();
        std::thread::sleep(gap);
    }
    let s = r.finish(Some(0)).unwrap();
    ended(audit, &id, user, host, &s).await;
    (id, s)
}

struct World {
    tmp: tempfile::TempDir,
    log: PathBuf,
    rec: PathBuf,
    audit: Audit,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("var/audit.log");
    let rec = tmp.path().join("var/sessions");
    let audit = Audit::open(&log, "test-1").unwrap();
    World {
        tmp,
        log,
        rec,
        audit,
    }
}

impl World {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        let (log, rec) = (self.log.to_str().unwrap(), self.rec.to_str().unwrap());
        if args[0] == "session" {
            all.extend(["--log", log, "--recordings", rec]);
        } else {
            all.extend(["--recordings", rec]);
        }
        run(&all, self.tmp.path(), None)
    }
}

/// Text split so that multi-byte characters straddle writes.
const TEXT: &str = "hello from db-1\r\ngrüße € 🦀\r\n\x1b[1mbold\x1b[0m done\r\n";

fn chunks_of(text: &str, n: usize) -> Vec<&[u8]> {
    text.as_bytes().chunks(n).collect()
}

#[tokio::test]
async fn asciinema_cat_prints_the_output_of_a_recording() {
    let asciinema = Command::new("asciinema").arg("--version").output();
    assert!(
        asciinema.as_ref().is_ok_and(|o| o.status.success()),
        "asciinema is missing: install the Debian package `asciinema` (scripts/test does)"
    );
    let w = world();
    let (_, s) = session(
        &w.audit,
        &w.rec,
        "alice",
        "db-1",
        &chunks_of(TEXT, 5),
        Duration::ZERO,
    )
    .await;
    // `asciinema cat` reads the file with its own parser and insists on a terminal.
    let out = run_with_timeout(
        Command::new("script").args([
            "-qec",
            &format!("asciinema cat {}", s.path.display()),
            "/dev/null",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.code(),
        0,
        "asciinema cat failed: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(TEXT),
        "asciinema cat printed {:?}",
        out.stdout
    );
    // Its player too (the file ends with an "m" event, the exit status).
    let out = run_with_timeout(
        Command::new("script").args([
            "-qec",
            &format!("asciinema play -s 100 {}", s.path.display()),
            "/dev/null",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.code(),
        0,
        "asciinema play failed: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(TEXT),
        "asciinema play printed {:?}",
        out.stdout
    );
}

#[tokio::test]
async fn session_play_reproduces_the_output_with_its_timing() {
    let w = world();
    let (id, _) = session(
        &w.audit,
        &w.rec,
        "alice",
        "db-1",
        &chunks_of(TEXT, 7),
        Duration::from_millis(100),
    )
    .await;
    let t0 = Instant::now();
    let (code, out, err) = w.run(&["session", "play", id.as_str(), "--speed", "100"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, TEXT);
    assert!(t0.elapsed() < Duration::from_secs(10));
    // At the original speed the ~0.9 s of pauses are kept.
    let t0 = Instant::now();
    let (code, out, _) = w.run(&["session", "play", id.as_str()]);
    assert_eq!((code, out.as_str()), (0, TEXT));
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    // Bad usage exits 2.
    for bad in [
        vec!["session", "play", id.as_str(), "--speed", "0"],
        vec!["session", "play", id.as_str(), "--speed", "-1"],
        vec!["session", "play", "../../etc/passwd"],
    ] {
        let (code, _, err) = w.run(&bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let (code, _, err) = w.run(&["session", "play", "nosuchsession"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nosuchsession"), "{err}");
}

/// T49: a recording edited, cut or removed after its session is named by `audit verify`.
#[tokio::test]
async fn t49_audit_verify_names_an_edited_cut_or_removed_recording() {
    let w = world();
    let (a, _) = session(
        &w.audit,
        &w.rec,
        "alice",
        "db-1",
        &[b"id -u\r\n0\r\n"],
        Duration::ZERO,
    )
    .await;
    let (b, _) = session(
        &w.audit,
        &w.rec,
        "bob",
        "db-1",
        &[b"ls\r\nsecrets\r\n"],
        Duration::ZERO,
    )
    .await;
    let log = w.log.to_str().unwrap();
    let (code, intact, err) = w.run(&["audit", "verify", log]);
    assert_eq!(code, 0, "{intact}{err}");

    // Edited in place, same length: "0" becomes "1" (root hidden).
    let pa = w.rec.join(format!("{a}.cast"));
    let text = std::fs::read_to_string(&pa)
        .unwrap()
        .replace("\\r\\n0\\r\\n", "\\r\\n1\\r\\n");
    std::fs::write(&pa, text).unwrap();
    let (code, out, err) = w.run(&["audit", "verify", log]);
    assert_eq!(
        code, 1,
        "an edited recording passed audit verify: {out}{err}"
    );
    assert!(
        err.contains(&format!("{}: recording edited", pa.display())),
        "{err}"
    );
    assert!(
        intact.contains("2 re-hashed and intact, 0 edited, cut or removed"),
        "{intact}"
    );

    // Removed.
    let pb = w.rec.join(format!("{b}.cast"));
    std::fs::remove_file(&pb).unwrap();
    let (code, _, err) = w.run(&["audit", "verify", log]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}: recording removed", pb.display())),
        "{err}"
    );

    // From the config's recording.dir when --recordings is not given.
    std::fs::write(
        w.tmp.path().join("drawbridge.toml"),
        "[recording]\ndir = \"var/sessions\"\n",
    )
    .unwrap();
    let (code, _, err) = run(
        &[
            "--config",
            "drawbridge.toml",
            "audit",
            "verify",
            "var/audit.log",
        ],
        w.tmp.path(),
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("recording edited") && err.contains("recording removed"),
        "{err}"
    );
}

#[tokio::test]
async fn session_list_filters_by_user_host_time_and_live() {
    let w = world();
    let (a, _) = session(&w.audit, &w.rec, "alice", "db-1", &[b"a"], Duration::ZERO).await;
    let (b, _) = session(&w.audit, &w.rec, "bob", "db-1", &[b"b"], Duration::ZERO).await;
    let (c, _) = session(&w.audit, &w.rec, "alice", "web-1", &[b"c"], Duration::ZERO).await;
    // A live one: started, recording open.
    let live = SessionId::random().unwrap();
    started(&w.audit, &w.rec, &live, "carol", "db-1").await;
    let mut r = Recorder::create(&w.rec, &live, meta()).unwrap();
    r.output(b"still here").unwrap();
    r.flush().unwrap();

    let ids = |args: &[&str]| {
        let mut all = vec!["session", "list"];
        all.extend_from_slice(args);
        let (code, out, err) = w.run(&all);
        assert_eq!(code, 0, "{err}");
        let mut v: Vec<String> = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<&SessionId>| {
        v.sort();
        v.into_iter().map(|i| i.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&[]), sorted(vec![&a, &b, &c, &live]));
    assert_eq!(ids(&["--user", "alice"]), sorted(vec![&a, &c]));
    assert_eq!(ids(&["--host", "db-1"]), sorted(vec![&a, &b, &live]));
    assert_eq!(ids(&["--live"]), sorted(vec![&live]));
    assert_eq!(
        ids(&["--user", "alice", "--host", "web-1"]),
        sorted(vec![&c])
    );
    assert_eq!(ids(&["--since", "1h"]).len(), 4);
    assert!(ids(&["--since", "2100-01-01"]).is_empty());
    let (_, out, _) = w.run(&["session", "list", "--live"]);
    assert!(out.contains("carol") && out.contains("live"), "{out}");
    r.finish(None).unwrap();
}

#[tokio::test]
async fn session_watch_follows_a_live_recording_until_it_ends() {
    let w = world();
    let id = SessionId::random().unwrap();
    started(&w.audit, &w.rec, &id, "alice", "db-1").await;
    let mut r = Recorder::create(&w.rec, &id, meta()).unwrap();
    r.output(b"before\r\n").unwrap();
    r.flush().unwrap();
    let child = Command::new(crate::support::drawbridge::BIN)
        .args([
            "session",
            "watch",
            id.as_str(),
            "--log",
            w.log.to_str().unwrap(),
            "--recordings",
            w.rec.to_str().unwrap(),
        ])
        .current_dir(w.tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    r.output(b"during\r\n").unwrap();
    r.flush().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    r.output(b"after\r\n").unwrap();
    let s = r.finish(Some(0)).unwrap();
    let t_end = Instant::now();
    ended(&w.audit, &id, "alice", "db-1", &s).await;
    let out = wait_with_timeout(child, Duration::from_secs(15));
    assert!(
        !out.timed_out,
        "session watch did not end with the session: {}",
        out.stdout
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "before\r\nduring\r\nafter\r\n");
    assert!(
        t_end.elapsed() < Duration::from_secs(5),
        "{:?}",
        t_end.elapsed()
    );
}

#[test]
fn policy_explain_and_check_say_which_sessions_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        r#"
[hosts.db-1]
address = "10.0.0.3"
record = true
[hosts.web-1]
address = "10.0.0.1"
[principals.dba]
hosts = ["db-1"]
logins = ["root"]
[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]
[users.alice]
principals = ["dba", "web-deploy"]
"#,
    )
    .unwrap();
    let (code, out, err) = run(
        &[
            "policy", "explain", "alice", "db-1", "root", "--dir", "policies",
        ],
        tmp.path(),
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  recorded: hosts.db-1.record (policies/p.toml:2:"),
        "{out}"
    );
    let (_, out, _) = run(
        &[
            "policy", "explain", "alice", "web-1", "deploy", "--dir", "policies",
        ],
        tmp.path(),
        None,
    );
    assert!(out.contains("  not recorded\n"), "{out}");
    let (code, out, err) = run(&["policy", "check", "policies"], tmp.path(), None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sessions recorded (by the host or a principal that grants it): db-1\n"),
        "{out}"
    );
    // A typo in the value fails loudly.
    std::fs::write(
        dir.join("q.toml"),
        "[hosts.x-1]\naddress = \"10.0.0.9\"\nrecord = \"yes\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["policy", "check", "policies"], tmp.path(), None);
    assert_eq!(code, 1);
    assert!(
        err.contains("q.toml:3:10: record must be true or false"),
        "{err}"
    );
}

/// `ssh bastion hosts` and `whoami` on the real bastion say which hosts record, from the
/// policy in force (db-1 records after a reload; web-1 never does).
#[test]
fn hosts_and_whoami_on_the_bastion_say_which_hosts_record() {
    let Some(b) = crate::support::dmz::start() else {
        return;
    };
    b.reload_policy(|dir| {
        let path = dir.join("hosts.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[hosts.db-1]\n", "[hosts.db-1]\nrecord = true\n");
        std::fs::write(path, text).unwrap();
    });
    let bob = b.user("bob", "bob", &["dba"], "-1m:+5m", 41, &[]);
    let c = b.client("bob", &bob);
    let out = c.run(&["bastion", "hosts"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("db-1\tlogins: postgres\t(via dba)\trecorded\n"),
        "{out:?}"
    );
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.stdout.contains("recorded:    db-1\n"), "{out:?}");
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 42, &[]);
    let c = b.client("alice", &alice);
    let out = c.run(&["bastion", "hosts"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("web-1") && !out.stdout.contains("recorded"),
        "{out:?}"
    );
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success() && !out.stdout.contains("recorded"), "{out:?}");
}
