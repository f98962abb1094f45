//! docs/threats.md, "Faults and load", the rows the HTTP side can show through the real binary:
//! F6 (the audit disk fills up), F8 (SIGHUP with a valid and an invalid policy), F9
//! (SIGTERM) and F10 (a burst of password logins). F6 is also covered without a socket by
//! `src/api/tests.rs` (`issuance_fails_closed_when_the_audit_log_fails_and_recovers`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::drawbridge::{self, Drawbridge, PW, Resp, basic, user_key};
use crate::support::process::{COMMAND_TIMEOUT, run_with_timeout, wait_until};

fn post_key(d: &Drawbridge, auth: &[&str], key: &Path) -> Resp {
    drawbridge::post_key(d, auth, key, "")
}

/// A small tmpfs, unmounted on drop. `None` when this process may not mount (not root,
/// or no CAP_SYS_ADMIN in a container).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = run_with_timeout(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir.path()),
            COMMAND_TIMEOUT,
        )
        .success();
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system; returns the filler's path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![b'x'; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        run_with_timeout(
            Command::new("umount").arg("-l").arg(self.dir.path()),
            COMMAND_TIMEOUT,
        );
    }
}

#[test]
fn f06_audit_disk_full_fails_closed_and_recovers() {
    let Some(fs) = Tmpfs::mount("256k") else {
        assert!(
            std::env::var_os("DRAWBRIDGE_ALLOW_SKIP").is_some(),
            "f06 needs root to mount a tmpfs; set DRAWBRIDGE_ALLOW_SKIP=1 to skip it knowingly"
        );
        eprintln!(
            "f06: skipped, cannot mount a tmpfs here (needs root); the in-process test \
             api::tests::issuance_fails_closed_when_the_audit_log_fails_and_recovers covers it"
        );
        return;
    };
    let audit = fs.path().join("audit.log");
    let mut d = Drawbridge::start(&format!(
        "[paths]\naudit = \"{}\"\n[login]\nmax_failures = 1000\n",
        audit.display()
    ));
    // The harness reads var/audit.log.
    std::os::unix::fs::symlink(fs.path(), d.path().join("var")).unwrap();
    d.add_user("alice", PW);
    let key = user_key(&d, "k");
    let r = post_key(&d, &["-u", &basic("alice")], &key);
    assert_eq!(r.status, 200, "{}", r.text());
    // A token for later: it needs no password hashing, but issuance still needs the log.
    let login = d.curl("/v1/login", &["-u", &basic("alice"), "-X", "POST"]);
    let token = login.json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Authorization: Bearer {token}");

    let filler = fs.fill();
    // The log's last page may still have room for a few records: those are really on
    // disk, and each 200 must have its record. Then the disk is full.
    let mut issued = 1;
    let first_refusal = loop {
        let started = Instant::now();
        let r = post_key(&d, &["-H", &bearer], &key);
        let took = started.elapsed();
        if r.status == 200 {
            issued += 1;
            assert_eq!(d.events("cert.issued").len(), issued);
            assert!(issued < 60, "the audit log never filled up");
            continue;
        }
        break (r, took);
    };
    let password = post_key(&d, &["-u", &basic("alice")], &key);
    for (r, took) in [first_refusal, (password, Duration::ZERO)] {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "audit_unavailable");
        assert!(r.header("retry-after").is_some());
        assert!(!r.text().contains("-cert-v01@openssh.com"), "{}", r.text());
        assert!(took < Duration::from_secs(2), "fail closed took {took:?}");
    }
    // Smaller records may still fit in the log's last page: use up that room with failed
    // logins (each writes `login.failed`), largest first, until even they are refused.
    for len in [1000, 400, 150, 50, 1] {
        let user = "u".repeat(len);
        for _ in 0..40 {
            let r = d.curl("/v1/login", &["-u", &format!("{user}:x"), "-X", "POST"]);
            if r.status == 503 {
                break;
            }
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
    // /healthz reports it. Its probe writes a short `audit.resumed` record while the log
    // is unhealthy, which may still fit in the last page (health is whether writes
    // succeed): alternate the smallest failed login and the probe until neither fits.
    let mut h = d.curl("/healthz", &[]);
    for _ in 0..100 {
        if h.status == 503 {
            break;
        }
        let r = d.curl("/v1/login", &["-u", "u:x", "-X", "POST"]);
        assert!([401, 429, 503].contains(&r.status), "{}", r.text());
        std::thread::sleep(Duration::from_millis(1100));
        h = d.curl("/healthz", &[]);
    }
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["error"], "audit_unavailable");
    assert_eq!(post_key(&d, &["-H", &bearer], &key).status, 503);

    // The disk comes back: /healthz notices by itself (no certificate request needed, so
    // a load balancer that stopped sending traffic brings the replica back), then
    // issuance works again.
    std::fs::remove_file(filler).unwrap();
    wait_until(
        Duration::from_secs(5),
        || d.curl("/healthz", &[]).status == 200,
        || format!("/healthz did not recover; log: {}", d.server_log()),
    );
    let r = post_key(&d, &["-H", &bearer], &key);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.stop(), 0);
    let (code, out) = d.verify_audit();
    assert_eq!(code, 0, "the chain survives a full disk: {out}");
    // No record claims a certificate that was not handed out.
    assert_eq!(d.events("cert.issued").len(), issued + 1);
}

