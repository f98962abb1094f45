//! Policy from signed Git commits (docs/threats.md, T51): a real `drawbridge serve`
//! fetching a real repository every poll, real `git commit -S` with SSH keys made by
//! `ssh-keygen`, a real OpenSSH sshd as web-1 behind the bastion.
//!
//! The repository is the bastion's `policies/` folder made a Git work tree; the service
//! reads it only through its own bare clone (`var/policy.git`), never from that folder.
//!
//! Fails when `sshd` is missing or we are not root (`DRAWBRIDGE_ALLOW_SKIP=1` skips);
//! `policy verify` needs neither.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::audit::{expect_record_within, record_time as ts};
use crate::support::dmz::{self, Bastion};
use crate::support::drawbridge::{PW, basic, post_key, run, user_key};
use crate::support::net::HeldForward;
use crate::support::process::wait_until;
use crate::support::signed_git::{Signers, commit_signed, commit_unsigned, force_main_to, init};
use crate::support::ssh::{Key, SshClient, TestDir};

/// The bastion with its policy from `policies/` as a Git repository, alice's first
/// signed commit in force.
struct World {
    b: Bastion,
    signers: Signers,
    /// The first commit (in force at start).
    first: String,
    _keys: TestDir,
}

/// Starts the bastion fetching `policies/` every `poll`.
fn world(poll: &str) -> Option<World> {
    let keys = TestDir::new();
    let signers = Signers::new(&keys);
    let config = format!(
        "[policy]\ngit = \"policies\"\nref = \"main\"\npoll = \"{poll}\"\nallowed_signers = \"{}\"\n",
        signers.allowed.display()
    );
    let mut first = String::new();
    let b = dmz::start_prepared(&config, |dmz| {
        init(&dmz.policy_dir);
        first = commit_signed(&dmz.policy_dir, &signers.alice, "the first policy");
    })?;
    Some(World {
        b,
        signers,
        first,
        _keys: keys,
    })
}

impl World {
    fn repo(&self) -> &Path {
        &self.b.policy_dir
    }

    fn records(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        self.b.find(event, fields)
    }

    /// The `policy.reloaded` record putting `commit` in force (waiting for it).
    #[track_caller]
    fn applied(&self, commit: &str) -> Value {
        expect_record_within(
            &self.b.audit_path(),
            "policy.reloaded",
            &[("policy_version", commit)],
            Duration::from_secs(10),
        )
    }

    /// The `policy.rejected` record refusing `commit` (waiting for it).
    #[track_caller]
    fn rejected(&self, commit: &str) -> Value {
        expect_record_within(
            &self.b.audit_path(),
            "policy.rejected",
            &[("commit", commit)],
            Duration::from_secs(10),
        )
    }

    /// An OpenSSH client as alice with a certificate for web-admin (root on web-1).
    fn alice(&self, name: &str, serial: u64) -> (SshClient, Key) {
        let key = self
            .b
            .user(name, "alice", &["web-admin"], "-1m:+10m", serial, &[]);
        (self.b.client(name, &key), key)
    }

    /// Whether alice's certificate reaches web-1 now.
    fn alice_reaches_web1(&self, c: &SshClient) -> bool {
        c.run(&["web-1", "true"]).success()
    }
}

/// A forward to web-1 held open by `c`, once sshd's banner came through it.
fn hold(c: &SshClient) -> HeldForward {
    let f = c.hold_forward("web-1:22");
    let banner = f.first_bytes(Duration::from_secs(20));
    assert!(
        banner.starts_with("SSH-2.0-OpenSSH"),
        "no forward: {banner:?}"
    );
    f
}

