//! The audit trail as evidence: the policy version names the loaded bytes (a Git-ignored
//! policy file is an error), `policy.reloaded` is on disk before the new policy decides,
//! signed checkpoints anchor the log's end (`audit verify --checkpoints`), and
//! `audit search` answers questions without jq.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drawbridge::audit::record::{canonical, record_hash};
use drawbridge::audit::{Audit, MemorySink};
use drawbridge::policy::watch::{PolicyStore, ReloadOutcome};
use serde_json::Value;

use crate::support::dmz;
use crate::support::drawbridge::{Drawbridge, POLICY_HOSTS, POLICY_PEOPLE, POLICY_PRINCIPALS, run};
use crate::support::git::{git, head, policy_repo};
use crate::support::process::wait_until;
use crate::support::ssh::with_suffix;

/// Grants the user `mallory` the `dba` principal: what an override must never slip in.
const OVERRIDE: &str = r#"
[users.mallory]
principals = ["dba"]
"#;

fn cli(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    run(args, cwd, None)
}

/// T42: a Git-ignored `local-override.toml` granting a new user a principal is a load
/// error (it was once loaded while `policy check` reported the clean commit).
#[test]
fn ignored_toml_in_a_git_policy_folder_fails_policy_check() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let commit = policy_repo(root);
    let (code, out, err) = cli(root, &["policy", "check", "policies"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("(version {commit})")), "{out}");

    std::fs::write(root.join("policies/local-override.toml"), OVERRIDE).unwrap();
    let (code, out, err) = cli(root, &["policy", "check", "policies"]);
    assert_eq!(code, 1, "an ignored policy file must not load: {out}{err}");
    assert!(
        err.contains("policies/local-override.toml: ignored by Git"),
        "{err}"
    );
    std::fs::remove_file(root.join("policies/local-override.toml")).unwrap();

    // Untracked (not ignored) is refused too.
    std::fs::write(root.join("policies/extra.toml"), OVERRIDE).unwrap();
    let (code, _, err) = cli(root, &["policy", "check", "policies"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("policies/extra.toml: not tracked by Git"),
        "{err}"
    );
}

/// An uncommitted edit is named by the commit plus a hash of the loaded files, never a
/// bare `+dirty`: two different uncommitted states have two different versions, and the
/// committed state has the commit alone.
#[test]
fn uncommitted_edits_get_a_content_hash_in_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let commit = policy_repo(root);
    let version = |root: &Path| {
        let (code, out, err) = cli(root, &["policy", "check", "policies"]);
        assert_eq!(code, 0, "{out}{err}");
        let v = out.rsplit("(version ").next().unwrap();
        v.trim().trim_end_matches(')').to_string()
    };
    let people = root.join("policies/people.toml");
    std::fs::write(&people, POLICY_PEOPLE.replace("\"carol\"", "\"dave\"")).unwrap();
    let one = version(root);
    std::fs::write(&people, POLICY_PEOPLE.replace("\"carol\"", "\"erin\"")).unwrap();
    let two = version(root);
    for v in [&one, &two] {
        assert!(v.starts_with(&format!("{commit}+sha256:")), "{v}");
        assert_eq!(v.len(), commit.len() + "+sha256:".len() + 64, "{v}");
    }
    assert_ne!(one, two, "two uncommitted states, one version");
    // Staged but not committed still differs from the commit.
    git(root, &["add", "policies"]);
    assert_eq!(version(root), two);
    // A file only under tests/ or not a policy file does not change the loaded bytes.
    std::fs::write(&people, POLICY_PEOPLE).unwrap();
    git(root, &["add", "policies"]);
    std::fs::write(root.join("policies/README.md"), "notes").unwrap();
    assert_eq!(version(root), commit);
}

