//! Which inventory host a `direct-tcpip` request names, and which hosts a certificate may
//! reach now (for the `hosts` command).
//!
//! `reachable` differs from `Policy::reachable` in one way: only the certificate's own
//! principals count (a certificate may carry a subset of what its holder holds).
//!
//! Rule (DESIGN, the bastion's rules; THREATS row 16): the requested host must be exactly
//! an inventory name or exactly an inventory address. No case folding, no trailing dot, no
//! DNS, no numeric IPv4 variants: anything else is "not in the inventory". The port must be
//! the host's port, or 22 (what `ssh -J bastion web-1` sends when the client does not know
//! the host's port), and the bastion always dials the inventory address and port.

use std::time::SystemTime;

use crate::policy::{Decision, Host, Policy, Query};

/// The inventory entry a `direct-tcpip` request names, or why none does
/// ([`Policy::resolve_target`], with the SSH wire's 32-bit port checked first).
pub fn resolve_target<'p>(policy: &'p Policy, host: &str, port: u32) -> Result<&'p Host, String> {
    let Ok(port) = u16::try_from(port) else {
        return Err(format!("port {port} is not a TCP port"));
    };
    policy.resolve_target(host, port)
}

/// One host a certificate may reach now, with the logins its principals allow there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    pub host: String,
    pub logins: Vec<String>,
    pub principals: Vec<String>,
}

/// The inventory hosts the holder of `principals` (identity `user`, extra `groups`) may
/// reach at `now` under `policy`, with logins. Pure.
pub fn reachable(
    policy: &Policy,
    user: &str,
    groups: &[String],
    principals: &[String],
    now: SystemTime,
) -> Vec<Reachable> {
    let mut out = Vec::new();
    for name in policy.hosts.keys() {
        let mut logins: Vec<String> = Vec::new();
        let mut granted: Vec<String> = Vec::new();
        for p in principals {
            let within = std::slice::from_ref(p);
            let q = Query {
                user,
                extra_groups: groups,
                host: name,
                login: None,
                within: Some(within),
                now,
            };
            if let Decision::Allow { grant } = policy.decide(&q) {
                if let Some(def) = policy.principals.get(&grant.principal) {
                    for l in &def.logins {
                        if !logins.contains(l) {
                            logins.push(l.clone());
                        }
                    }
                }
                if !granted.contains(&grant.principal) {
                    granted.push(grant.principal);
                }
            }
        }
        if !granted.is_empty() {
            logins.sort();
            out.push(Reachable {
                host: name.clone(),
                logins,
                principals: granted,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::Origin;

    fn host(name: &str, address: &str, port: u16) -> (String, Host) {
        (
            name.to_string(),
            Host {
                name: name.to_string(),
                address: address.to_string(),
                port,
                labels: Default::default(),
                origin: Origin::default(),
            },
        )
    }

    fn policy() -> Policy {
        Policy {
            hosts: [
                host("web-1", "10.20.0.11", 22),
                host("db-1", "10.20.0.12", 2222),
                host("a", "127.0.0.1", 2201),
                host("b", "127.0.0.1", 2202),
            ]
            .into_iter()
            .collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn exact_names_and_addresses_only() {
        let p = policy();
        assert_eq!(resolve_target(&p, "web-1", 22).unwrap().name, "web-1");
        assert_eq!(resolve_target(&p, "10.20.0.11", 22).unwrap().name, "web-1");
        assert_eq!(resolve_target(&p, "db-1", 22).unwrap().name, "db-1");
        assert_eq!(resolve_target(&p, "db-1", 2222).unwrap().name, "db-1");
        assert!(resolve_target(&p, "db-1", 2223).is_err());
        assert!(resolve_target(&p, "web-1", 80).is_err());
        for alias in [
            "WEB-1",
            "web-1.",
            "web-1 ",
            "",
            "10.20.0.011",
            "167772171",
            "0x0a14000b",
            "::ffff:10.20.0.11",
            "169.254.169.254",
            "localhost",
            "web-1\0",
        ] {
            assert!(resolve_target(&p, alias, 22).is_err(), "{alias:?}");
        }
        assert!(resolve_target(&p, "web-1", 65536 + 22).is_err());
    }

    #[test]
    fn shared_addresses_need_the_exact_port() {
        let p = policy();
        assert_eq!(resolve_target(&p, "127.0.0.1", 2202).unwrap().name, "b");
        assert!(resolve_target(&p, "127.0.0.1", 22).is_err());
        assert_eq!(resolve_target(&p, "a", 22).unwrap().name, "a");
    }

    #[test]
    fn messages_escape_the_requested_name() {
        let e = resolve_target(&policy(), "x\n\u{1b}[31m", 22).unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
    }
}
