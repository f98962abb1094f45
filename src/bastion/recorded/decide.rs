//! The decision inside a recorded host's channel, where the login is known: the
//! certificate all or nothing under the policy in force (as for any forward), then the
//! principals of it that grant both the host and the login asked for. Pure.

use std::time::SystemTime;

use crate::audit::RefusalCode;
use crate::bastion::forward::authorize;
use crate::bastion::verify::CertIdentity;
use crate::policy::{Held, Policy};

/// Why a login on a recorded host is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: RefusalCode,
    pub rule: String,
    pub message: String,
}

/// The principals of `id` that grant `login` on inventory host `host` (with how each is
/// held), in the certificate's order; never empty on success.
pub fn login(
    policy: &Policy,
    id: &CertIdentity,
    host: &str,
    login: &str,
    now: SystemTime,
) -> Result<Vec<Held>, Denial> {
    let port = policy
        .hosts
        .get(host)
        .map(|h| u32::from(h.port))
        .unwrap_or(22);
    let allowed = authorize(policy, id, host, port, now).map_err(|r| Denial {
        code: r.code,
        rule: r
            .rule
            .clone()
            .unwrap_or_else(|| format!("bastion.{}", r.code)),
        message: r.message,
    })?;
    let principals: Vec<Held> = allowed
        .grants
        .into_iter()
        .filter(|g| {
            policy
                .principals
                .get(&g.principal)
                .is_some_and(|p| p.logins.iter().any(|l| l == login))
        })
        .collect();
    if principals.is_empty() {
        let shown: String = crate::util::escape(login).chars().take(64).collect();
        return Err(Denial {
            code: RefusalCode::LoginNotGranted,
            rule: format!("policy: no principal of the certificate grants login {shown} on {host}"),
            message: format!("login {shown} on {host} is not granted to your certificate"),
        });
    }
    Ok(principals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy::from_toml(
            "p.toml",
            r#"
[hosts.db-1]
address = "10.0.0.1"
[principals.dba]
hosts = ["db-1"]
logins = ["postgres"]
[principals.ops]
hosts = "*"
logins = ["root"]
[users.alice]
principals = ["dba", "ops"]
[users.bob]
principals = ["dba"]
"#,
        )
        .unwrap()
    }

    fn id(key_id: &str, principals: &[&str], now: SystemTime) -> CertIdentity {
        CertIdentity {
            key_id: key_id.into(),
            serial: 7,
            principals: principals.iter().map(|p| p.to_string()).collect(),
            groups: vec![],
            idp_groups: vec![],
            valid_after: now - Duration::from_secs(60),
            valid_before: now + Duration::from_secs(600),
            ca_fingerprint: "SHA256:ca".into(),
            key_fingerprint: "SHA256:key".into(),
            reason: None,
        }
    }

    #[test]
    fn only_principals_granting_the_login_go_on() {
        let p = policy();
        let now = SystemTime::now();
        let a = id("alice", &["dba", "ops"], now);
        let names = |h: Vec<Held>| h.into_iter().map(|h| h.principal).collect::<Vec<_>>();
        assert_eq!(
            names(login(&p, &a, "db-1", "postgres", now).unwrap()),
            ["dba"]
        );
        assert_eq!(names(login(&p, &a, "db-1", "root", now).unwrap()), ["ops"]);
        let e = login(&p, &a, "db-1", "mallory", now).unwrap_err();
        assert_eq!(e.code, RefusalCode::LoginNotGranted);
    }

    #[test]
    fn all_or_nothing_as_for_forwards() {
        let p = policy();
        let now = SystemTime::now();
        // bob carries ops, which he no longer holds: nothing at all, not even postgres.
        let b = id("bob", &["dba", "ops"], now);
        let e = login(&p, &b, "db-1", "postgres", now).unwrap_err();
        assert_eq!(e.code, RefusalCode::Denied, "{e:?}");
        assert!(e.rule.contains("ops"), "{e:?}");
    }
}
