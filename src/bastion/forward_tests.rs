#![allow(clippy::unwrap_used)]

use super::*;
use crate::bastion::test_support::{UNTIL, at, cert};

const POLICY: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
labels = { role = "web" }
[hosts.web-2]
address = "10.0.0.2:2222"
labels = { role = "web" }
[hosts.db-1]
address = "10.0.0.3"
labels = { role = "db" }
[hosts.echo-1]
address = "10.0.0.1:7"

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]
[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]
[principals.short]
hosts = ["web-1"]
logins = ["root"]
max_ttl = "1m"
[principals.dba]
hosts = ["db-1"]
logins = ["postgres"]

[groups.deployers]
members = ["alice", "carol"]
principals = ["web-deploy"]
[groups.ops]
members = ["carol"]
principals = ["web-admin"]
[groups.idp-ops]
members = []
principals = ["web-admin"]
[users.dave]
principals = ["short", "web-deploy"]

[[temporary]]
user = "bob"
principal = "dba"
until = "2026-12-01T00:00:00Z"
reason = "INC-4711"

[[revoked]]
serial = 666
"#;

enum Want {
    /// Allowed to this target, granted by these principals.
    Allow(&'static str, &'static [&'static str]),
    /// Refused with this code, and a message equal to (`=`) or containing the text.
    Refuse(&'static str, &'static str),
}
use Want::*;

#[test]
fn authorize_table() {
    let p = Policy::from_toml("p.toml", POLICY).unwrap();
    let t0 = UNTIL - 3600;
    let lost = |role: &str| {
        format!(
            "=your certificate carries role {role} that you no longer hold: get a new certificate"
        )
    };
    let lost_admin = lost("web-admin");
    let lost_dba = lost("dba");
    #[rustfmt::skip]
        let cases: Vec<(&str, CertIdentity, &str, u32, u64, Want)> = vec![
            ("every role held, both grant the host",
             cert("carol", &["web-deploy", "web-admin"], &[], 1, t0), "web-1", 22, t0 + 10,
             Allow("web-1", &["web-deploy", "web-admin"])),
            ("every role held, one grants the host",
             cert("carol", &["web-deploy", "web-admin"], &[], 1, t0), "web-2", 22, t0 + 10,
             Allow("web-2", &["web-admin"])),
            ("a role lost from a group, another still grants the host",
             cert("alice", &["web-deploy", "web-admin"], &[], 1, t0), "web-1", 22, t0 + 10,
             Refuse("denied", Box::leak(lost_admin.clone().into_boxed_str()))),
            ("a role held through the identity provider's group",
             cert("alice", &["web-deploy", "web-admin"], &["idp-ops"], 1, t0), "web-1", 22, t0 + 10,
             Allow("web-1", &["web-deploy", "web-admin"])),
            ("a temporary grant before its until",
             cert("bob", &["dba"], &[], 1, t0), "db-1", 22, UNTIL - 1,
             Allow("db-1", &["dba"])),
            ("a temporary grant at its until",
             cert("bob", &["dba"], &[], 1, t0), "db-1", 22, UNTIL,
             Refuse("denied", Box::leak(lost_dba.clone().into_boxed_str()))),
            ("a role past its max_ttl, another grants the host",
             cert("dave", &["short", "web-deploy"], &[], 1, t0), "web-1", 22, t0 + 120,
             Refuse("ttl-exceeded", "carries role short that allows certificates up to 1m old")),
            ("within max_ttl",
             cert("dave", &["short", "web-deploy"], &[], 1, t0), "web-1", 22, t0 + 30,
             Allow("web-1", &["short", "web-deploy"])),
            ("revoked by serial",
             cert("carol", &["web-admin"], &[], 666, t0), "web-1", 22, t0 + 10,
             Refuse("revoked", "=your certificate is revoked")),
            ("expired",
             cert("carol", &["web-admin"], &[], 1, t0), "web-1", 22, t0 + 3600,
             Refuse("cert-expired", "has expired")),
            ("a host no role grants: said as for an unknown host",
             cert("carol", &["web-admin"], &[], 1, t0), "db-1", 22, t0 + 10,
             Refuse("denied", "=host \"db-1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("not in the inventory",
             cert("carol", &["web-admin"], &[], 1, t0), "db-9", 22, t0 + 10,
             Refuse("unknown-host", "=host \"db-9\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("a shared address: only the caller's hosts are named",
             cert("carol", &["web-deploy"], &[], 1, t0), "10.0.0.1", 23, t0 + 10,
             Refuse("unknown-host", "=address \"10.0.0.1\" is not forwarded by address; connect by host name: web-1")),
            ("a shared address, exact port of a host not granted",
             cert("carol", &["web-deploy"], &[], 1, t0), "10.0.0.1", 7, t0 + 10,
             Refuse("denied", "=host \"10.0.0.1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("by exact address",
             cert("carol", &["web-admin"], &[], 1, t0), "10.0.0.2", 2222, t0 + 10,
             Allow("web-2", &["web-admin"])),
            ("another port of a reachable host: its port is told",
             cert("carol", &["web-admin"], &[], 1, t0), "web-2", 80, t0 + 10,
             Refuse("unknown-host", "only its inventory port 2222 (or 22)")),
            ("another port of an unreachable host: nothing is told",
             cert("carol", &["web-deploy"], &[], 1, t0), "web-2", 80, t0 + 10,
             Refuse("denied", "=host \"web-2\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
            ("a spelling hint for a reachable host",
             cert("carol", &["web-admin"], &[], 1, t0), "WEB-1", 22, t0 + 10,
             Refuse("unknown-host", "write \"web-1\"")),
            ("control characters are refused first, whatever the certificate",
             cert("alice", &["web-deploy", "web-admin"], &[], 1, t0), "web-1\n", 22, t0 + 10,
             Refuse("unknown-host", "control characters in the host name")),
            ("no spelling hint for an unreachable host",
             cert("carol", &["web-admin"], &[], 1, t0), "DB-1", 22, t0 + 10,
             Refuse("unknown-host", "=host \"DB-1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)")),
        ];
    for (name, id, host, port, now, want) in cases {
        let got = authorize(&p, &id, host, port, at(now));
        match (want, got) {
            (Allow(target, principals), Ok(a)) => {
                assert_eq!(a.target.name, target, "{name}");
                let names: Vec<&str> = a.grants.iter().map(|g| g.principal.as_str()).collect();
                assert_eq!(names, principals, "{name}");
            }
            (Refuse(code, text), Err(r)) => {
                assert_eq!(r.code, code, "{name}: {r:?}");
                match text.strip_prefix('=') {
                    Some(exact) => assert_eq!(r.message, exact, "{name}"),
                    None => assert!(r.message.contains(text), "{name}: {r:?}"),
                }
                for secret in ["echo-1", "10.0.0.3", "10.0.0.2"] {
                    assert!(!r.message.contains(secret), "{name}: {r:?}");
                }
            }
            (Allow(..), Err(r)) => panic!("{name}: refused {r:?}"),
            (Refuse(..), Ok(a)) => panic!("{name}: allowed {a:?}"),
        }
    }
}

#[test]
fn refusals_name_the_rule_for_the_audit_log() {
    let p = Policy::from_toml("p.toml", POLICY).unwrap();
    let t0 = UNTIL - 3600;
    let r = authorize(
        &p,
        &cert("alice", &["web-deploy", "web-admin"], &[], 1, t0),
        "web-1",
        22,
        at(t0),
    )
    .unwrap_err();
    assert_eq!(r.lost_principal.as_deref(), Some("web-admin"));
    assert!(
        r.rule
            .as_deref()
            .is_some_and(|x| x.contains("web-admin no longer held")),
        "{r:?}"
    );
    let r = authorize(
        &p,
        &cert("carol", &["web-admin"], &[], 666, t0),
        "web-1",
        22,
        at(t0),
    )
    .unwrap_err();
    assert!(
        r.rule
            .as_deref()
            .is_some_and(|x| x.starts_with("[[revoked]] p.toml:")),
        "{r:?}"
    );
    let r = authorize(
        &p,
        &cert("carol", &["web-deploy"], &[], 1, t0),
        "10.0.0.1",
        23,
        at(t0),
    )
    .unwrap_err();
    assert!(
        r.detail.as_deref().is_some_and(|d| d.contains("echo-1")),
        "{r:?}"
    );
}

/// A writer that takes at most `max` bytes per write, and only from the first buffer (the
/// default `poll_write_vectored`): short writes in the middle of a buffer.
struct Trickle {
    out: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_batch_reaches_the_target_whole_and_in_order_through_short_writes() {
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(b"hello"),
        Bytes::new(),
        Bytes::from_static(b", world, "),
        Bytes::from(vec![7u8; 100]),
    ];
    let want: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    for max in [1, 3, 5, 64, 1000] {
        let mut w = Trickle {
            out: Vec::new(),
            max,
        };
        let mut batch = parts.clone();
        write_all_batch(&mut w, &mut batch).await.unwrap();
        assert_eq!(w.out, want, "writes of at most {max} bytes");
    }
}
