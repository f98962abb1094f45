//! `drawbridge policy ...` run as a real binary on temporary folders.

use std::path::Path;
use std::process::Command;

use crate::support::drawbridge::BIN;
use crate::support::git::git;
use crate::support::process::{COMMAND_TIMEOUT, Output, run_with_timeout};

const HOSTS: &str = r#"[hosts.web-1]
address = "10.20.0.11"
labels  = { role = "web" }

[hosts.db-1]
address = "10.20.1.21:2222"
labels  = { role = "db" }
"#;

const PRINCIPALS: &str = r#"[principals.web-deploy]
hosts  = { role = "web" }
logins = ["deploy"]

[principals.dba]
hosts  = ["db-1"]
logins = ["postgres"]

[principals.ops-root]
hosts  = "*"
logins = ["root", "deploy"]
"#;

const PEOPLE: &str = r#"[groups.ops]
members    = ["alice"]
principals = ["web-deploy", "ops-root"]

[groups.dbas]
members    = ["bob"]
principals = ["dba"]

[[temporary]]
user      = "ivy"
principal = "dba"
until     = 2030-01-01T00:00:00Z
reason    = "INC-1"
"#;

fn drawbridge(cwd: &Path, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(BIN)
            .current_dir(cwd)
            .args(args)
            .env("DRAWBRIDGE_LOG", "error"),
        COMMAND_TIMEOUT,
    )
}

fn stdout(o: &Output) -> String {
    o.stdout.clone()
}

fn stderr(o: &Output) -> String {
    o.stderr.clone()
}

/// A temporary folder holding `policies/` with the good files.
fn tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(dir.join("hosts.toml"), HOSTS).unwrap();
    std::fs::write(dir.join("principals.toml"), PRINCIPALS).unwrap();
    std::fs::write(dir.join("people.toml"), PEOPLE).unwrap();
    tmp
}

