//! Unit tests: loading (every error class, with its exact position), evaluation,
//! target resolution (docs/threats.md T16) and reload (row 32).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use super::{SourceFile, parse_address, parse_time};

const HOSTS: &str = r#"[hosts.web-1]
address = "10.20.0.11"
labels = { role = "web", env = "prod" }

[hosts.web-2]
address = "10.20.0.12:2222"
labels = { role = "web", env = "prod" }

[hosts.db-1]
address = "10.20.0.21"
labels = { role = "db", env = "prod" }

[hosts.v6]
address = "[2001:db8::5]:22"
"#;

const PRINCIPALS: &str = r#"[principals.web-deploy]
hosts = { role = "web" }
logins = ["deploy"]
max_ttl = "15m"
extensions = ["permit-pty", "permit-port-forwarding"]

[principals.dba]
hosts = ["db-1"]
logins = ["postgres", "dba"]

[principals.ops-root]
hosts = "*"
logins = ["root"]
max_ttl = "5m"
"#;

const PEOPLE: &str = r#"[groups.ops]
members = ["alice", "carol"]
principals = ["web-deploy", "ops-root"]

[groups.dbas]
members = ["dave"]
principals = ["dba"]

[groups.idp-web]
principals = ["web-deploy"]

[users.bob]
principals = ["dba"]
source = ["192.0.2.0/24", "2001:db8::7"]

[users.alice]
principals = ["dba"]

[[temporary]]
user = "ivy"
principal = "dba"
until = 2026-12-01T00:00:00Z
reason = "INC-4711"

[[revoked]]
serial = 1234567890123
reason = "laptop lost"

[[revoked]]
key_id = "mallory"
"#;

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        rel: name.to_string(),
        display: format!("policies/{name}"),
        text: text.to_string(),
    }
}

fn good() -> Policy {
    Policy::from_files(&[
        file("hosts.toml", HOSTS),
        file("people.toml", PEOPLE),
        file("principals.toml", PRINCIPALS),
    ])
    .unwrap()
}

fn at(s: &str) -> SystemTime {
    parse_time(s).unwrap()
}

fn before_until() -> SystemTime {
    at("2026-11-30T23:59:59Z")
}

/// Loads the good files with `name` replaced (or added), returning the error lines.
fn errors_with(name: &str, text: &str) -> Vec<String> {
    let mut files = vec![
        file("hosts.toml", HOSTS),
        file("people.toml", PEOPLE),
        file("principals.toml", PRINCIPALS),
    ];
    files.retain(|f| f.rel != name);
    files.push(file(name, text));
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    match Policy::from_files(&files) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn q<'a>(user: &'a str, host: &'a str, login: Option<&'a str>, now: SystemTime) -> Query<'a> {
    Query {
        user,
        extra_groups: &[],
        host,
        login,
        within: None,
        now,
    }
}

// ---------------------------------------------------------------- loading

#[test]
fn good_policy_loads() {
    let p = good();
    assert_eq!(p.hosts.len(), 4);
    assert_eq!(p.hosts["web-2"].port, 2222);
    assert_eq!(p.hosts["web-1"].port, 22);
    assert_eq!(p.hosts["v6"].address, "2001:db8::5");
    assert_eq!(p.principals["dba"].extensions, vec!["permit-pty"]);
    assert_eq!(
        p.principals["web-deploy"].max_ttl,
        Some(Duration::from_secs(900))
    );
    assert_eq!(p.users["bob"].source.len(), 2);
    assert_eq!(
        p.temporary[0].until,
        UNIX_EPOCH + Duration::from_secs(1_796_083_200)
    );
    assert_eq!(p.revoked.len(), 2);
    assert_eq!(
        p.principals["dba"].origin.to_string(),
        "policies/principals.toml:7:13"
    );
    assert!(p.version.starts_with("sha256:"), "{}", p.version);
    assert!(p.revocation(Some(1234567890123), "x", "").is_some());
    assert!(p.revocation(Some(1), "mallory", "").is_some());
    assert!(p.revocation(Some(1), "alice", "").is_none());
}

