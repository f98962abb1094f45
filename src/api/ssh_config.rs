//! The ssh_config snippet of `GET /v1/ssh_config`: a `Host drawbridge` block for the
//! bastion and one block per reachable inventory host with `ProxyJump drawbridge`.
//!
//! Each target block keeps the inventory *name* as `HostName`, so the bastion receives
//! the name (never an address the client resolved) and the target's host certificate is
//! checked against that name.

use std::fmt::Write;

use crate::policy::Reach;

/// The alias of the bastion's block.
pub const BASTION_ALIAS: &str = "drawbridge";

/// Everything the snippet says.
#[derive(Debug, Clone)]
pub struct SnippetInput<'a> {
    pub user: &'a str,
    pub bastion_host: &'a str,
    pub bastion_port: u16,
    pub identity_file: &'a str,
    /// The hosts the caller may reach ([`crate::policy::Policy::reachable`]).
    pub hosts: &'a [Reach<'a>],
    pub generated_at: &'a str,
    /// The hosts among `hosts` where sessions are recorded (a comment in their block).
    pub recorded: &'a [&'a str],
}

/// Whether a value may stand in an ssh_config line as it is.
fn safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+' | '/' | '~' | ':')
        })
}

/// Checks an `identity_file` query value: a plain path (`~/.ssh/id_ed25519`), nothing that
/// could inject another ssh_config directive.
pub fn valid_identity_file(s: &str) -> bool {
    safe(s) && s.len() <= 4096
}

pub fn render(input: &SnippetInput<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# drawbridge ssh_config for {} (generated {}).\n\
         # Run drawbridge-login again to refresh the certificate and this file.",
        crate::util::escape(input.user),
        input.generated_at
    );
    let cert = format!("{}-cert.pub", input.identity_file);
    let common = |out: &mut String| {
        let _ = writeln!(out, "  IdentityFile {}", input.identity_file);
        let _ = writeln!(out, "  CertificateFile {cert}");
        let _ = writeln!(out, "  IdentitiesOnly yes");
    };
    let _ = writeln!(out, "\nHost {BASTION_ALIAS}");
    let _ = writeln!(out, "  HostName {}", input.bastion_host);
    let _ = writeln!(out, "  Port {}", input.bastion_port);
    if safe(input.user) {
        let _ = writeln!(out, "  User {}", input.user);
    }
    common(&mut out);
    for h in input.hosts {
        if !safe(h.host) {
            continue;
        }
        let _ = writeln!(out, "\nHost {}", h.host);
        if input.recorded.contains(&h.host) {
            let _ = writeln!(
                out,
                "  # sessions to {} are recorded by the bastion",
                h.host
            );
        }
        let _ = writeln!(out, "  HostName {}", h.host);
        let _ = writeln!(out, "  Port {}", h.port);
        let _ = writeln!(out, "  ProxyJump {BASTION_ALIAS}");
        let logins: Vec<&str> = h.logins.iter().copied().filter(|l| safe(l)).collect();
        match logins.as_slice() {
            [one] => {
                let _ = writeln!(out, "  User {one}");
            }
            [] => {}
            many => {
                let _ = writeln!(out, "  # logins: {}", many.join(", "));
            }
        }
        common(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bastion_and_targets() {
        let hosts = vec![
            Reach {
                host: "web-1",
                port: 22,
                logins: vec!["deploy"],
                principals: vec!["web"],
            },
            Reach {
                host: "db-1",
                port: 2200,
                logins: vec!["postgres", "root"],
                principals: vec!["dba"],
            },
        ];
        let s = render(&SnippetInput {
            user: "alice",
            bastion_host: "bastion.example.org",
            bastion_port: 2222,
            identity_file: "~/.ssh/id_ed25519",
            hosts: &hosts,
            generated_at: "2026-11-25T06:00:00Z",
            recorded: &[],
        });
        assert!(s.contains(
            "Host drawbridge\n  HostName bastion.example.org\n  Port 2222\n  User alice\n"
        ));
        assert!(s.contains(
            "Host web-1\n  HostName web-1\n  Port 22\n  ProxyJump drawbridge\n  User deploy\n"
        ));
        assert!(s.contains("Host db-1\n  HostName db-1\n  Port 2200\n  ProxyJump drawbridge\n  # logins: postgres, root\n"));
        assert!(s.contains("CertificateFile ~/.ssh/id_ed25519-cert.pub"));
    }

    #[test]
    fn refuses_injection_in_identity_file() {
        assert!(valid_identity_file("~/.ssh/id_ed25519"));
        assert!(!valid_identity_file("x\nProxyCommand evil"));
        assert!(!valid_identity_file("a b"));
        assert!(!valid_identity_file(""));
    }

    #[test]
    fn recorded_hosts_get_a_comment() {
        let hosts = vec![Reach {
            host: "db-1",
            port: 22,
            logins: vec!["root"],
            principals: vec!["dba"],
        }];
        let s = render(&SnippetInput {
            user: "alice",
            bastion_host: "bastion.example.org",
            bastion_port: 2222,
            identity_file: "~/.ssh/id_ed25519",
            hosts: &hosts,
            generated_at: "2026-11-25T06:00:00Z",
            recorded: &["db-1"],
        });
        assert!(
            s.contains(
                "Host db-1\n  # sessions to db-1 are recorded by the bastion\n  HostName db-1\n"
            ),
            "{s}"
        );
    }
}
