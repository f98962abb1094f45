use super::*;
use crate::policy::{HostSelector, Origin, Via};

const MIN: u64 = 60;

fn principal(name: &str, max_ttl: Option<u64>, ext: &[&str]) -> (String, Principal) {
    (
        name.to_string(),
        Principal {
            name: name.to_string(),
            hosts: HostSelector::All,
            logins: vec!["deploy".into()],
            max_ttl: max_ttl.map(Duration::from_secs),
            extensions: ext.iter().map(|s| s.to_string()).collect(),
            require_reason: false,
            record: false,
            origin: Origin::default(),
        },
    )
}

fn defs() -> BTreeMap<String, Principal> {
    [
        principal(
            "web-deploy",
            Some(15 * MIN),
            &["permit-pty", "permit-port-forwarding"],
        ),
        principal("dba", Some(10 * MIN), &["permit-pty"]),
        principal("ops", None, &["permit-agent-forwarding", "permit-pty"]),
    ]
    .into_iter()
    .collect()
}

fn grant(p: &str) -> Grant {
    Grant {
        principal: p.into(),
        via: Via::Group("ops".into()),
    }
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct Case {
    held: Vec<Grant>,
    groups: Vec<String>,
    source: Vec<IpNet>,
    ttl: Option<Duration>,
    asked: Option<Vec<String>>,
    defs: BTreeMap<String, Principal>,
    reason: Option<String>,
}

impl Case {
    fn new(held: &[&str]) -> Case {
        Case {
            held: held.iter().map(|p| grant(p)).collect(),
            groups: Vec::new(),
            source: Vec::new(),
            ttl: None,
            asked: None,
            defs: defs(),
            reason: None,
        }
    }
    fn plan(&self) -> Result<CertPlan, IssueRefusal> {
        plan_user_cert(&PlanInput {
            user: "alice",
            held: &self.held,
            groups: &self.groups,
            idp_groups: &[],
            principals: &self.defs,
            source: &self.source,
            requested_ttl: self.ttl,
            requested_principals: self.asked.as_deref(),
            default_ttl: Duration::from_secs(5 * MIN),
            max_ttl: Duration::from_secs(60 * MIN),
            reason: self.reason.as_deref(),
            now: t0(),
        })
    }
}

#[test]
fn default_ttl_and_window() {
    let p = Case::new(&["ops"]).plan().unwrap();
    assert_eq!(p.key_id, "alice");
    assert_eq!(p.principals, ["ops"]);
    assert_eq!(p.ttl, Duration::from_secs(300));
    assert_eq!(p.capped_by, None);
    assert_eq!(p.valid_after, 1_800_000_000 - 60);
    assert_eq!(p.valid_before, 1_800_000_000 + 300);
    assert!(p.critical_options.is_empty());
}

#[test]
fn requested_ttl_is_capped_by_global_then_principal() {
    let mut c = Case::new(&["ops"]);
    c.ttl = Some(Duration::from_secs(3 * 3600));
    let p = c.plan().unwrap();
    assert_eq!(p.ttl, Duration::from_secs(3600));
    assert_eq!(p.asked_ttl, Duration::from_secs(3 * 3600));
    assert_eq!(p.capped_by, Some(TtlCap::Global));
    assert_eq!(p.valid_before, 1_800_000_000 + 3600);

    // The smallest max_ttl of the certificate's principals wins.
    let mut c = Case::new(&["ops", "web-deploy", "dba"]);
    c.ttl = Some(Duration::from_secs(30 * MIN));
    let p = c.plan().unwrap();
    assert_eq!(p.ttl, Duration::from_secs(10 * MIN));
    assert_eq!(p.capped_by, Some(TtlCap::Principal("dba".into())));

    // Asking for a subset without dba: web-deploy's 15m caps.
    c.asked = Some(vec!["web-deploy".into(), "ops".into()]);
    let p = c.plan().unwrap();
    assert_eq!(p.ttl, Duration::from_secs(15 * MIN));
    assert_eq!(p.capped_by, Some(TtlCap::Principal("web-deploy".into())));

    // Under every cap: not capped.
    c.ttl = Some(Duration::from_secs(2 * MIN));
    assert_eq!(c.plan().unwrap().capped_by, None);
}

#[test]
fn all_held_sorted_and_deduplicated() {
    let mut c = Case::new(&["web-deploy", "dba", "web-deploy"]);
    c.held.push(Grant {
        principal: "dba".into(),
        via: Via::User,
    });
    assert_eq!(c.plan().unwrap().principals, ["dba", "web-deploy"]);
}

#[test]
fn subset_request() {
    let mut c = Case::new(&["web-deploy", "dba", "ops"]);
    c.asked = Some(vec!["ops".into(), "dba".into(), "ops".into()]);
    assert_eq!(c.plan().unwrap().principals, ["dba", "ops"]);
}

#[test]
fn not_held_request_is_refused_not_dropped() {
    let mut c = Case::new(&["web-deploy"]);
    c.asked = Some(vec!["web-deploy".into(), "dba".into()]);
    let e = c.plan().unwrap_err();
    assert_eq!(e, IssueRefusal::PrincipalNotHeld("dba".into()));
    assert_eq!(e.status(), 403);
    c.asked = Some(vec![]);
    assert_eq!(c.plan().unwrap_err(), IssueRefusal::EmptyPrincipalList);
}

#[test]
fn no_principals_is_refused() {
    let e = Case::new(&[]).plan().unwrap_err();
    assert_eq!(e, IssueRefusal::NoPrincipals("alice".into()));
    assert_eq!(e.status(), 403);
    assert!(e.to_string().contains("ask an admin"), "{e}");
}

#[test]
fn bad_ttls() {
    let mut c = Case::new(&["ops"]);
    c.ttl = Some(Duration::ZERO);
    assert!(matches!(c.plan(), Err(IssueRefusal::InvalidTtl(_))));
    c.ttl = Some(Duration::from_millis(500));
    assert!(matches!(c.plan(), Err(IssueRefusal::InvalidTtl(_))));
    assert_eq!(parse_ttl("10m").unwrap(), Duration::from_secs(600));
    for bad in ["0s", "0", "soon", "", "-5m", "10"] {
        let e = parse_ttl(bad).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}");
    }
}