#[test]
fn design_example_message_for_a_dangling_principal() {
    let people = "[groups.ops]\nmembers = [\"alice\"]\nprincipals = [\"web-deploy\"]\n\n\
                  [users.bob]\nsource = [\"192.0.2.0/24\"]\nprincipals = [\"dbaa\"]\n";
    let principals = "[principals.web-deploy]\nhosts = \"*\"\nlogins = [\"deploy\"]\n\
                      [principals.dba]\nhosts = \"*\"\nlogins = [\"dba\"]\n";
    let e = Policy::from_files(&[
        file("hosts.toml", HOSTS),
        file("people.toml", people),
        file("principals.toml", principals),
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "policies/people.toml:7:15: unknown principal \"dbaa\" (known: dba, web-deploy)"
    );
}

#[test]
fn toml_syntax_error_has_its_position() {
    let e = errors_with(
        "extra.toml",
        "[hosts.web-9]\naddress = \"10.0.0.9\nlabels = {}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("policies/extra.toml:2:"), "{e:?}");
    assert!(e[0].contains("TOML syntax"), "{e:?}");
}

#[test]
fn toml_duplicate_table_in_one_file_is_a_syntax_error_with_position() {
    let e = errors_with(
        "extra.toml",
        "[hosts.web-9]\naddress = \"10.0.0.9\"\n[hosts.web-9]\naddress = \"10.0.0.10\"\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("policies/extra.toml:3:8: "), "{e:?}");
    assert!(e[0].contains("duplicate"), "{e:?}");
}

#[test]
fn unknown_keys_are_errors_everywhere() {
    let e = errors_with(
        "extra.toml",
        "[hosts.web-9]\nadress = \"10.0.0.9\"\n\n[hostz.x]\na = 1\n\n\
         [[temporary]]\nuser = \"ivy\"\nprincipal = \"dba\"\nuntil = 2030-01-01T00:00:00Z\nreason = \"r\"\nnote = \"x\"\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/extra.toml:1:8: [hosts.web-9] needs address = \"host\" or \"host:port\" (port 22 by default)",
            "policies/extra.toml:2:1: unknown key \"adress\" in [hosts.web-9] (did you mean \"address\"? allowed: address, labels, record, host_key)",
            "policies/extra.toml:4:2: unknown section \"hostz\" (did you mean \"hosts\"? allowed: hosts, principals, groups, users, temporary, revoked)",
            "policies/extra.toml:12:1: unknown key \"note\" in [[temporary]] (allowed: user, principal, until, reason)",
        ]
    );
}

#[test]
fn wrong_types_are_errors() {
    let e = errors_with(
        "extra.toml",
        "[principals.x]\nhosts = 5\nlogins = \"deploy\"\nmax_ttl = 15\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/extra.toml:2:9: hosts must be \"*\", a list of host names, or a label table, not an integer",
            "policies/extra.toml:3:10: logins must be a list of strings like [\"a\", \"b\"], not a string",
            "policies/extra.toml:4:11: max_ttl must be a string, not an integer",
        ]
    );
}

#[test]
fn duplicates_across_files_are_errors() {
    let e = errors_with(
        "z-more.toml",
        "[hosts.web-1]\naddress = \"10.0.0.99\"\n\n[principals.dba]\nhosts = \"*\"\nlogins = [\"x\"]\n\n\
         [groups.ops]\nprincipals = [\"dba\"]\n\n[users.bob]\nprincipals = [\"dba\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/z-more.toml:1:8: host \"web-1\" is already defined at policies/hosts.toml:1:8",
            "policies/z-more.toml:4:13: principal \"dba\" is already defined at policies/principals.toml:7:13",
            "policies/z-more.toml:8:9: group \"ops\" is already defined at policies/people.toml:1:9",
            "policies/z-more.toml:11:8: user \"bob\" is already defined at policies/people.toml:12:8",
        ]
    );
}

