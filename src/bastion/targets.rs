//! Which inventory host a `direct-tcpip` request names, and which hosts a certificate may
//! reach now (for the `hosts` command).
//!
//! `reachable` is `Policy::reachable` within the certificate's own principals (a
//! certificate may carry a subset of what its holder holds).
//!
//! Rule (docs/threats.md T15–T17, T44): the requested host must be exactly
//! an inventory name or exactly an inventory address. No case folding, no trailing dot, no
//! DNS, no numeric IPv4 variants: anything else is "not in the inventory". The port must be
//! the host's port, or 22 (what `ssh -J bastion web-1` sends when the client does not know
//! the host's port), and the bastion always dials the inventory address and port.
//!
//! Refusals reveal nothing about hosts the caller may not reach: [`resolve_for`] decides
//! whether the caller may reach the host before it chooses the text. A host outside the
//! inventory and an inventory host the caller has no grant for get the same words; the
//! address a host shares with others, the port of a host, and spelling hints are told
//! only about hosts the caller may reach. The audit record keeps the whole truth.

use crate::audit::RefusalCode;
use crate::policy::{Host, Policy, Unresolved, eval::wrong_port};
use crate::util::escape;

/// The inventory entry a `direct-tcpip` request names, or why none does
/// ([`Policy::resolve_target`], with the SSH wire's 32-bit port checked first).
pub fn resolve_target<'p>(policy: &'p Policy, host: &str, port: u32) -> Result<&'p Host, String> {
    let Ok(port) = u16::try_from(port) else {
        return Err(format!("port {port} is not a TCP port"));
    };
    policy.resolve_target(host, port)
}

/// Why a request names no host the caller may reach: what they are told, and what the
/// audit log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRefusal {
    /// `unknown-host` (nothing in the inventory answers the request) or `denied` (an
    /// inventory host the caller may not reach).
    pub code: RefusalCode,
    /// For the caller: names no host they may not reach.
    pub message: String,
    /// For the audit log: the inventory host concerned, when there is one.
    pub detail: Option<String>,
}

/// The words for a host the caller may not reach, whether it is in the inventory or not.
pub fn not_reachable(requested: &str) -> String {
    format!(
        "host \"{}\" is not in the inventory or not granted to you \
         (the bastion's `hosts` command lists the hosts you may reach)",
        escape(requested)
    )
}

/// A request refused for its form alone, whatever the inventory and the caller: a port
/// that is not a TCP port, an empty host name, control characters. Checked first; the
/// text names nothing but the request.
pub fn malformed(host: &str, port: u32) -> Option<TargetRefusal> {
    let message = if u16::try_from(port).is_err() {
        format!("port {port} is not a TCP port")
    } else if host.is_empty() {
        "empty host name refused".to_string()
    } else if host.chars().any(|c| c.is_control()) {
        format!(
            "host \"{}\" refused: control characters in the host name",
            escape(host)
        )
    } else {
        return None;
    };
    Some(TargetRefusal {
        code: RefusalCode::UnknownHost,
        message,
        detail: None,
    })
}