#[test]
fn f08_sighup_applies_a_valid_policy_and_keeps_the_last_good_on_an_invalid_one() {
    let d = Drawbridge::start("");
    d.add_user("alice", PW);
    d.add_user("bob", PW);
    let key = user_key(&d, "k");
    let people_path = d.path().join("policies/people.toml");
    let people = std::fs::read_to_string(&people_path).unwrap();
    let r = post_key(&d, &["-u", &basic("alice")], &key);
    assert_eq!(r.status, 200, "{}", r.text());

    // Invalid: rejected, alice keeps web-deploy.
    std::fs::write(
        &people_path,
        people.replace("principals = [\"dba\"]", "principals = [\"nope\"]"),
    )
    .unwrap();
    d.signal("HUP");
    wait_until(
        Duration::from_secs(5),
        || !d.events("policy.rejected").is_empty(),
        || format!("no policy.rejected record: {}", d.server_log()),
    );
    assert_eq!(post_key(&d, &["-u", &basic("alice")], &key).status, 200);
    assert_eq!(post_key(&d, &["-u", &basic("bob")], &key).status, 200);

    // Valid: alice leaves ops; applied, she is refused at once; bob is unaffected.
    std::fs::write(
        &people_path,
        people.replace("[\"alice\", \"carol\"]", "[\"carol\"]"),
    )
    .unwrap();
    d.signal("HUP");
    wait_until(
        Duration::from_secs(5),
        || !d.events("policy.reloaded").is_empty(),
        || format!("no policy.reloaded record: {}", d.server_log()),
    );
    let r = post_key(&d, &["-u", &basic("alice")], &key);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "no_principals");
    assert_eq!(post_key(&d, &["-u", &basic("bob")], &key).status, 200);
    let reloaded = d.events("policy.reloaded").pop().unwrap();
    let refused = d.events("cert.refused").pop().unwrap();
    assert_eq!(refused["policy_version"], reloaded["policy_version"]);
    assert!(!d.server_log().contains("panicked"));
}

#[test]
fn f09_sigterm_exits_0_and_the_chain_verifies() {
    let mut d = Drawbridge::start("");
    d.add_user("alice", PW);
    let key = user_key(&d, "k");
    assert_eq!(post_key(&d, &["-u", &basic("alice")], &key).status, 200);
    let started = Instant::now();
    assert_eq!(d.stop(), 0, "{}", d.server_log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an idle server stops at once"
    );
    let (code, out) = d.verify_audit();
    assert_eq!(code, 0, "{out}");
    let records = d.audit();
    assert_eq!(records.first().unwrap()["event"], "service.started");
    // The stop's signed checkpoint comes last, right after service.stopped.
    assert_eq!(records[records.len() - 2]["event"], "service.stopped");
    assert_eq!(records.last().unwrap()["event"], "audit.checkpoint");
    // A restart continues the same chain.
    d.restart();
    assert_eq!(d.curl("/healthz", &[]).status, 200);
    assert_eq!(d.stop(), 0);
    let (code, out) = d.verify_audit();
    assert_eq!(code, 0, "{out}");
    assert_eq!(d.events("service.started").len(), 2);
    let records = d.audit();
    assert_eq!(records[records.len() - 2]["event"], "service.stopped");
    assert_eq!(records.last().unwrap()["event"], "audit.checkpoint");
}