#[test]
fn dangling_references_are_errors() {
    let e = errors_with(
        "more.toml",
        "[principals.p1]\nhosts = [\"web-1\", \"web-3\"]\nlogins = [\"x\"]\n\n\
         [principals.p2]\nhosts = { role = \"wbe\" }\nlogins = [\"x\"]\n\n\
         [[temporary]]\nuser = \"ivy\"\nprincipal = \"root\"\nuntil = \"2030-01-01T00:00:00Z\"\nreason = \"r\"\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/more.toml:2:19: unknown host \"web-3\" (known: db-1, v6, web-1, web-2)",
            "policies/more.toml:6:9: label selector { role = \"wbe\" } matches no host (labels in use: env=prod, role=db, role=web)",
            "policies/more.toml:11:13: unknown principal \"root\" (known: dba, ops-root, p1, p2, web-deploy)",
        ]
    );
}

#[test]
fn bad_values_are_errors() {
    let e = errors_with(
        "more.toml",
        "[hosts.a]\naddress = \"10.0.0.256\"\n[hosts.b]\naddress = \"10.0.0.1:0\"\n\
         [hosts.c]\naddress = \"::ffff:10.0.0.1\"\n[hosts.d]\naddress = \"Web.example.org\"\n\
         [principals.p]\nhosts = \"*\"\nlogins = []\nmax_ttl = \"15\"\nextensions = [\"permit-everything\"]\n\
         [users.u]\nsource = [\"192.0.2.0/33\", \"192.0.2.1/24\", \"nope\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/more.toml:2:11: address \"10.0.0.256\" looks like a numeric address but is not a dotted-quad IPv4 or an IPv6 address (write e.g. 10.0.0.1)",
            "policies/more.toml:4:11: address \"10.0.0.1:0\": port \"0\" must be a number from 1 to 65535",
            "policies/more.toml:6:11: address \"::ffff:10.0.0.1\": an IPv4-mapped IPv6 address; write the IPv4 address 10.0.0.1",
            "policies/more.toml:8:11: address \"Web.example.org\": write host names in lower case (\"web.example.org\")",
            "policies/more.toml:11:10: logins must name at least one login, e.g. [\"deploy\"]",
            "policies/more.toml:12:11: max_ttl: invalid duration \"15\": time unit needed, for example 15sec or 15ms (use a number and a unit, e.g. \"90s\", \"15m\", \"1h\")",
            "policies/more.toml:13:15: unknown extension \"permit-everything\" (OpenSSH knows: no-touch-required, permit-X11-forwarding, permit-agent-forwarding, permit-port-forwarding, permit-pty, permit-user-rc, verify-required; vendor extensions contain '@')",
            "policies/more.toml:15:11: invalid CIDR \"192.0.2.0/33\" (write e.g. \"192.0.2.0/24\", \"2001:db8::/32\" or a single address)",
            "policies/more.toml:15:27: source \"192.0.2.1/24\" has host bits set; write the network 192.0.2.0/24",
            "policies/more.toml:15:43: invalid address \"nope\" (write e.g. \"192.0.2.7\", \"192.0.2.0/24\" or \"2001:db8::/32\")",
        ]
    );
}

#[test]
fn invalid_names_are_errors() {
    let e = errors_with(
        "more.toml",
        "[principals.\"a,b\"]\nhosts = \"*\"\nlogins = [\"ro ot\", \"-x\"]\n\
         [groups.\"g\\u001b\"]\nmembers = [\"..\"]\nprincipals = [\"dba\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/more.toml:1:13: invalid character ',' in principal name \"a,b\" (allowed: letters, digits, '.', '_', '-', '@', '+')",
            "policies/more.toml:3:11: invalid character ' ' in login name \"ro ot\" (allowed: letters, digits, '.', '_', '-', '@', '+')",
            "policies/more.toml:3:20: login name \"-x\" must not start with '-'",
            "policies/more.toml:4:9: invalid character '\\u{1b}' in group name \"g\\u{1b}\" (allowed: letters, digits, '.', '_', '-', '@', '+')",
            "policies/more.toml:5:12: user name \"..\" is not allowed",
        ]
    );
}