/// A reload that meets an ignored policy file is rejected: the last good policy stays
/// (in-process, exact), and the running service audits `policy.rejected` naming the file.
#[test]
fn ignored_toml_is_a_rejected_reload_last_good_kept_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let commit = policy_repo(root);
    let store = PolicyStore::open(&root.join("policies")).unwrap();
    assert_eq!(store.current().version, commit);
    std::fs::write(root.join("policies/local-override.toml"), OVERRIDE).unwrap();
    match store.reload() {
        ReloadOutcome::Rejected {
            kept_version,
            errors,
        } => {
            assert_eq!(kept_version, commit);
            assert!(
                errors
                    .to_string()
                    .contains("local-override.toml: ignored by Git"),
                "{errors}"
            );
        }
        other => panic!("an ignored file must be rejected, got {other:?}"),
    }
    assert_eq!(store.current().version, commit);
    assert!(!store.current().users.contains_key("mallory"));

    // The real service: started on the clean commit, then the file appears.
    let mut d = Drawbridge::prepare(&[], "");
    let commit = policy_repo(d.path());
    d.launch(&[]);
    let started = d.events("service.started");
    assert_eq!(started[0]["policy_version"], commit.as_str());
    std::fs::write(d.path().join("policies/local-override.toml"), OVERRIDE).unwrap();
    d.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        || !d.events("policy.rejected").is_empty(),
        || format!("no policy.rejected: {}", d.server_log()),
    );
    let rec = &d.events("policy.rejected")[0];
    assert_eq!(rec["policy_version"], commit.as_str(), "{rec}");
    assert!(
        rec["errors"][0]
            .as_str()
            .unwrap()
            .contains("local-override.toml: ignored by Git"),
        "{rec}"
    );
    assert!(d.events("policy.reloaded").is_empty());

    // Tracking the file makes it policy (the watcher sees the Git index change): the
    // version is the commit plus the hash of what is loaded; committing it, the commit.
    git(d.path(), &["add", "-f", "policies/local-override.toml"]);
    wait_until(
        Duration::from_secs(10),
        || !d.events("policy.reloaded").is_empty(),
        || format!("git add did not reload: {}", d.server_log()),
    );
    let staged = d.events("policy.reloaded")[0]["policy_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(staged.starts_with(&format!("{commit}+sha256:")), "{staged}");
    git(d.path(), &["commit", "-q", "-m", "override"]);
    let committed = head(d.path());
    wait_until(
        Duration::from_secs(10),
        || d.events("policy.reloaded").len() == 2,
        || format!("git commit did not reload: {}", d.server_log()),
    );
    assert_eq!(
        d.events("policy.reloaded")[1]["policy_version"],
        committed.as_str()
    );
    assert_eq!(d.stop(), 0);
    let stopped = d.events("service.stopped");
    assert_eq!(stopped[0]["policy_version"], committed.as_str());
}

fn temp_policy(dir: &Path, people: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), POLICY_HOSTS).unwrap();
    std::fs::write(dir.join("principals.toml"), POLICY_PRINCIPALS).unwrap();
    std::fs::write(dir.join("people.toml"), people).unwrap();
}

/// `policy.reloaded` is on disk before the new policy decides anything: with the audit
/// failing, a valid change is refused and the old policy stays; once the audit works
/// again the change applies, and the record was written while the old policy was still
/// in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_record_fails_keeps_the_old_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    temp_policy(&dir, POLICY_PEOPLE);
    let store = PolicyStore::open(&dir).unwrap();
    let old = store.current().version.clone();
    let sink = MemorySink::new();
    let audit = Audit::with_sink(Box::new(sink.clone()), "r1")
        .unwrap()
        .with_timeout(Duration::from_millis(500));

    temp_policy(&dir, &format!("{POLICY_PEOPLE}\n{OVERRIDE}"));
    sink.set_failing(true);
    let outcome = drawbridge::serve::reload_recorded(Arc::clone(&store), audit.clone()).await;
    assert!(
        matches!(outcome, ReloadOutcome::Refused { .. }),
        "a reload whose record failed must be refused, got {outcome:?}"
    );
    assert_eq!(store.current().version, old, "the old policy must stay");
    assert!(!store.current().users.contains_key("mallory"));
    assert!(sink.lines().is_empty());

    // The disk comes back: the same change applies (the watcher retries a refused one).
    sink.set_failing(false);
    let outcome = drawbridge::serve::reload_recorded(Arc::clone(&store), audit.clone()).await;
    let ReloadOutcome::Applied { new_version, .. } = outcome else {
        panic!("the reload should apply once the audit works: {outcome:?}");
    };
    assert!(store.current().users.contains_key("mallory"));
    let lines = sink.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let rec: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(rec["event"], "policy.reloaded");
    assert_eq!(rec["policy_version"], new_version.as_str());
    assert_eq!(rec["old_version"], old.as_str());
}