#[test]
fn t51_a_signed_commit_is_applied_and_the_audit_names_it() {
    let Some(w) = world("200ms") else { return };
    let started = w.b.expect_record("service.started", &[]);
    assert_eq!(started["policy_version"], w.first.as_str());
    let (alice, _) = w.alice("alice", 5101);
    assert!(w.alice_reaches_web1(&alice), "alice in ops reaches web-1");
    // Issuance decides under the commit too.
    w.b.d.add_user("alice", PW);
    let api_key = user_key(&w.b.d, "alice-api");
    let issue = || {
        post_key(
            &w.b.d,
            &["-u", &basic("alice")],
            &api_key,
            "?principals=web-admin",
        )
    };
    let r = issue();
    assert_eq!(r.status, 200, "{}", r.text());
    let issued = w.b.expect_record("cert.issued", &[("user", "alice")]);
    assert_eq!(issued["policy_version"], w.first.as_str());

    w.b.write_policy(false, &[]);
    let second = commit_signed(w.repo(), &w.signers.alice, "alice leaves ops");
    let r = w.applied(&second);
    assert_eq!(r["old_version"], w.first.as_str());
    let by = r["signed_by"].as_str().unwrap();
    assert!(
        by.starts_with("t@t (SHA256:") && by.contains("allowed_signers:2"),
        "{by}"
    );
    // The bastion decides under the new commit: alice's certificate no longer reaches.
    assert!(!w.alice_reaches_web1(&alice), "alice still reaches web-1");
    let refused = w.b.expect_record("forward.refused", &[("key_id", "alice")]);
    assert_eq!(refused["policy_version"], second.as_str());
    assert_eq!(refused["lost_principal"], "web-admin");
    let r = issue();
    assert_eq!(r.status, 403, "{}", r.text());
    let no = w.b.expect_record("cert.refused", &[("user", "alice")]);
    assert_eq!(no["policy_version"], second.as_str());
}

#[test]
fn t51_an_unsigned_commit_is_refused_and_audited_and_the_last_good_stays() {
    let Some(w) = world("200ms") else { return };
    let (alice, _) = w.alice("alice", 5201);
    w.b.write_policy(false, &[]);
    let unsigned = commit_unsigned(w.repo(), "alice leaves ops, unsigned");
    let r = w.rejected(&unsigned);
    assert_eq!(r["reason"], "unsigned", "{r}");
    assert_eq!(r["policy_version"], w.first.as_str());
    assert!(
        r["errors"][0].as_str().unwrap().contains("no signature"),
        "{r}"
    );
    // The last good commit stays in force: alice still reaches web-1.
    assert!(
        w.alice_reaches_web1(&alice),
        "the unsigned commit was applied"
    );
    assert!(w.records("policy.reloaded", &[]).is_empty());
    // Refused once, recorded once, however many polls see it.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(w.records("policy.rejected", &[]).len(), 1);

    // A signed commit on top applies: only the head needs a signature.
    let signed = commit_signed(w.repo(), &w.signers.alice, "signed on top");
    w.applied(&signed);
    assert!(!w.alice_reaches_web1(&alice), "alice still reaches web-1");
}

#[test]
fn t51_a_commit_signed_by_a_key_not_in_allowed_signers_is_refused() {
    let Some(w) = world("200ms") else { return };
    let (alice, _) = w.alice("alice", 5301);
    w.b.write_policy(false, &[]);
    let forged = commit_signed(w.repo(), &w.signers.mallory, "signed by mallory");
    let r = w.rejected(&forged);
    assert_eq!(r["reason"], "unknown-signer", "{r}");
    assert_eq!(r["policy_version"], w.first.as_str());
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .contains("not in the allowed signers"),
        "{r}"
    );
    assert!(w.alice_reaches_web1(&alice), "mallory's commit was applied");
    assert!(w.records("policy.reloaded", &[]).is_empty());
}

