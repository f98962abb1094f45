//! The audit trail as evidence: the policy version names the loaded bytes (a Git-ignored
//! policy file is an error), `policy.reloaded` is on disk before the new policy decides,
//! signed checkpoints anchor the log's end (`audit verify --checkpoints`), and
//! `audit search` answers questions without jq.
#![allow(clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use drawbridge::audit::{Audit, MemorySink};
use drawbridge::policy::watch::{PolicyStore, ReloadOutcome};
use harness::{Drawbridge, POLICY_HOSTS, POLICY_PEOPLE, POLICY_PRINCIPALS, wait_until};

/// Grants the user `mallory` the `dba` principal: what an override must never slip in.
const OVERRIDE: &str = r#"
[users.mallory]
principals = ["dba"]
"#;

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn head(dir: &Path) -> String {
    let o = Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A Git repository at `root` whose `policies/` holds the harness policy, committed, and
/// a `.gitignore` that ignores `policies/local-*.toml` (and everything the service writes).
fn policy_repo(root: &Path) -> String {
    let p = root.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("hosts.toml"), POLICY_HOSTS).unwrap();
    std::fs::write(p.join("principals.toml"), POLICY_PRINCIPALS).unwrap();
    std::fs::write(p.join("people.toml"), POLICY_PEOPLE).unwrap();
    std::fs::write(
        root.join(".gitignore"),
        "policies/local-*.toml\nca/\nvar/\n*.log\ndrawbridge.toml\n",
    )
    .unwrap();
    git(root, &["init", "-q"]);
    git(root, &["add", ".gitignore", "policies"]);
    git(root, &["commit", "-q", "-m", "policy"]);
    head(root)
}

fn cli(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    harness::run(args, cwd, None)
}

/// THREATS 42: a Git-ignored `local-override.toml` granting a new user a principal was
/// loaded, and `policy check` reported the clean commit.
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
    assert!(
        wait_until(Duration::from_secs(10), || !d
            .events("policy.rejected")
            .is_empty()),
        "no policy.rejected: {}",
        d.server_log()
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
    assert_eq!(d.stop(), 0);
    let stopped = d.events("service.stopped");
    assert_eq!(stopped[0]["policy_version"], commit.as_str());
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