#[test]
fn check_accepts_a_good_tree() {
    let tmp = tree();
    let o = drawbridge(tmp.path(), &["policy", "check", "policies"]);
    assert_eq!(o.code(), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2 hosts, 3 principals, 2 groups"), "{out}");
    assert!(out.contains("version sha256:"), "{out}");
}

#[test]
fn check_defaults_to_the_configured_folder() {
    let tmp = tree();
    let o = drawbridge(tmp.path(), &["policy", "check"]);
    assert_eq!(o.code(), 0, "{}", stderr(&o));
}

#[test]
fn check_reports_every_error_with_its_position() {
    let tmp = tree();
    let dir = tmp.path().join("policies");
    std::fs::write(
        dir.join("people.toml"),
        "[groups.ops]\nmembers = [\"alice\"]\nprincipals = [\"web-deploy\"]\n\n\
         [users.bob]\nsource = [\"192.0.2.0/24\"]\nprincipals = [\"dbaa\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("more.toml"),
        "[hosts.web-1]\naddress = \"10.0.0.1\"\ncolour = 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("broken.toml"), "[hosts\n").unwrap();
    let o = drawbridge(tmp.path(), &["policy", "check", "policies"]);
    assert_eq!(o.code(), 1);
    let err = stderr(&o);
    assert!(
        err.contains("policies/broken.toml:1:7: TOML syntax"),
        "{err}"
    );
    assert!(
        err.contains(
            "policies/more.toml:1:8: host \"web-1\" is already defined at policies/hosts.toml:1:8"
        ),
        "{err}"
    );
    assert!(
        err.contains("policies/more.toml:3:1: unknown key \"colour\" in [hosts.web-1]"),
        "{err}"
    );
    assert!(
        err.contains(
            "policies/people.toml:7:15: unknown principal \"dbaa\" (known: dba, ops-root, web-deploy)"
        ),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn test_runs_cases_and_reports_failures() {
    let tmp = tree();
    let dir = tmp.path().join("policies");
    std::fs::write(
        dir.join("tests/access.toml"),
        "[[case]]\nuser = \"alice\"\nhost = \"web-1\"\nlogin = \"deploy\"\nexpect = \"allow\"\n\n\
         [[case]]\nuser = \"bob\"\nhost = \"web-1\"\nlogin = \"deploy\"\nexpect = \"allow\"\n\n\
         [[case]]\nuser = \"ivy\"\nhost = \"db-1\"\nlogin = \"postgres\"\nat = 2030-01-01T00:00:00Z\nexpect = \"deny\"\n\n\
         [[case]]\nuser = \"alice\"\nhost = \"web-1\"\nlogin = \"deploy\"\nexpect = \"allow\"\nprincipal = \"web-deploy\"\n",
    )
    .unwrap();
    let o = drawbridge(tmp.path(), &["policy", "test", "policies"]);
    assert_eq!(o.code(), 1, "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "policies/tests/access.toml:7: FAIL bob -> web-1 as deploy: expected allow, got deny"
        ),
        "{out}"
    );
    assert!(
        out.contains("policies/tests/access.toml:20: FAIL alice -> web-1 as deploy: expected allow by principal web-deploy, but ops-root decided (via group ops)"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("2 passed, 2 failed"), "{out}");

    // All passing: exit 0.
    std::fs::write(
        dir.join("tests/access.toml"),
        "[[case]]\nuser = \"alice\"\nhost = \"web-1\"\nlogin = \"deploy\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let o = drawbridge(tmp.path(), &["policy", "test", "policies"]);
    assert_eq!(o.code(), 0, "{}", stdout(&o));
    assert_eq!(stdout(&o).lines().last(), Some("1 passed, 0 failed"));

    // An unknown key in a case is an error, not ignored.
    std::fs::write(
        dir.join("tests/access.toml"),
        "[[case]]\nuser = \"alice\"\nhost = \"web-1\"\nlogin = \"deploy\"\nexpect = \"allow\"\nexpected = \"x\"\n",
    )
    .unwrap();
    let o = drawbridge(tmp.path(), &["policy", "test", "policies"]);
    assert_eq!(o.code(), 1);
    assert!(stdout(&o).contains("policies/tests/access.toml:6:1: unknown key \"expected\""));
    assert_eq!(stdout(&o).lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn explain_names_the_principal_group_and_positions() {
    let tmp = tree();
    let o = drawbridge(
        tmp.path(),
        &[
            "policy", "explain", "alice", "web-1", "deploy", "--dir", "policies",
        ],
    );
    assert_eq!(o.code(), 0);
    let out = stdout(&o);
    assert!(out.starts_with("ALLOW alice -> web-1 as deploy\n"), "{out}");
    assert!(
        out.contains("principal ops-root (policies/principals.toml:9:13)"),
        "{out}"
    );
    assert!(
        out.contains("held via group ops (policies/people.toml:1:9), which lists alice"),
        "{out}"
    );

    let o = drawbridge(
        tmp.path(),
        &[
            "policy", "explain", "bob", "db-1", "root", "--dir", "policies",
        ],
    );
    assert_eq!(o.code(), 0);
    let out = stdout(&o);
    assert!(out.starts_with("DENY bob -> db-1 as root\n"), "{out}");
    assert!(
        out.contains("not as login \"root\" (dba allows login postgres)"),
        "{out}"
    );

    let o = drawbridge(
        tmp.path(),
        &[
            "policy",
            "explain",
            "ivy",
            "db-1",
            "postgres",
            "--dir",
            "policies",
            "--at",
            "2030-01-02T00:00:00Z",
        ],
    );
    assert_eq!(o.code(), 0);
    assert!(
        stdout(&o).contains("expired at 2030-01-01T00:00:00Z"),
        "{}",
        stdout(&o)
    );

    let o = drawbridge(
        tmp.path(),
        &[
            "policy", "explain", "erin", "db-1", "postgres", "--groups", "dbas", "--dir",
            "policies",
        ],
    );
    assert!(stdout(&o).starts_with("ALLOW"), "{}", stdout(&o));
}

#[test]
fn principals_prints_and_writes_files() {
    let tmp = tree();
    let o = drawbridge(
        tmp.path(),
        &["policy", "principals", "web-1", "--dir", "policies"],
    );
    assert_eq!(o.code(), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "deploy: ops-root web-deploy\nroot: ops-root\n");

    let out = tmp.path().join("out/principals");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keepme"), "not ours\n").unwrap();
    std::fs::write(
        out.join("olduser"),
        "# generated by drawbridge policy principals for x\nold\n",
    )
    .unwrap();
    let o = drawbridge(
        tmp.path(),
        &[
            "policy",
            "principals",
            "web-1",
            "--dir",
            "policies",
            "--out",
            "out/principals",
        ],
    );
    assert_eq!(o.code(), 0, "{}", stderr(&o));
    let deploy = std::fs::read_to_string(out.join("deploy")).unwrap();
    let lines: Vec<&str> = deploy.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, ["ops-root", "web-deploy"]);
    let root = std::fs::read_to_string(out.join("root")).unwrap();
    assert_eq!(
        root.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["ops-root"]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("deploy"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert!(out.join("keepme").exists(), "files we did not write stay");
    assert!(
        !out.join("olduser").exists(),
        "a stale generated file is removed"
    );

    let o = drawbridge(
        tmp.path(),
        &["policy", "principals", "web-9", "--dir", "policies"],
    );
    assert_eq!(o.code(), 1);
    assert!(
        stderr(&o).contains("unknown host \"web-9\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn diff_between_two_commits() {
    let tmp = tree();
    let root = tmp.path();
    git(root, &["init", "-q"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "one"]);
    // Version is the commit when the folder is in a Git work tree.
    let o = drawbridge(root, &["policy", "check", "policies"]);
    assert!(!stdout(&o).contains("sha256:"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("+sha256:"), "{}", stdout(&o));

    let people = PEOPLE.replace("members    = [\"bob\"]", "members    = [\"carol\"]");
    std::fs::write(root.join("policies/people.toml"), people).unwrap();
    let o = drawbridge(root, &["policy", "check", "policies"]);
    assert!(stdout(&o).contains("+sha256:"), "{}", stdout(&o));
    git(root, &["commit", "-q", "-am", "two"]);

    let o = drawbridge(root, &["policy", "diff", "HEAD~1", "HEAD", "policies"]);
    assert_eq!(o.code(), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("temporary grants evaluated at"), "{out}");
    assert!(out.contains("bob\n  - db-1 postgres (via dba)\n"), "{out}");
    assert!(
        out.contains("carol\n  + db-1 postgres (via dba)\n"),
        "{out}"
    );

    let o = drawbridge(root, &["policy", "diff", "HEAD", "HEAD", "policies"]);
    assert_eq!(o.code(), 0);
    assert!(
        stdout(&o).contains("no change in effective access"),
        "{}",
        stdout(&o)
    );

    // A revision whose policy does not load: exit 1 with its errors.
    std::fs::write(
        root.join("policies/people.toml"),
        "[users.x]\nprincipals = [\"nope\"]\n",
    )
    .unwrap();
    git(root, &["commit", "-q", "-am", "three"]);
    let o = drawbridge(root, &["policy", "diff", "HEAD~1", "HEAD", "policies"]);
    assert_eq!(o.code(), 1);
    assert!(
        stderr(&o).contains("HEAD:policies/people.toml:2:15: unknown principal \"nope\""),
        "{}",
        stderr(&o)
    );
}
