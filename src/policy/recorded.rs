//! Which sessions are recorded: `record = true` on a host or on a principal.
//!
//! The bastion must choose at the `direct-tcpip` channel open whether to pipe the channel
//! or to answer it with its own SSH server (the recording path), and the login is not
//! known then: it travels inside the encrypted channel. So a principal "grants" a host
//! here whatever the login: a certificate holding a `record = true` principal that grants
//! the host is recorded on every session to that host, even one that logs in through
//! another of its principals. This records more, never less, than the role asks.

use super::{Host, Policy};

/// Why a session is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedBy<'p> {
    /// `[hosts.NAME] record = true`.
    Host(&'p Host),
    /// `[principals.NAME] record = true`, a principal that grants the host.
    Principal(&'p super::Principal),
}

impl RecordedBy<'_> {
    /// The policy rule that asks for the recording, e.g. `hosts.db-1.record` (for audit
    /// records and messages).
    pub fn rule(&self) -> String {
        match self {
            RecordedBy::Host(h) => format!("hosts.{}.record", h.name),
            RecordedBy::Principal(p) => format!("principals.{}.record", p.name),
        }
    }

    /// Where that rule is written (`file:line:column`).
    pub fn origin(&self) -> &super::Origin {
        match self {
            RecordedBy::Host(h) => &h.origin,
            RecordedBy::Principal(p) => &p.origin,
        }
    }
}

impl Policy {
    /// Whether a session to inventory host `host` is recorded for a caller holding
    /// `granting_principals` (a certificate's principals: those that do not grant the
    /// host, or that the policy does not define, are ignored). An unknown host is never
    /// recorded (it is never reached either).
    pub fn records(&self, host: &str, granting_principals: &[&str]) -> bool {
        self.recorded_by(host, granting_principals).is_some()
    }

    /// The rule that makes a session to `host` recorded: the host's own `record = true`
    /// first, else the first (by the order given) principal that grants the host and says
    /// `record = true`.
    pub fn recorded_by(&self, host: &str, granting_principals: &[&str]) -> Option<RecordedBy<'_>> {
        let h = self.hosts.get(host)?;
        if h.record {
            return Some(RecordedBy::Host(h));
        }
        granting_principals
            .iter()
            .filter_map(|name| self.principals.get(*name))
            .find(|p| p.record && self.grants_host(p, h))
            .map(RecordedBy::Principal)
    }

    /// Whether any session to `host` may be recorded: the host says so, or any principal
    /// that grants it does (for listings that do not know the caller's principals).
    pub fn may_record(&self, host: &str) -> bool {
        let Some(h) = self.hosts.get(host) else {
            return false;
        };
        h.record
            || self
                .principals
                .values()
                .any(|p| p.record && self.grants_host(p, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_toml(
            "p.toml",
            r#"
[hosts.db-1]
address = "10.20.1.21"
record = true
labels = { env = "prod" }
[hosts.web-1]
address = "10.20.0.11"
labels = { env = "prod" }
[hosts.dev-1]
address = "10.30.0.11"
labels = { env = "dev" }
[principals.prod-root]
hosts = { env = "prod" }
logins = ["root"]
record = true
[principals.web-deploy]
hosts = ["web-1", "dev-1"]
logins = ["deploy"]
[principals.dev-all]
hosts = "*"
logins = ["dev"]
record = false
"#,
        )
        .unwrap()
    }

    #[test]
    fn the_host_records_for_everyone() {
        let p = policy();
        assert!(p.records("db-1", &[]));
        assert!(p.records("db-1", &["web-deploy"]));
        assert_eq!(
            p.recorded_by("db-1", &["prod-root"]).map(|r| r.rule()),
            Some("hosts.db-1.record".to_string())
        );
    }

    #[test]
    fn a_recording_principal_records_the_hosts_it_grants_whatever_the_login() {
        let p = policy();
        assert!(!p.records("web-1", &["web-deploy"]));
        assert!(p.records("web-1", &["web-deploy", "prod-root"]));
        assert_eq!(
            p.recorded_by("web-1", &["web-deploy", "prod-root"])
                .map(|r| r.rule()),
            Some("principals.prod-root.record".to_string())
        );
        // prod-root does not grant dev-1: it does not make dev-1 recorded.
        assert!(!p.records("dev-1", &["prod-root", "web-deploy", "dev-all"]));
    }

    #[test]
    fn unknown_hosts_and_principals_record_nothing() {
        let p = policy();
        assert!(!p.records("nowhere", &["prod-root"]));
        assert!(!p.records("web-1", &["no-such-role"]));
    }

    #[test]
    fn may_record_looks_at_every_principal() {
        let p = policy();
        assert!(p.may_record("db-1"));
        assert!(p.may_record("web-1"));
        assert!(!p.may_record("dev-1"));
        assert!(!p.may_record("nowhere"));
    }

    #[test]
    fn record_must_be_a_boolean_with_its_position() {
        let e = Policy::from_toml(
            "p.toml",
            "[hosts.db-1]\naddress = \"10.0.0.1\"\nrecord = \"yes\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.toml:3:") && e.contains("record must be true or false"),
            "{e}"
        );
        let e = Policy::from_toml(
            "p.toml",
            "[principals.r]\nhosts = \"*\"\nlogins = [\"x\"]\nrecord = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.toml:4:") && e.contains("record must be true or false"),
            "{e}"
        );
    }
}