/// The order without timing: the store's `commit` sees the old policy in force.
#[test]
fn reload_commit_runs_before_the_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    temp_policy(&dir, POLICY_PEOPLE);
    let store = PolicyStore::open(&dir).unwrap();
    let old = store.current().version.clone();
    temp_policy(&dir, &format!("{POLICY_PEOPLE}\n{OVERRIDE}"));
    let mut in_force = None;
    let outcome = store.reload_with(|_| {
        in_force = Some(store.current().version.clone());
        Ok(())
    });
    assert!(
        matches!(outcome, ReloadOutcome::Applied { .. }),
        "{outcome:?}"
    );
    assert_eq!(in_force.as_deref(), Some(old.as_str()));
    assert_ne!(store.current().version, old);
}

// ---------------------------------------------------------------------------------------
// Signed checkpoints (T45)

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `lines` with record `edit_seq` changed and every hash from there on recomputed: a
/// consistent re-chaining that plain `audit verify` cannot tell from the original.
fn rechained(lines: &[String], edit_seq: usize) -> Vec<String> {
    let mut prev = String::new();
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let Value::Object(mut rec) = serde_json::from_str(line).unwrap() else {
                panic!("not a record")
            };
            if i + 1 < edit_seq {
                prev = rec["hash"].as_str().unwrap().to_string();
                return line.clone();
            }
            if i + 1 == edit_seq {
                rec.insert("user".into(), Value::from("nobody"));
            }
            rec.insert("prev".into(), Value::from(prev.clone()));
            rec.remove("hash");
            let hash = record_hash(&rec);
            rec.insert("hash".into(), Value::from(hash.clone()));
            prev = hash;
            canonical(&Value::Object(rec))
        })
        .collect()
}