#[test]
fn extensions_union_and_groups() {
    let mut c = Case::new(&["web-deploy", "ops"]);
    c.groups = vec!["ops".into(), "admins".into(), "ops".into(), "a,b".into()];
    let p = c.plan().unwrap();
    let names: Vec<&str> = p.extensions.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "groups@drawbridge",
            "idp-groups@drawbridge",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty"
        ]
    );
    assert_eq!(p.extensions["groups@drawbridge"], "admins,ops");
    assert_eq!(p.omitted_groups, ["a,b"]);
    assert_eq!(p.extensions["permit-pty"], "");
}

#[test]
fn groups_extension_is_always_present() {
    let p = Case::new(&["dba"]).plan().unwrap();
    assert_eq!(
        p.extensions.get("groups@drawbridge").map(String::as_str),
        Some("")
    );
}

#[test]
fn source_address_from_policy() {
    let mut c = Case::new(&["dba"]);
    c.source = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let p = c.plan().unwrap();
    assert_eq!(
        p.critical_options["source-address"],
        "192.0.2.0/24,2001:db8::/32"
    );
    assert_eq!(p.critical_options.len(), 1);
}

#[test]
fn undefined_principal_is_an_internal_error() {
    let c = Case::new(&["ghost"]);
    assert_eq!(c.plan().unwrap_err().status(), 500);
}

#[test]
fn control_characters_in_user_are_refused() {
    let held = [grant("ops")];
    let d = defs();
    let e = plan_user_cert(&PlanInput {
        user: "alice\nroot",
        held: &held,
        groups: &[],
        idp_groups: &[],
        principals: &d,
        source: &[],
        requested_ttl: None,
        requested_principals: None,
        default_ttl: Duration::from_secs(300),
        max_ttl: Duration::from_secs(3600),
        reason: None,
        now: t0(),
    })
    .unwrap_err();
    assert_eq!(e, IssueRefusal::InvalidUser);
}

