#![allow(clippy::unwrap_used)]

use super::*;
use crate::bastion::test_support::{UNTIL, at, cert};

const POLICY: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
[hosts.db-1]
address = "10.0.0.3"

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]
[principals.dba]
hosts = ["db-1"]
logins = ["postgres", "root"]

[groups.deployers]
members = ["alice", "bob"]
principals = ["web-deploy"]

[[temporary]]
user = "bob"
principal = "dba"
until = "2026-12-01T00:00:00Z"
reason = "INC-4711"

[[revoked]]
serial = 666
"#;

fn policy() -> Policy {
    Policy::from_toml("p.toml", POLICY).unwrap()
}

#[test]
fn help_names_the_two_commands() {
    let h = help();
    assert!(h.contains("`ssh bastion whoami`"), "{h}");
    assert!(h.contains("`ssh bastion hosts`"), "{h}");
}

#[test]
fn whoami_without_groups_or_reason() {
    let t0 = UNTIL - 7200;
    let id = cert("alice", &["web-deploy"], &[], 7, t0);
    let from: IpAddr = "192.0.2.9".parse().unwrap();
    assert_eq!(
        whoami(&id, from, at(t0 + 600)),
        "key id:      alice\n\
         principals:  web-deploy\n\
         groups:      -\n\
         serial:      7\n\
         expires:     2026-11-30T23:00:00Z (in 50m)\n\
         reason:      -\n\
         from:        192.0.2.9\n"
    );
}

#[test]
fn whoami_with_groups_a_reason_and_escaped_text() {
    let t0 = UNTIL - 7200;
    let mut id = cert("bob\u{1b}[31m", &["web-deploy", "dba"], &[], 8, t0);
    id.groups = vec!["deployers".into(), "ops".into()];
    id.reason = Some("INC-4711: disk\nfull".into());
    let out = whoami(&id, "2001:db8::1".parse().unwrap(), at(t0));
    assert!(out.contains("key id:      bob\\u{1b}[31m\n"), "{out}");
    assert!(out.contains("principals:  web-deploy, dba\n"), "{out}");
    assert!(out.contains("groups:      deployers, ops\n"), "{out}");
    assert!(
        out.contains("reason:      INC-4711: disk\\nfull\n"),
        "{out}"
    );
    assert!(out.contains("from:        2001:db8::1\n"), "{out}");
}

#[test]
fn whoami_after_expiry_says_expired() {
    let t0 = UNTIL - 7200;
    let id = cert("alice", &["web-deploy"], &[], 7, t0);
    let out = whoami(&id, "192.0.2.9".parse().unwrap(), at(t0 + 7200));
    assert!(out.contains("(in expired)\n"), "{out}");
}

#[test]
fn hosts_lists_each_reachable_host_with_logins_and_roles() {
    let t0 = UNTIL - 7200;
    let id = cert("bob", &["web-deploy", "dba"], &[], 9, t0);
    assert_eq!(
        hosts(&id, &policy(), at(t0 + 60)),
        "db-1\tlogins: postgres, root\t(via dba)\n\
         web-1\tlogins: deploy\t(via web-deploy)\n"
    );
}

#[test]
fn hosts_when_the_certificate_no_longer_stands() {
    let t0 = UNTIL - 7200;
    // Revoked by serial.
    let revoked = cert("alice", &["web-deploy"], &[], 666, t0);
    let out = hosts(&revoked, &policy(), at(t0 + 60));
    assert!(out.starts_with("no hosts: "), "{out}");
    assert!(out.contains("revoked"), "{out}");
    // A role the key id does not hold (any more).
    let lost = cert("alice", &["web-deploy", "dba"], &[], 10, t0);
    assert_eq!(
        hosts(&lost, &policy(), at(t0 + 60)),
        "no hosts: your certificate carries role dba that you no longer hold: get a new certificate\n"
    );
}

#[test]
fn hosts_when_a_temporary_grant_has_ended() {
    // bob's certificate carries only `dba`, held through a temporary grant that ends at
    // UNTIL: db-1 is listed before, and the certificate no longer stands after.
    let t0 = UNTIL - 1800;
    let id = cert("bob", &["dba"], &[], 11, t0);
    assert_eq!(
        hosts(&id, &policy(), at(t0 + 60)),
        "db-1\tlogins: postgres, root\t(via dba)\n"
    );
    let after = hosts(&id, &policy(), at(UNTIL + 1));
    assert!(after.starts_with("no hosts: "), "{after}");
    assert!(!after.contains("db-1"), "{after}");
}

#[test]
fn hosts_when_the_granted_host_left_the_inventory() {
    // alice's role grants web-1 only; once web-1 is gone, she reaches nothing, and the
    // certificate still stands (the role is held).
    let mut p = policy();
    p.hosts.remove("web-1");
    let t0 = UNTIL - 7200;
    let id = cert("alice", &["web-deploy"], &[], 12, t0);
    assert_eq!(
        hosts(&id, &p, at(t0 + 60)),
        "no hosts: your certificate's principals grant none under the current policy\n"
    );
}

#[test]
fn hosts_and_whoami_say_which_hosts_record() {
    let text = format!(
        "{}\n[principals.prod-root]\nhosts = [\"web-1\"]\nlogins = [\"root\"]\nrecord = true\n",
        POLICY.replace(
            "[hosts.db-1]\naddress = \"10.0.0.3\"",
            "[hosts.db-1]\naddress = \"10.0.0.3\"\nrecord = true"
        )
    );
    let text = text.replace(
        "principals = [\"web-deploy\"]",
        "principals = [\"web-deploy\", \"prod-root\"]",
    );
    let p = Policy::from_toml("p.toml", &text).unwrap();
    let t0 = UNTIL - 7200;
    // db-1 records for everyone; web-1 only for a certificate carrying prod-root.
    let bob = cert("bob", &["web-deploy", "dba"], &[], 9, t0);
    assert_eq!(
        hosts(&bob, &p, at(t0 + 60)),
        "db-1\tlogins: postgres, root\t(via dba)\trecorded\n\
         web-1\tlogins: deploy\t(via web-deploy)\n"
    );
    assert_eq!(recorded_line(&bob, &p, at(t0 + 60)), "recorded:    db-1\n");
    let root = cert("alice", &["web-deploy", "prod-root"], &[], 12, t0);
    assert_eq!(
        hosts(&root, &p, at(t0 + 60)),
        "web-1\tlogins: deploy, root\t(via prod-root, web-deploy)\trecorded\n"
    );
    assert_eq!(
        recorded_line(&root, &p, at(t0 + 60)),
        "recorded:    web-1\n"
    );
    let alice = cert("alice", &["web-deploy"], &[], 13, t0);
    assert_eq!(recorded_line(&alice, &p, at(t0 + 60)), "");
}