/// `audit verify --checkpoints` on a real run's log: passes on the original; fails on a
/// copy with its last 3 records cut (naming them) and on a consistently re-chained copy,
/// both of which plain `audit verify` passes; fails on a forged checkpoint.
#[test]
fn checkpoints_catch_a_cut_tail_and_a_rechained_log() {
    let mut d = Drawbridge::start("");
    d.add_user("alice", "correct horse battery staple");
    for pw in ["correct horse battery staple", "wrong", "wrong again"] {
        let r = d.curl("/v1/login", &["-u", &format!("alice:{pw}"), "-X", "POST"]);
        assert!(r.status == 200 || r.status == 401, "{}", r.text());
    }
    assert_eq!(d.stop(), 0, "{}", d.server_log());
    let log = d.audit_path();
    let cps = with_suffix(&log, ".checkpoints");
    let key = d.path().join("ca/audit_key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the checkpoint key is private");
    }
    let records = lines_of(&log);
    let n = records.len();
    let checkpoints = lines_of(&cps);
    assert_eq!(checkpoints.len(), 2, "one at start, one at stop");
    let last: Value = serde_json::from_str(&records[n - 1]).unwrap();
    assert_eq!(last["event"], "audit.checkpoint");
    assert_eq!(last["checkpoint"]["seq"], (n - 1) as u64);
    assert_eq!(
        serde_json::from_str::<Value>(&checkpoints[1]).unwrap(),
        last["checkpoint"],
        "the file holds the same signed checkpoint as the log"
    );

    let verify = |file: &Path, extra: &[&str]| {
        let f = file.to_str().unwrap();
        let mut args = vec!["audit", "verify", f];
        args.extend_from_slice(extra);
        d.cli(&args, None)
    };
    let (code, out, err) = verify(&log, &["--checkpoints"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 signed checkpoints"), "{out}");

    // The last 3 records cut.
    let cut = d.path().join("cut.log");
    write_lines(&cut, &records[..n - 3]);
    std::fs::copy(&cps, with_suffix(&cut, ".checkpoints")).unwrap();
    let (code, out, _) = verify(&cut, &[]);
    assert_eq!(code, 0, "the chain alone cannot see a cut tail: {out}");
    let (code, out, err) = verify(&cut, &["--checkpoints"]);
    assert_eq!(code, 1, "a cut tail must fail: {out}{err}");
    let expect = format!(
        "records {}–{} are missing after seq {}, where the log ends",
        n - 2,
        n,
        n - 3
    );
    assert!(err.contains(&expect), "{err}");

    // Re-chained after an edit of record 3.
    let re = d.path().join("rechained.log");
    write_lines(&re, &rechained(&records, 3));
    std::fs::copy(&cps, with_suffix(&re, ".checkpoints")).unwrap();
    let (code, out, _) = verify(&re, &[]);
    assert_eq!(code, 0, "the chain alone cannot see a re-chaining: {out}");
    let (code, out, err) = verify(&re, &["--checkpoints"]);
    assert_eq!(code, 1, "a re-chained log must fail: {out}{err}");
    assert!(err.contains("the log was rewritten"), "{err}");

    // The checkpoints kept elsewhere: --checkpoints-file and --key.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("cps");
    let pubkey = elsewhere.path().join("audit_key.pub");
    std::fs::copy(&cps, &copy).unwrap();
    std::fs::copy(d.path().join("ca/audit_key.pub"), &pubkey).unwrap();
    let (code, out, err) = verify(
        &log,
        &[
            "--checkpoints-file",
            copy.to_str().unwrap(),
            "--key",
            pubkey.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    // A checkpoint edited to match a cut log does not verify.
    let mut forged: Value = serde_json::from_str(&checkpoints[1]).unwrap();
    forged["seq"] = Value::from((n - 4) as u64);
    let text = format!("{}\n{}\n", checkpoints[0], canonical(&forged));
    std::fs::write(&copy, text).unwrap();
    let (code, _, err) = verify(&cut, &["--checkpoints-file", copy.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(":2: the signature does not verify"), "{err}");
}

/// A checkpoint key that group or others may read is refused at start, like every other
/// private key file.
#[test]
fn a_loose_checkpoint_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Drawbridge::start("");
    assert_eq!(d.stop(), 0);
    let key = d.path().join("ca/audit_key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = d.cli(&["serve"], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("audit_key is readable by group or others (mode 0644)"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// audit search

/// "Who reached web-1?" on the log of a real run: the binary as bastion, a real sshd as
/// web-1, the OpenSSH client.
#[test]
fn audit_search_answers_who_reached_web_1() {
    let Some(mut b) = dmz::start() else { return };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let out = b.client("alice", &alice).run(&["web-1", "true"]);
    assert!(out.success(), "{out:?}");
    // bob holds no principal for web-1: refused, and not someone who reached it.
    let bob = b.user("bob", "bob", &["dba"], "-1m:+5m", 2, &[]);
    let out = b.client("bob", &bob).run(&["web-1", "true"]);
    assert!(!out.success(), "{out:?}");
    assert_eq!(b.d.stop(), 0);
    let log = b.audit_path();
    let log = log.to_str().unwrap();

    let (code, out, err) = run(
        &[
            "audit",
            "search",
            log,
            "--host",
            "web-1",
            "--event",
            "forward.opened",
        ],
        b.d.path(),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("TIME"), "{out}");
    assert_eq!(rows.len(), 2, "one forward to web-1: {out}");
    assert!(
        rows[1].contains("forward.opened") && rows[1].contains("alice"),
        "{out}"
    );
    assert!(
        rows[1].contains("web-admin"),
        "the deciding principal: {out}"
    );
    assert!(err.contains("1 of "), "{err}");

    let (code, out, err) = run(
        &[
            "audit", "search", log, "--host", "web-1", "--event", "forward", "--json",
        ],
        b.d.path(),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let recs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let who: std::collections::BTreeSet<(&str, &str)> = recs
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["key_id"].as_str().unwrap()))
        .collect();
    assert!(who.contains(&("forward.opened", "alice")), "{out}");
    assert!(who.contains(&("forward.closed", "alice")), "{out}");
    assert!(
        !who.iter()
            .any(|(e, u)| *u == "bob" && *e == "forward.opened"),
        "{out}"
    );
    // The same question by user, bounded in time.
    let (code, out, _) = run(
        &[
            "audit", "search", log, "--user", "bob", "--since", "1h", "--json",
        ],
        b.d.path(),
        None,
    );
    assert_eq!(code, 0);
    assert!(
        !out.is_empty() && !out.contains("\"forward.opened\""),
        "{out}"
    );
    let (_, out, _) = run(
        &[
            "audit",
            "search",
            log,
            "--user",
            "alice",
            "--until",
            "2000-01-01",
            "--json",
        ],
        b.d.path(),
        None,
    );
    assert!(out.is_empty(), "{out}");
}