#[test]
fn missing_and_empty_fields_are_errors() {
    let e = errors_with(
        "more.toml",
        "[[temporary]]\nuser = \"ivy\"\nuntil = 2020-01-01T00:00:00\nreason = \"\"\n\n[[revoked]]\nreason = \"x\"\n",
    );
    assert_eq!(
        e,
        vec![
            "policies/more.toml:1:1: [[temporary]] needs principal (the principal granted)",
            "policies/more.toml:3:9: until 2020-01-01T00:00:00 needs a date, a time and a time zone (e.g. 2026-12-01T00:00:00Z)",
            "policies/more.toml:4:10: reason must not be empty",
            "policies/more.toml:6:1: [[revoked]] needs serial, key_id or key (one or more)",
        ]
    );
}

#[test]
fn several_errors_in_several_files_are_reported_in_one_run() {
    let e = Policy::from_files(&[
        file("a.toml", "[hosts.x]\naddress = \"10.0.0.1\"\nbad = 1\n"),
        file("b.toml", "this is not toml\n"),
        file(
            "c.toml",
            "[groups.g]\nprincipals = [\"nope\"]\n[users.u]\nprincipals = [\"nada\"]\n",
        ),
    ])
    .unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[0].starts_with("policies/a.toml:3:1: unknown key \"bad\""),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("policies/b.toml:1:"), "{lines:?}");
    assert!(
        lines[2].starts_with("policies/c.toml:2:15: unknown principal \"nope\""),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with("policies/c.toml:4:15: unknown principal \"nada\""),
        "{lines:?}"
    );
}

#[test]
fn load_reads_a_folder_recursively_but_not_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(dir.join("team")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(dir.join("hosts.toml"), HOSTS).unwrap();
    std::fs::write(dir.join("principals.toml"), PRINCIPALS).unwrap();
    std::fs::write(dir.join("team/people.toml"), PEOPLE).unwrap();
    std::fs::write(dir.join("tests/cases.toml"), "[[case]]\nnot = \"policy\"\n").unwrap();
    std::fs::write(dir.join("README.md"), "not policy").unwrap();
    let p = Policy::load(&dir).unwrap();
    assert_eq!(p.groups.len(), 3);
    assert!(p.version.starts_with("sha256:"));
    std::fs::write(
        dir.join("team/more.toml"),
        "[users.zed]\nprincipals = [\"nope\"]\n",
    )
    .unwrap();
    let e = Policy::load(&dir).unwrap_err();
    let want = format!(
        "{}:2:15: unknown principal",
        dir.join("team/more.toml").display()
    );
    assert!(e.to_string().starts_with(&want), "{e}");
    assert!(Policy::load(&tmp.path().join("missing")).is_err());
}

#[test]
fn addresses() {
    assert_eq!(parse_address("10.0.0.1").unwrap(), ("10.0.0.1".into(), 22));
    assert_eq!(
        parse_address("10.0.0.1:2222").unwrap(),
        ("10.0.0.1".into(), 2222)
    );
    assert_eq!(
        parse_address("[2001:db8::1]:2200").unwrap(),
        ("2001:db8::1".into(), 2200)
    );
    assert_eq!(
        parse_address("2001:db8::1").unwrap(),
        ("2001:db8::1".into(), 22)
    );
    assert_eq!(parse_address("web-1.dmz.example.org").unwrap().1, 22);
    for bad in [
        "010.0.0.1",
        "0x0a000001",
        "167772161",
        "10.1",
        "web.example.org.",
        "2001:DB8::1",
        "[::ffff:10.0.0.1]:22",
        "10.0.0.1:022",
        "10.0.0.1:99999",
        "0.0.0.0",
        "a b",
        "",
        "[2001:db8::1",
        "host:22:33",
    ] {
        assert!(parse_address(bad).is_err(), "{bad} should be refused");
    }
}

// ---------------------------------------------------------------- evaluation

#[test]
fn allow_via_group() {
    let p = good();
    let d = p.decide(&q("carol", "web-1", Some("deploy"), before_until()));
    assert_eq!(
        d,
        Decision::Allow {
            grant: Grant {
                principal: "web-deploy".into(),
                via: Via::Group("ops".into())
            }
        }
    );
}

#[test]
fn allow_via_user_entry() {
    let p = good();
    let d = p.decide(&q("bob", "db-1", Some("postgres"), before_until()));
    assert_eq!(
        d,
        Decision::Allow {
            grant: Grant {
                principal: "dba".into(),
                via: Via::User
            }
        }
    );
}

