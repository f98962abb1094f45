//! Whether a certificate still stands under the policy in force: the rule the bastion
//! applies when a forward opens and again, live, to every open forward whenever the policy
//! in force changes.
//!
//! A certificate is all or nothing: the target's sshd honours every principal in it, and
//! the bastion cannot see which login the client will ask the target for. So a
//! certificate stands only when it is not revoked and its key id still holds **every**
//! principal it carries (through a user entry, a group, the identity provider's groups
//! the certificate names, or a temporary grant not yet ended), each, when the age is
//! given, within its `max_ttl`. Pure: the policy and the time are parameters.

use crate::audit::RefusalCode;
use std::time::{Duration, SystemTime};

use super::{Grant, Policy, Revoked, Temporary, Via};
use crate::util::{escape, format_duration, rfc3339};

/// What a certificate claims, as far as the policy is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Carried<'a> {
    /// The certificate's key id: whose policy entries count.
    pub key_id: &'a str,
    pub serial: u64,
    /// The SHA-256 fingerprint of the certificate's public key (`SHA256:...`), for
    /// `[[revoked]] key` entries; empty when unknown.
    pub key_fingerprint: &'a str,
    /// The principals (roles) the certificate carries.
    pub principals: &'a [String],
    /// Groups an identity provider asserted at issuance (counted on top of the policy's).
    pub idp_groups: &'a [String],
}

/// One principal of the certificate, with every way its holder holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub principal: String,
    /// Never empty.
    pub via: Vec<Via>,
}

/// Why a certificate no longer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost<'p> {
    /// A `[[revoked]]` entry names its serial, key id or public key.
    Revoked(&'p Revoked),
    /// The key id no longer holds this principal; `ended` is the temporary grant of it
    /// that ended, if any.
    NotHeld {
        principal: String,
        ended: Option<&'p Temporary>,
    },
    /// The certificate is older than this principal's `max_ttl` allows.
    TooOld {
        principal: String,
        max_ttl: Duration,
        age: Duration,
    },
}

impl Lost<'_> {
    /// A stable code for audit records and metrics.
    pub fn code(&self) -> RefusalCode {
        match self {
            Lost::Revoked(_) => RefusalCode::Revoked,
            Lost::NotHeld { .. } => RefusalCode::Denied,
            Lost::TooOld { .. } => RefusalCode::TtlExceeded,
        }
    }

    /// The principal that was lost, if a principal was.
    pub fn principal(&self) -> Option<&str> {
        match self {
            Lost::Revoked(_) => None,
            Lost::NotHeld { principal, .. } | Lost::TooOld { principal, .. } => Some(principal),
        }
    }

    /// What the holder is told: names nothing but their own certificate.
    pub fn message(&self) -> String {
        match self {
            Lost::Revoked(_) => "your certificate is revoked".to_string(),
            Lost::NotHeld { principal, .. } => format!(
                "your certificate carries role {} that you no longer hold: get a new certificate",
                escape(principal)
            ),
            Lost::TooOld {
                principal,
                max_ttl,
                age,
            } => format!(
                "your certificate carries role {} that allows certificates up to {} old, and \
                 yours is {} old: get a new certificate",
                escape(principal),
                format_duration(*max_ttl),
                format_duration(Duration::from_secs(age.as_secs()))
            ),
        }
    }

    /// The rule that decided, for the audit log: the `[[revoked]]` entry, or the lost
    /// principal and why it is lost.
    pub fn rule(&self) -> String {
        match self {
            Lost::Revoked(r) => {
                let mut what = Vec::new();
                if let Some(s) = r.serial {
                    what.push(format!("serial {s}"));
                }
                if let Some(k) = &r.key_id {
                    what.push(format!("key_id \"{}\"", escape(k)));
                }
                if let Some(k) = &r.key {
                    what.push(format!("key {k}"));
                }
                let reason = r
                    .reason
                    .as_deref()
                    .map(|x| format!(": {}", escape(x)))
                    .unwrap_or_default();
                format!("[[revoked]] {} ({}{reason})", r.origin, what.join(", "))
            }
            Lost::NotHeld {
                principal,
                ended: Some(t),
            } => format!(
                "principal {} no longer held: the temporary grant at {} ({}) ended at {}",
                escape(principal),
                t.origin,
                escape(&t.reason),
                rfc3339(t.until)
            ),
            Lost::NotHeld {
                principal,
                ended: None,
            } => format!(
                "principal {} no longer held (no user entry, group or temporary grant gives it)",
                escape(principal)
            ),
            Lost::TooOld {
                principal,
                max_ttl,
                age,
            } => format!(
                "principal {} has max_ttl {}; the certificate is {} old",
                escape(principal),
                format_duration(*max_ttl),
                format_duration(Duration::from_secs(age.as_secs()))
            ),
        }
    }
}