/// [`resolve_target`] for one caller: `may_reach` says whether the caller may reach an
/// inventory host, and decides what the refusal may say.
pub fn resolve_for<'p>(
    policy: &'p Policy,
    host: &str,
    port: u32,
    may_reach: &dyn Fn(&Host) -> bool,
) -> Result<&'p Host, TargetRefusal> {
    let Ok(port) = u16::try_from(port) else {
        return Err(TargetRefusal {
            code: RefusalCode::UnknownHost,
            message: format!("port {port} is not a TCP port"),
            detail: None,
        });
    };
    let denied = |h: &Host| TargetRefusal {
        code: RefusalCode::Denied,
        message: not_reachable(host),
        detail: Some(format!(
            "inventory host {}: no principal of the certificate grants it",
            h.name
        )),
    };
    match policy.locate(host, port) {
        Ok(h) if may_reach(h) => Ok(h),
        Ok(h) => Err(denied(h)),
        Err(Unresolved::WrongPort(h)) if may_reach(h) => Err(TargetRefusal {
            code: RefusalCode::UnknownHost,
            message: wrong_port(h, port),
            detail: None,
        }),
        Err(Unresolved::WrongPort(h)) => Err(denied(h)),
        Err(Unresolved::SharedAddress(candidates)) => {
            let all: Vec<&str> = candidates.iter().map(|h| h.name.as_str()).collect();
            let yours: Vec<&str> = candidates
                .iter()
                .filter(|h| may_reach(h))
                .map(|h| h.name.as_str())
                .collect();
            let detail = Some(format!(
                "address shared by the inventory hosts {}",
                all.join(", ")
            ));
            if yours.is_empty() {
                return Err(TargetRefusal {
                    code: RefusalCode::Denied,
                    message: not_reachable(host),
                    detail,
                });
            }
            Err(TargetRefusal {
                code: RefusalCode::UnknownHost,
                message: format!(
                    "address \"{}\" is not forwarded by address; connect by host name: {}",
                    escape(host),
                    yours.join(", ")
                ),
                detail,
            })
        }
        Err(Unresolved::NotFound) => Err(TargetRefusal {
            code: RefusalCode::UnknownHost,
            message: policy
                .spelling_hint(host, may_reach)
                .unwrap_or_else(|| not_reachable(host)),
            detail: None,
        }),
    }
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
                record: false,
                host_key: None,
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

    /// Refusals for hosts the caller may not reach hold no inventory name, address or
    /// port, and read the same as for a host outside the inventory.
    #[test]
    fn refusals_reveal_nothing_beyond_the_callers_reach() {
        let p = policy();
        let only_a = |h: &Host| h.name == "a";
        let nobody = |_: &Host| false;
        let unknown = resolve_for(&p, "nowhere", 22, &nobody).unwrap_err();
        for (req, port, reach) in [
            ("web-1", 22u32, &nobody as &dyn Fn(&Host) -> bool),
            ("db-1", 2223, &nobody),
            ("10.20.0.11", 22, &nobody),
            ("127.0.0.1", 22, &nobody),
            ("127.0.0.1", 2202, &only_a),
            ("WEB-1", 22, &only_a),
            ("web-1.", 22, &only_a),
            ("10.20.0.11.", 22, &only_a),
            ("DB-1", 22, &nobody),
        ] {
            let e = resolve_for(&p, req, port, reach).unwrap_err();
            let m = &e.message;
            for secret in [
                "web-1",
                "db-1",
                "10.20.0.11",
                "10.20.0.12",
                "2222",
                "shared",
                "\"b\"",
            ] {
                if !req.contains(secret) {
                    assert!(!m.contains(secret), "{req}:{port}: {m:?} names {secret}");
                }
            }
            assert_eq!(*m, not_reachable(req), "{req}:{port}");
            let _ = &unknown;
        }
        assert_eq!(unknown.message, not_reachable("nowhere"));
        // For a host the caller may reach: the port, the hint, the name to use.
        let all = |_: &Host| true;
        let e = resolve_for(&p, "db-1", 2223, &all).unwrap_err();
        assert!(e.message.contains("inventory port 2222"), "{e:?}");
        let e = resolve_for(&p, "WEB-1", 22, &all).unwrap_err();
        assert!(e.message.contains("write \"web-1\""), "{e:?}");
        let e = resolve_for(&p, "127.0.0.1", 22, &only_a).unwrap_err();
        assert!(e.message.ends_with("connect by host name: a"), "{e:?}");
        assert!(
            e.detail.as_deref().is_some_and(|d| d.contains("a, b")),
            "{e:?}"
        );
        assert_eq!(
            resolve_for(&p, "127.0.0.1", 2201, &only_a).unwrap().name,
            "a"
        );
    }

    #[test]
    fn messages_escape_the_requested_name() {
        let e = resolve_target(&policy(), "x\n\u{1b}[31m", 22).unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
    }
}