#[test]
fn f10_password_burst_gets_429_while_bearer_issuance_stays_fast() {
    let d = std::sync::Arc::new(Drawbridge::start(
        "[login]\nhash_workers = 1\nhash_queue = 2\nmax_failures = 1000\n",
    ));
    d.add_user("alice", PW);
    let key = user_key(&d, "k");
    let login = d.curl("/v1/login", &["-u", &basic("alice"), "-X", "POST"]);
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Authorization: Bearer {token}");

    // 24 password logins at once (wrong passwords: each one is hashed).
    let started = Instant::now();
    let burst: Vec<_> = (0..24)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                d.curl(
                    "/v1/login",
                    &["-u", &format!("user{i}:wrong"), "-X", "POST"],
                )
            })
        })
        .collect();
    // Meanwhile, bearer-token issuance.
    std::thread::sleep(Duration::from_millis(100));
    let mut bearer_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let r = post_key(&d, &["-H", &bearer], &key);
        assert_eq!(r.status, 200, "{}", r.text());
        bearer_times.push(started.elapsed());
    }
    let answers: Vec<Resp> = burst.into_iter().map(|h| h.join().unwrap()).collect();
    let took = started.elapsed();
    let busy: Vec<&Resp> = answers.iter().filter(|r| r.status == 429).collect();
    let refused = answers.iter().filter(|r| r.status == 401).count();
    assert_eq!(busy.len() + refused, answers.len(), "only 401 and 429");
    assert!(
        !busy.is_empty(),
        "no 429 in a burst of 24 with a queue of 2"
    );
    for r in &busy {
        assert_eq!(r.json()["error"], "busy");
        assert!(r.header("retry-after").is_some());
    }
    let worst = bearer_times.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(1),
        "bearer issuance took {worst:?} during the burst: {bearer_times:?}"
    );
    // `busy` refusals are coalesced per source (all of these come from 127.0.0.1, under 24
    // names): the first of each second on record one by one, the rest as the `repeats` of
    // `login.failed.repeated`; together exactly the busy answers, within about two
    // seconds of the last.
    let n = busy.len();
    wait_until(
        Duration::from_secs(5),
        || {
            let (one, counted) = refusals_on_record(&d, "127.0.0.1", "busy");
            one + counted as usize == n
        },
        || {
            let (one, counted) = refusals_on_record(&d, "127.0.0.1", "busy");
            format!("{one} recorded + {counted} counted != {n} busy answers")
        },
    );
    let (one_by_one, _) = refusals_on_record(&d, "127.0.0.1", "busy");
    let windows = took.as_secs() as usize + 2;
    assert!(
        one_by_one <= windows,
        "{one_by_one} busy records for {n} busy answers in {took:?}: not coalesced per source"
    );
    let all_busy = d
        .events("login.failed")
        .into_iter()
        .filter(|r| r["reason"] == "busy")
        .count();
    assert_eq!(all_busy, one_by_one, "busy refusals from another source");
}

/// `n` password logins as `user_pw` from `source` in one curl process (keep-alive, one
/// after the other); returns the status of each.
fn login_flood(d: &Drawbridge, source: &str, user_pw: &str, n: usize) -> Vec<u16> {
    logins(d, source, &vec![user_pw; n])
}

/// A password login as each of `users_pw` (`user:password`), in order, from `source`, in
/// one curl process (its connection kept alive); returns the status of each.
fn logins(d: &Drawbridge, source: &str, users_pw: &[&str]) -> Vec<u16> {
    let url = d.url("/v1/login");
    let mut cmd = Command::new("curl");
    for (i, user_pw) in users_pw.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["--silent", "--max-time", "60", "--cacert"])
            .arg(d.cacert())
            .args(["--interface", source, "-u", user_pw, "-X", "POST"])
            .args(["-o", "/dev/null", "-w", "%{http_code}\\n", &url]);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    assert!(!out.timed_out, "curl did not finish within 90 s");
    out.stdout
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// Refusals counted for `client` and `reason`: the records written one by one plus the
/// repeats written as counts.
fn refusals_on_record(d: &Drawbridge, client: &str, reason: &str) -> (usize, u64) {
    let one_by_one = d
        .events("login.failed")
        .into_iter()
        .filter(|r| r["client"] == client && r["reason"] == reason)
        .count();
    let counted: u64 = d
        .events("login.failed.repeated")
        .into_iter()
        .filter(|r| r["client"] == client && r["reason"] == reason)
        .map(|r| r["repeats"].as_u64().unwrap())
        .sum();
    (one_by_one, counted)
}