#[test]
fn temporary_grant_before_and_after_until() {
    let p = good();
    let d = p.decide(&q("ivy", "db-1", Some("dba"), before_until()));
    match d {
        Decision::Allow { grant } => {
            assert_eq!(grant.principal, "dba");
            assert!(matches!(grant.via, Via::Temporary { ref reason, .. } if reason == "INC-4711"));
        }
        other => panic!("{other:?}"),
    }
    let d = p.decide(&q("ivy", "db-1", Some("dba"), at("2026-12-01T00:00:00Z")));
    match d {
        Decision::Deny { reason } => {
            assert!(reason.contains("holds no principal"), "{reason}");
            assert!(
                reason.contains("expired at 2026-12-01T00:00:00Z"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deny_host_the_principal_does_not_grant() {
    let p = good();
    let Decision::Deny { reason } = p.decide(&q("dave", "web-1", Some("postgres"), before_until()))
    else {
        panic!()
    };
    assert_eq!(
        reason,
        "none of the principals \"dave\" holds (dba) grants host web-1"
    );
}

#[test]
fn deny_login_the_principal_does_not_grant() {
    let p = good();
    let Decision::Deny { reason } = p.decide(&q("dave", "db-1", Some("root"), before_until()))
    else {
        panic!()
    };
    assert_eq!(
        reason,
        "host db-1 is granted to \"dave\" but not as login \"root\" (dba allows login postgres, dba)"
    );
}

#[test]
fn deny_user_in_no_group() {
    let p = good();
    let Decision::Deny { reason } = p.decide(&q("zoe", "web-1", Some("deploy"), before_until()))
    else {
        panic!()
    };
    assert!(
        reason.starts_with("user \"zoe\" holds no principal"),
        "{reason}"
    );
}

#[test]
fn deny_unknown_host() {
    let p = good();
    let Decision::Deny { reason } = p.decide(&q("alice", "web-9", Some("deploy"), before_until()))
    else {
        panic!()
    };
    assert_eq!(reason, "unknown host \"web-9\": not in the inventory");
}

#[test]
fn deterministic_choice_first_by_principal_name() {
    let p = good();
    // alice holds dba (user entry), ops-root and web-deploy (group ops); root on db-1 is
    // only ops-root; postgres on db-1 is dba.
    let d = p.decide(&q("alice", "db-1", None, before_until()));
    assert_eq!(
        d,
        Decision::Allow {
            grant: Grant {
                principal: "dba".into(),
                via: Via::User
            }
        }
    );
    let held = p.held("alice", &[], before_until());
    let names: Vec<&str> = held.iter().map(|g| g.principal.as_str()).collect();
    assert_eq!(names, ["dba", "ops-root", "web-deploy"]);
}

#[test]
fn login_none_means_any_login() {
    let p = good();
    assert!(
        p.decide(&q("dave", "db-1", None, before_until()))
            .is_allow()
    );
    assert!(
        !p.decide(&q("dave", "web-1", None, before_until()))
            .is_allow()
    );
}

#[test]
fn within_restricts_to_the_certificate_principals() {
    let p = good();
    let only_web = vec!["web-deploy".to_string()];
    let mut query = q("alice", "db-1", Some("root"), before_until());
    query.within = Some(&only_web);
    let Decision::Deny { reason } = p.decide(&query) else {
        panic!()
    };
    assert!(
        reason.contains("certificate's principals held now (web-deploy)"),
        "{reason}"
    );
    let root = vec!["ops-root".to_string()];
    query.within = Some(&root);
    assert!(p.decide(&query).is_allow());
    // A principal in the cert that the user no longer holds counts for nothing.
    let gone = vec!["dba".to_string()];
    let mut query = q("carol", "db-1", None, before_until());
    query.within = Some(&gone);
    let Decision::Deny { reason } = p.decide(&query) else {
        panic!()
    };
    assert!(
        reason.contains("no longer holds any of the certificate's principals (dba)"),
        "{reason}"
    );
}

#[test]
fn extra_groups_from_an_identity_provider() {
    let p = good();
    let groups = vec!["idp-web".to_string(), "unknown-group".to_string()];
    let mut query = q("erin@example.org", "web-2", Some("deploy"), before_until());
    assert!(!p.decide(&query).is_allow());
    query.extra_groups = &groups;
    assert_eq!(
        p.decide(&query),
        Decision::Allow {
            grant: Grant {
                principal: "web-deploy".into(),
                via: Via::Group("idp-web".into())
            }
        }
    );
}

#[test]
fn helpers_for_issuer_and_bastion() {
    let p = good();
    let now = before_until();
    assert_eq!(
        p.principal_names("alice", &[], now),
        ["dba", "ops-root", "web-deploy"]
    );
    assert_eq!(p.groups_of("alice"), ["ops"]);
    assert_eq!(
        p.max_ttl_of(&["web-deploy".into(), "ops-root".into()]),
        Some(Duration::from_secs(300))
    );
    assert_eq!(p.max_ttl_of(&["dba".into()]), None);
    assert_eq!(
        p.extensions_of(&["web-deploy".into(), "dba".into()])
            .into_iter()
            .collect::<Vec<_>>(),
        ["permit-port-forwarding", "permit-pty"]
    );
    assert_eq!(p.source_of("bob").len(), 2);
    let hosts: Vec<&str> = p
        .hosts_of("web-deploy")
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(hosts, ["web-1", "web-2"]);
    let apf = p.principals_for_host("db-1");
    assert_eq!(apf["postgres"], ["dba"]);
    assert_eq!(apf["root"], ["ops-root"]);
    assert!(p.principals_for_host("nope").is_empty());
    let r = p.reachable("carol", &[], None, now);
    let summary: Vec<(String, Vec<&str>)> = r
        .iter()
        .map(|r| (r.host.to_string(), r.logins.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("db-1".to_string(), vec!["root"]),
            ("v6".to_string(), vec!["root"]),
            ("web-1".to_string(), vec!["deploy", "root"]),
            ("web-2".to_string(), vec!["deploy", "root"]),
        ]
    );
    let users: Vec<&str> = p.all_users().into_iter().collect();
    assert_eq!(users, ["alice", "bob", "carol", "dave", "ivy"]);
}

#[test]
fn policy_built_by_hand_gets_an_index_on_first_use() {
    let good = good();
    let p = Policy {
        hosts: good.hosts.clone(),
        principals: good.principals.clone(),
        groups: good.groups.clone(),
        ..Default::default()
    };
    assert!(
        p.decide(&q("carol", "web-1", Some("deploy"), before_until()))
            .is_allow()
    );
}

// ---------------------------------------------------------------- row 16

#[test]
fn resolve_target_accepts_exact_names_and_addresses() {
    let p = good();
    assert_eq!(p.resolve_target("web-1", 22).unwrap().name, "web-1");
    assert_eq!(p.resolve_target("10.20.0.11", 22).unwrap().name, "web-1");
    assert_eq!(p.resolve_target("web-2", 2222).unwrap().name, "web-2");
    // 22 is what `ssh -J` sends when no port is given; the bastion dials the inventory port.
    assert_eq!(p.resolve_target("web-2", 22).unwrap().port, 2222);
    assert_eq!(p.resolve_target("2001:db8::5", 22).unwrap().name, "v6");
}

#[test]
fn resolve_target_refuses_aliases() {
    let p = good();
    let cases = [
        ("web-1.", "no trailing dot"),
        ("10.20.0.11.", "no trailing dot"),
        ("WEB-1", "case included"),
        ("Web-1", "case included"),
        ("168034315", "numeric forms"),
        ("0x0a14000b", "numeric forms"),
        ("012.024.0.013", "numeric forms"),
        ("10.20.11", "numeric forms"),
        ("::ffff:10.20.0.11", "IPv4-mapped"),
        ("[::ffff:10.20.0.11]", "IPv4-mapped"),
        ("169.254.169.254", "not in the inventory"),
        ("localhost", "not in the inventory"),
        ("web-1\n", "control characters"),
        ("web-1\0", "control characters"),
        ("", "empty host name"),
        ("[2001:db8::5]", "not in the inventory"),
    ];
    for (req, why) in cases {
        let e = p.resolve_target(req, 22).unwrap_err();
        assert!(e.contains(why), "{req:?}: {e}");
        assert!(!e.contains('\n') && !e.contains('\0'), "{e:?}");
    }
    let e = p.resolve_target("web-1", 2222).unwrap_err();
    assert!(e.contains("port 2222 refused"), "{e}");
    let e = p.resolve_target("web-2", 2200).unwrap_err();
    assert!(e.contains("only its inventory port 2222"), "{e}");
}

#[test]
fn resolve_target_refuses_an_ambiguous_shared_address() {
    let p = Policy::from_toml(
        "p.toml",
        "[hosts.a]\naddress = \"10.0.0.1\"\n[hosts.b]\naddress = \"10.0.0.1\"\n\
         [hosts.c]\naddress = \"10.0.0.1:2222\"\n",
    )
    .unwrap();
    assert!(
        p.resolve_target("10.0.0.1", 22)
            .unwrap_err()
            .contains("shared")
    );
    assert_eq!(p.resolve_target("10.0.0.1", 2222).unwrap().name, "c");
}

// ---------------------------------------------------------------- row 32: reload

#[test]
fn reload_applies_valid_rejects_invalid_and_keeps_the_last_good() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("hosts.toml"), HOSTS).unwrap();
    std::fs::write(dir.join("principals.toml"), PRINCIPALS).unwrap();
    std::fs::write(dir.join("people.toml"), PEOPLE).unwrap();
    let store = watch::PolicyStore::open(dir).unwrap();
    let v1 = store.current().version.clone();
    assert!(matches!(store.reload(), watch::ReloadOutcome::Unchanged));

    // An invalid change: rejected, the old policy stays.
    std::fs::write(
        dir.join("people.toml"),
        format!("{PEOPLE}\n[users.eve]\nprincipal = [\"dba\"]\n"),
    )
    .unwrap();
    match store.reload() {
        watch::ReloadOutcome::Rejected {
            kept_version,
            errors,
        } => {
            assert_eq!(kept_version, v1);
            assert!(
                errors.to_string().contains("unknown key \"principal\""),
                "{errors}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.current().version, v1);
    assert!(!store.current().users.contains_key("eve"));

    // A valid change: applied.
    std::fs::write(
        dir.join("people.toml"),
        format!("{PEOPLE}\n[users.eve]\nprincipals = [\"dba\"]\n"),
    )
    .unwrap();
    match store.reload() {
        watch::ReloadOutcome::Applied {
            old_version,
            new_version,
            ..
        } => {
            assert_eq!(old_version, v1);
            assert_ne!(new_version, v1);
        }
        other => panic!("{other:?}"),
    }
    assert!(store.current().users.contains_key("eve"));
    assert!(matches!(store.reload(), watch::ReloadOutcome::Unchanged));
}

#[tokio::test]
async fn watcher_reloads_on_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("hosts.toml"), HOSTS).unwrap();
    std::fs::write(dir.join("principals.toml"), PRINCIPALS).unwrap();
    std::fs::write(dir.join("people.toml"), PEOPLE).unwrap();
    let store = watch::PolicyStore::open(&dir).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = store.spawn_watcher(Duration::from_millis(20), move |o| {
        let _ = tx.send(o);
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(
        dir.join("extra.toml"),
        "[users.zed]\nprincipals = [\"dba\"]\n",
    )
    .unwrap();
    let o = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(o, watch::ReloadOutcome::Applied { .. }), "{o:?}");
    assert!(store.current().users.contains_key("zed"));
    std::fs::write(
        dir.join("extra.toml"),
        "[users.zed]\nprincipals = [\"nope\"]\n",
    )
    .unwrap();
    let o = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(o, watch::ReloadOutcome::Rejected { .. }), "{o:?}");
    assert!(store.current().users.contains_key("zed"));
    handle.abort();
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = errors_with(
        "more.toml",
        "# café\n[users.u]\nprincipals = [\"é\", \"nope\"]\n",
    );
    assert!(
        e[0].starts_with("policies/more.toml:3:15: unknown principal \"é\""),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("policies/more.toml:3:20: unknown principal \"nope\""),
        "{e:?}"
    );
}