#[test]
fn from_a_policy() {
    use crate::policy::{Group, Policy, User};
    let policy = Policy {
        principals: defs(),
        groups: [(
            "ops".to_string(),
            Group {
                name: "ops".into(),
                members: vec!["alice".into()],
                principals: vec!["web-deploy".into()],
                origin: Origin::default(),
            },
        )]
        .into_iter()
        .collect(),
        users: [(
            "alice".to_string(),
            User {
                name: "alice".into(),
                principals: vec!["dba".into()],
                source: vec!["192.0.2.0/24".parse().unwrap()],
                origin: Origin::default(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let certs = crate::config::CertsConfig::default();
    let idp = vec!["oncall".to_string()];
    let p = plan_from_policy(
        &policy,
        "alice",
        &idp,
        &CertRequest::default(),
        &certs,
        &[],
        t0(),
    )
    .unwrap();
    assert_eq!(p.principals, ["dba", "web-deploy"]);
    assert_eq!(p.extensions["groups@drawbridge"], "oncall,ops");
    assert_eq!(p.extensions["idp-groups@drawbridge"], "oncall");
    assert_eq!(p.critical_options["source-address"], "192.0.2.0/24");
    let egress: Vec<IpNet> = vec!["10.9.0.5/32".parse().unwrap()];
    let p = plan_from_policy(
        &policy,
        "alice",
        &[],
        &CertRequest::default(),
        &certs,
        &egress,
        t0(),
    )
    .unwrap();
    assert_eq!(
        p.critical_options["source-address"],
        "192.0.2.0/24,10.9.0.5/32"
    );
    assert_eq!(p.extensions["idp-groups@drawbridge"], "");
    let asked = vec!["ops".to_string()];
    let e = plan_from_policy(
        &policy,
        "alice",
        &[],
        &CertRequest {
            principals: Some(&asked),
            ..Default::default()
        },
        &certs,
        &[],
        t0(),
    )
    .unwrap_err();
    assert_eq!(e, IssueRefusal::PrincipalNotHeld("ops".into()));
    let e = plan_from_policy(
        &policy,
        "nobody",
        &[],
        &CertRequest::default(),
        &certs,
        &[],
        t0(),
    )
    .unwrap_err();
    assert_eq!(e, IssueRefusal::NoPrincipals("nobody".into()));
}

fn temporary(p: &str, until_from_t0: u64, reason: &str) -> Grant {
    Grant {
        principal: p.into(),
        via: Via::Temporary {
            until: t0() + Duration::from_secs(until_from_t0),
            reason: reason.into(),
        },
    }
}

#[test]
fn a_temporary_grant_caps_valid_before_at_its_until() {
    // ops (no max_ttl) held only through a grant ending in 7 minutes: 20m asked.
    let mut c = Case::new(&[]);
    c.held = vec![temporary("ops", 7 * MIN, "INC-1")];
    c.ttl = Some(Duration::from_secs(20 * MIN));
    let p = c.plan().unwrap();
    assert_eq!(p.valid_before, 1_800_000_000 + 7 * MIN);
    assert_eq!(p.ttl, Duration::from_secs(7 * MIN));
    let cap = p.capped_by.unwrap();
    assert_eq!(
        cap,
        TtlCap::Temporary {
            principal: "ops".into(),
            until: t0() + Duration::from_secs(7 * MIN),
            reason: "INC-1".into()
        }
    );
    assert_eq!(
        cap.to_string(),
        "temporary grant of ops until 2027-01-15T08:07:00Z (INC-1)"
    );

    // Two grants of one principal: the later one counts. Two principals held only
    // temporarily: the earlier end counts.
    c.held = vec![
        temporary("ops", 7 * MIN, "INC-1"),
        temporary("ops", 12 * MIN, "INC-2"),
        temporary("dba", 9 * MIN, "INC-3"),
    ];
    let p = c.plan().unwrap();
    assert_eq!(p.valid_before, 1_800_000_000 + 9 * MIN);
    assert!(
        matches!(p.capped_by, Some(TtlCap::Temporary { ref principal, .. }) if principal == "dba")
    );

    // Asking without dba: ops's later grant.
    c.asked = Some(vec!["ops".into()]);
    assert_eq!(c.plan().unwrap().valid_before, 1_800_000_000 + 12 * MIN);

    // A grant ending after the asked end does not cap.
    c.ttl = Some(Duration::from_secs(3 * MIN));
    let p = c.plan().unwrap();
    assert_eq!(p.valid_before, 1_800_000_000 + 3 * MIN);
    assert_eq!(p.capped_by, None);
}

#[test]
fn a_principal_also_held_permanently_is_not_capped_by_its_grant() {
    let mut c = Case::new(&["ops"]);
    c.held.push(temporary("ops", 2 * MIN, "INC-1"));
    c.ttl = Some(Duration::from_secs(20 * MIN));
    let p = c.plan().unwrap();
    assert_eq!(p.valid_before, 1_800_000_000 + 20 * MIN);
    assert_eq!(p.capped_by, None);
}

#[test]
fn a_grant_ending_within_the_second_is_refused() {
    let mut c = Case::new(&[]);
    c.held = vec![temporary("ops", 0, "INC-1")];
    let e = c.plan().unwrap_err();
    assert_eq!(e, IssueRefusal::GrantEnding("ops".into()));
    assert_eq!(e.status(), 403);
}

#[test]
fn require_reason_and_the_reason_extension() {
    let mut c = Case::new(&["ops", "dba"]);
    c.defs.get_mut("dba").unwrap().require_reason = true;
    let e = c.plan().unwrap_err();
    assert_eq!(e, IssueRefusal::ReasonRequired(vec!["dba".into()]));
    assert_eq!(e.status(), 400);
    assert_eq!(e.code(), "reason_required");
    assert!(
        e.to_string().starts_with("role dba requires a reason"),
        "{e}"
    );

    // Without the role that requires it: no reason needed, none in the cert.
    c.asked = Some(vec!["ops".into()]);
    let p = c.plan().unwrap();
    assert!(!p.extensions.contains_key(REASON_EXTENSION));

    // A reason given is carried whether required or not.
    c.reason = Some("INC-4711: disk full".into());
    assert_eq!(
        c.plan().unwrap().extensions[REASON_EXTENSION],
        "INC-4711: disk full"
    );
    c.asked = None;
    assert_eq!(
        c.plan().unwrap().extensions[REASON_EXTENSION],
        "INC-4711: disk full"
    );

    for bad in [
        "".to_string(),
        "   ".to_string(),
        "x".repeat(MAX_REASON + 1),
        "line\nbreak".to_string(),
        "esc\u{1b}[2J".to_string(),
        "bidi\u{202e}txt".to_string(),
    ] {
        c.reason = Some(bad.clone());
        let e = c.plan().unwrap_err();
        assert_eq!(e.code(), "bad_reason", "{bad:?}");
        assert_eq!(e.status(), 400);
    }
    c.reason = Some("x".repeat(MAX_REASON));
    assert!(c.plan().is_ok());
}

#[test]
fn revoked_key_id_or_key_gets_nothing() {
    let policy = crate::policy::Policy::from_toml(
        "policies/revoked.toml",
        r#"
[hosts.web-1]
address = "10.0.0.1"
[principals.ops]
hosts = "*"
logins = ["deploy"]
[users.alice]
principals = ["ops"]
[users.mallory]
principals = ["ops"]

[[revoked]]
serial = 77
key_id = "mallory"

[[revoked]]
key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
"#,
    )
    .unwrap();
    let certs = crate::config::CertsConfig::default();
    let plan = |user: &str, fp: &str| {
        plan_from_policy(
            &policy,
            user,
            &[],
            &CertRequest {
                key_fingerprint: fp,
                ..Default::default()
            },
            &certs,
            &[],
            t0(),
        )
    };
    let other = "SHA256:AAAAQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    assert!(plan("alice", other).is_ok());
    let e = plan("mallory", other).unwrap_err();
    assert_eq!(
        e,
        IssueRefusal::Revoked {
            by: RevokedBy::KeyId,
            entry: "policies/revoked.toml:12:1".into()
        }
    );
    assert_eq!((e.status(), e.code().as_str()), (403, "revoked"));
    assert_eq!(e.rule("alice"), "[[revoked]] at policies/revoked.toml:12:1");
    let e = plan(
        "alice",
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
    )
    .unwrap_err();
    assert_eq!(
        e,
        IssueRefusal::Revoked {
            by: RevokedBy::Key,
            entry: "policies/revoked.toml:16:1".into()
        }
    );
    assert!(e.to_string().contains("public key is revoked"), "{e}");
}

#[test]
fn principal_list_parsing() {
    assert_eq!(parse_principals(" a, b,,c "), ["a", "b", "c"]);
    assert!(parse_principals("").is_empty());
}