/// F10 / row 29: a client that keeps knocking after it is rate limited gets its 429 every
/// time, but the audit log gets one record per second and a count of the rest (the disk
/// and the CPU are not its to take), nothing lost, also across a shutdown; and the repeats
/// are answered 250 ms late, so it cannot knock thousands of times a second.
#[test]
fn f10_a_flood_of_429s_is_recorded_once_a_second_with_a_count() {
    let mut d = Drawbridge::start("[login]\nmax_failures = 2\nwindow = \"1m\"\n");
    d.add_user("alice", PW);
    let src = "127.0.0.9";
    let first = login_flood(&d, src, "alice:wrong", 2);
    assert_eq!(first, vec![401, 401]);

    let n = 16;
    let started = Instant::now();
    let flood = login_flood(&d, src, "alice:wrong", n);
    let took = started.elapsed();
    assert_eq!(flood.len(), n);
    assert!(flood.iter().all(|&s| s == 429), "{flood:?}");
    // Within about two seconds of the last refusal, every one is on record.
    wait_until(
        Duration::from_secs(5),
        || {
            let (one, counted) = refusals_on_record(&d, src, "rate_limited");
            one + counted as usize == n
        },
        || {
            let (one, counted) = refusals_on_record(&d, src, "rate_limited");
            format!("{one} recorded + {counted} counted != {n} refusals")
        },
    );
    let (one_by_one, counted) = refusals_on_record(&d, src, "rate_limited");
    let windows = took.as_secs() as usize + 2;
    assert!(
        one_by_one <= windows && counted > 0,
        "{one_by_one} records for {n} refusals in {took:?}: not coalesced"
    );
    // Each counted one was answered 250 ms late.
    assert!(
        took >= Duration::from_millis(240) * counted as u32,
        "{counted} repeats answered in {took:?}"
    );
    let rep = d.events("login.failed.repeated").pop().unwrap();
    assert_eq!(rep["user"], "alice", "{rep}");
    assert_eq!(rep["method"], "password", "{rep}");
    assert_eq!(rep["window_secs"], 1, "{rep}");
    assert!(rep["since"].as_str().unwrap().ends_with('Z'), "{rep}");
    // Names do not split a window: once alice's windows have ended, three refusals under
    // three names within a second are one record (the first name) and a count of 2.
    std::thread::sleep(Duration::from_millis(1100));
    let before = refusals_on_record(&d, src, "rate_limited");
    let (records, repeated) = (
        d.events("login.failed").len(),
        d.events("login.failed.repeated").len(),
    );
    let three = logins(&d, src, &["carol:x", "mallory:x", "trent:x"]);
    assert_eq!(three, vec![429, 429, 429]);
    wait_until(
        Duration::from_secs(5),
        || {
            let now = refusals_on_record(&d, src, "rate_limited");
            now.0 as u64 + now.1 == before.0 as u64 + before.1 + 3
        },
        || {
            let now = refusals_on_record(&d, src, "rate_limited");
            format!("3 refusals under 3 names; on record before {before:?}, now {now:?}")
        },
    );
    let new_records = &d.events("login.failed")[records..];
    assert_eq!(
        new_records.len(),
        1,
        "one record per window: {new_records:?}"
    );
    assert_eq!(new_records[0]["user"], "carol", "{}", new_records[0]);
    assert_eq!(new_records[0]["reason"], "rate_limited");
    let new_repeated = &d.events("login.failed.repeated")[repeated..];
    assert_eq!(new_repeated.len(), 1, "{new_repeated:?}");
    let rep = &new_repeated[0];
    assert_eq!(rep["repeats"], 2, "{rep}");
    assert_eq!(
        rep["user"], "carol",
        "the repeated record names the window's first name: {rep}"
    );
    assert_eq!(rep["client"], src, "{rep}");

    // Refusals still counted when the service stops are written before it exits.
    let before = refusals_on_record(&d, src, "rate_limited");
    let more = login_flood(&d, src, "alice:wrong", 6);
    assert!(more.iter().all(|&s| s == 429));
    assert_eq!(d.stop(), 0);
    let after = refusals_on_record(&d, src, "rate_limited");
    assert_eq!(
        (after.0 as u64 + after.1) - (before.0 as u64 + before.1),
        6,
        "before {before:?}, after {after:?}"
    );
    let (code, out) = d.verify_audit();
    assert_eq!(code, 0, "{out}");
}