#[test]
fn t51_a_ref_moved_back_or_rewritten_is_refused_also_after_a_restart() {
    let Some(mut w) = world("200ms") else { return };
    let (alice, _) = w.alice("alice", 5401);
    w.b.write_policy(false, &[]);
    let second = commit_signed(w.repo(), &w.signers.alice, "alice leaves ops");
    w.applied(&second);
    assert!(!w.alice_reaches_web1(&alice));

    // Force-pushed back to the first commit (signed, valid, and older).
    force_main_to(w.repo(), &w.first);
    let r = w.rejected(&w.first);
    assert_eq!(r["reason"], "not-descendant", "{r}");
    assert_eq!(r["policy_version"], second.as_str());
    assert!(
        r["errors"][0].as_str().unwrap().contains("moved back"),
        "{r}"
    );
    assert!(
        !w.alice_reaches_web1(&alice),
        "the older commit was applied"
    );

    // A signed commit on a history that does not hold the commit in force.
    w.b.write_policy(true, &[("web-7", "127.0.0.1:7".into())]);
    let rewritten = commit_signed(w.repo(), &w.signers.alice, "rewritten history");
    let r = w.rejected(&rewritten);
    assert_eq!(r["reason"], "not-descendant", "{r}");
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .contains("does not descend"),
        "{r}"
    );
    assert!(
        !w.alice_reaches_web1(&alice),
        "the rewritten commit was applied"
    );

    // A restart does not forget the commit in force: it stays, and the head is refused
    // again (recorded once the log is open).
    let before = w
        .records("policy.rejected", &[("commit", &rewritten)])
        .len();
    w.b.d.stop();
    w.b.d.restart();
    let started = w.records("service.started", &[]).pop().unwrap();
    assert_eq!(started["policy_version"], second.as_str());
    wait_until(
        Duration::from_secs(10),
        || {
            w.records("policy.rejected", &[("commit", &rewritten)])
                .len()
                > before
        },
        || "the head refused at start is not recorded".into(),
    );
    // A new client (the restarted bastion listens on another port), refused under the
    // commit kept.
    let (alice, _) = w.alice("alice-again", 5402);
    assert!(
        !w.alice_reaches_web1(&alice),
        "the restart applied the rewritten commit"
    );
    let refused = w.b.expect_record("forward.refused", &[("serial", "5402")]);
    assert_eq!(refused["policy_version"], second.as_str());
}

#[test]
fn t51_sighup_fetches_at_once() {
    // A poll far beyond the test: only SIGHUP can fetch.
    let Some(w) = world("1h") else { return };
    w.b.write_policy(false, &[]);
    let second = commit_signed(w.repo(), &w.signers.alice, "alice leaves ops");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.records("policy.reloaded", &[]).is_empty(),
        "fetched without SIGHUP"
    );
    let asked = Instant::now();
    w.b.d.signal("HUP");
    wait_until(
        Duration::from_secs(5),
        || {
            !w.records("policy.reloaded", &[("policy_version", &second)])
                .is_empty()
        },
        || format!("SIGHUP did not fetch: {}", w.b.d.server_log()),
    );
    println!("SIGHUP to policy.reloaded: {:?}", asked.elapsed());
}

#[test]
fn t51_a_commit_removing_a_group_member_cuts_her_open_forward_within_1s_of_the_poll() {
    let Some(w) = world("200ms") else { return };
    let (alice, _) = w.alice("alice", 5501);
    let mut a = hold(&alice);
    let committed = Instant::now();
    w.b.write_policy(false, &[]);
    let second = commit_signed(w.repo(), &w.signers.alice, "alice leaves ops");
    let reloaded = w.applied(&second);
    let cut = expect_record_within(
        &w.b.audit_path(),
        "forward.cut",
        &[("key_id", "alice")],
        Duration::from_secs(5),
    );
    let after = ts(&cut).duration_since(ts(&reloaded)).unwrap_or_default();
    println!(
        "forward.cut {after:?} after policy.reloaded; both records read {:?} after the commit began",
        committed.elapsed()
    );
    assert!(
        after < Duration::from_secs(1),
        "cut {after:?} after the reload"
    );
    assert_eq!(cut["reason"], "role-lost");
    assert_eq!(cut["policy_version"], second.as_str());
    assert!(
        a.ended_within(Duration::from_secs(3)),
        "alice's forward still open"
    );
}