impl Policy {
    /// Whether a certificate still stands at `now`: not revoked, and its key id holds
    /// every principal it carries; with `age` given (the certificate's age, checked when
    /// a forward opens but not on live ones), each within its `max_ttl`.
    ///
    /// On success, every principal of the certificate with how it is held, in the
    /// certificate's order. On failure, the first reason found: revocation first, then
    /// the first principal (in the certificate's order) not held, then the first too old.
    pub fn still_holds<'p>(
        &'p self,
        cert: &Carried<'_>,
        now: SystemTime,
        age: Option<Duration>,
    ) -> Result<Vec<Held>, Lost<'p>> {
        if let Some((r, _)) = self.revocation(Some(cert.serial), cert.key_id, cert.key_fingerprint)
        {
            return Err(Lost::Revoked(r));
        }
        let grants = self.held(cert.key_id, cert.idp_groups, now);
        let mut out: Vec<Held> = Vec::with_capacity(cert.principals.len());
        for p in cert.principals {
            let via: Vec<Via> = grants
                .iter()
                .filter(|g| &g.principal == p)
                .map(|g: &Grant| g.via.clone())
                .collect();
            if via.is_empty() {
                let ended = self
                    .expired_temporaries(cert.key_id, now)
                    .into_iter()
                    .filter(|t| &t.principal == p)
                    .max_by_key(|t| t.until);
                return Err(Lost::NotHeld {
                    principal: p.clone(),
                    ended,
                });
            }
            if !out.iter().any(|h| &h.principal == p) {
                out.push(Held {
                    principal: p.clone(),
                    via,
                });
            }
        }
        if let Some(age) = age {
            for h in &out {
                if let Some(max) = self.principals.get(&h.principal).and_then(|d| d.max_ttl)
                    && age > max
                {
                    return Err(Lost::TooOld {
                        principal: h.principal.clone(),
                        max_ttl: max,
                        age,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The earliest `until` of a temporary grant after `now`: when the policy in force
    /// next changes by itself.
    pub fn next_grant_end(&self, now: SystemTime) -> Option<SystemTime> {
        self.temporary
            .iter()
            .map(|t| t.until)
            .filter(|u| *u > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::UNIX_EPOCH;

    const POLICY: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
labels = { role = "web" }

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]

[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]
max_ttl = "10m"

[principals.dba]
hosts = "*"
logins = ["postgres"]

[groups.deployers]
members = ["alice"]
principals = ["web-deploy"]

[groups.admins]
members = ["carol"]
principals = ["web-admin"]

[groups.idp-admins]
members = []
principals = ["web-admin"]

[users.alice]
principals = ["web-admin"]

[[temporary]]
user = "bob"
principal = "dba"
until = "2026-12-01T00:00:00Z"
reason = "INC-1"

[[revoked]]
key_id = "mallory"
reason = "laptop lost"
"#;

    fn policy() -> Policy {
        Policy::from_toml("p.toml", POLICY).unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-12-01T00:00:00Z
    const UNTIL: u64 = 1_796_083_200;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn check<'p>(
        p: &'p Policy,
        key_id: &str,
        principals: &[&str],
        idp: &[&str],
        now: SystemTime,
        age: Option<Duration>,
    ) -> Result<Vec<Held>, Lost<'p>> {
        let principals = names(principals);
        let idp = names(idp);
        p.still_holds(
            &Carried {
                key_id,
                serial: 1,
                key_fingerprint: "",
                principals: &principals,
                idp_groups: &idp,
            },
            now,
            age,
        )
    }

    #[test]
    fn every_principal_must_be_held() {
        let p = policy();
        let now = t(UNTIL - 100);
        let held = check(&p, "alice", &["web-deploy", "web-admin"], &[], now, None).unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].via, vec![Via::Group("deployers".into())]);
        assert_eq!(held[1].via, vec![Via::User]);
        // carol holds web-admin only: a certificate also carrying web-deploy is lost.
        let e = check(&p, "carol", &["web-admin", "web-deploy"], &[], now, None).unwrap_err();
        assert_eq!(e.principal(), Some("web-deploy"));
        assert_eq!(e.code(), "denied");
        assert_eq!(
            e.message(),
            "your certificate carries role web-deploy that you no longer hold: get a new certificate"
        );
        // An identity provider's group counts.
        assert!(check(&p, "erin", &["web-admin"], &["idp-admins"], now, None).is_ok());
        assert!(check(&p, "erin", &["web-admin"], &[], now, None).is_err());
    }

    #[test]
    fn a_temporary_grant_holds_until_its_end() {
        let p = policy();
        let held = check(&p, "bob", &["dba"], &[], t(UNTIL - 1), None).unwrap();
        assert!(matches!(held[0].via[0], Via::Temporary { .. }));
        let e = check(&p, "bob", &["dba"], &[], t(UNTIL), None).unwrap_err();
        match &e {
            Lost::NotHeld {
                principal,
                ended: Some(t),
            } => {
                assert_eq!(principal, "dba");
                assert_eq!(t.reason, "INC-1");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.rule().contains("ended at 2026-12-01T00:00:00Z"),
            "{}",
            e.rule()
        );
        assert_eq!(p.next_grant_end(t(UNTIL - 1)), Some(t(UNTIL)));
        assert_eq!(p.next_grant_end(t(UNTIL)), None);
    }

    #[test]
    fn max_ttl_counts_only_when_the_age_is_given() {
        let p = policy();
        let now = t(UNTIL - 100);
        let old = Some(Duration::from_secs(11 * 60));
        let e = check(&p, "alice", &["web-deploy", "web-admin"], &[], now, old).unwrap_err();
        assert_eq!(e.code(), "ttl-exceeded");
        assert_eq!(e.principal(), Some("web-admin"));
        assert!(e.message().contains("up to 10m old"), "{}", e.message());
        assert!(check(&p, "alice", &["web-deploy", "web-admin"], &[], now, None).is_ok());
        let young = Some(Duration::from_secs(9 * 60));
        assert!(check(&p, "alice", &["web-deploy", "web-admin"], &[], now, young).is_ok());
    }

    #[test]
    fn revocation_comes_first_and_names_its_entry() {
        let p = policy();
        let e = check(&p, "mallory", &["dba"], &[], t(0), None).unwrap_err();
        assert_eq!(e.code(), "revoked");
        assert!(e.rule().starts_with("[[revoked]] p.toml:"), "{}", e.rule());
        assert!(
            e.rule().contains("key_id \"mallory\": laptop lost"),
            "{}",
            e.rule()
        );
    }
}