#[test]
fn t51_policy_verify_answers_for_a_reviewer() {
    let t = TestDir::new();
    let signers = Signers::new(&t);
    let repo = t.join("access");
    std::fs::create_dir_all(&repo).unwrap();
    init(&repo);
    crate::support::dmz::write_dmz_policy(&repo, 22, 23, true, &[]);
    let first = commit_signed(&repo, &signers.alice, "first");
    let allowed = signers.allowed.display().to_string();
    let repo_arg = repo.display().to_string();
    let verify = |rev: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "verify",
            rev,
            "--repo",
            &repo_arg,
            "--allowed-signers",
            &allowed,
        ];
        args.extend_from_slice(extra);
        run(&args, t.path(), None)
    };

    let (code, out, err) = verify("HEAD", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&first) && out.contains("signed by t@t (SHA256:"),
        "{out}"
    );

    let forged = commit_signed(&repo, &signers.mallory, "mallory");
    let (code, out, err) = verify(&forged, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("unknown-signer"), "{err}");

    let unsigned = commit_unsigned(&repo, "unsigned");
    let (code, _, err) = verify(&unsigned, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("(unsigned)"), "{err}");

    // A policy that does not load is refused too, naming the file in the commit.
    std::fs::write(repo.join("hosts.toml"), "[hosts.x\n").unwrap();
    let broken = commit_signed(&repo, &signers.alice, "broken");
    let (code, _, err) = verify(&broken, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid-policy") && err.contains(":hosts.toml"),
        "{err}"
    );

    // An older commit than the one in force.
    let (code, _, err) = verify(&first, &["--in-force", &broken]);
    assert_eq!(code, 1);
    assert!(err.contains("not-descendant"), "{err}");

    // No allowed signers: the question cannot be asked.
    let (code, _, err) = run(
        &["policy", "verify", "HEAD", "--repo", &repo_arg],
        t.path(),
        None,
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_signed_commit_whose_policy_does_not_load_is_refused_naming_the_file() {
    let Some(w) = world("200ms") else { return };
    std::fs::write(w.repo().join("hosts.toml"), "[hosts.web-1\n").unwrap();
    let broken = commit_signed(w.repo(), &w.signers.alice, "a typo");
    let r = w.rejected(&broken);
    assert_eq!(r["reason"], "invalid-policy", "{r}");
    assert_eq!(r["policy_version"], w.first.as_str());
    let short = &broken[..12];
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{short}:hosts.toml:1:")),
        "{r}"
    );
    let (alice, _) = w.alice("alice", 5601);
    assert!(
        w.alice_reaches_web1(&alice),
        "the last good commit is not in force"
    );
}

#[test]
fn an_unreachable_repository_keeps_the_commit_in_force_also_across_a_restart() {
    let Some(mut w) = world("200ms") else { return };
    let gone = w.b.d.path().join("policies.gone");
    std::fs::rename(w.repo(), &gone).unwrap();
    wait_until(
        Duration::from_secs(10),
        || w.b.d.server_log().contains("cannot fetch the policy"),
        || format!("no failed fetch logged: {}", w.b.d.server_log()),
    );
    let (alice, _) = w.alice("alice", 5701);
    assert!(
        w.alice_reaches_web1(&alice),
        "the commit in force was dropped"
    );
    assert!(
        w.records("policy.rejected", &[]).is_empty(),
        "a failed fetch is no refusal"
    );

    w.b.d.stop();
    w.b.d.restart();
    let started = w.records("service.started", &[]).pop().unwrap();
    assert_eq!(started["policy_version"], w.first.as_str());
    // A new client: the restarted bastion listens on another port.
    let (alice, _) = w.alice("alice-again", 5702);
    assert!(
        w.alice_reaches_web1(&alice),
        "the restart lost the commit in force"
    );

    // Back: the next poll fetches again.
    std::fs::rename(&gone, w.repo()).unwrap();
    w.b.write_policy(false, &[]);
    let second = commit_signed(w.repo(), &w.signers.alice, "alice leaves ops");
    w.applied(&second);
}

#[test]
fn a_first_start_on_an_unsigned_head_does_not_start() {
    let keys = TestDir::new();
    let signers = Signers::new(&keys);
    let config = format!(
        "[policy]\ngit = \"policies\"\npoll = \"1s\"\nallowed_signers = \"{}\"\n",
        signers.allowed.display()
    );
    let d = crate::support::drawbridge::Drawbridge::prepare(
        &crate::support::drawbridge::FIXTURE_POLICY,
        &config,
    );
    let repo = d.path().join("policies");
    init(&repo);
    let unsigned = commit_unsigned(&repo, "unsigned");
    let (code, out, err) = d.cli(&["serve"], None);
    assert_ne!(code, 0, "serve started on an unsigned head: {out}{err}");
    assert!(
        err.contains(&format!("commit {unsigned} refused (unsigned)"))
            && err.contains("no policy commit of"),
        "{err}"
    );
}
