//! Unit tests of the policy keys issuance reads: `require_reason`, `[[revoked]] key`,
//! reserved extension names, and host names that parse as IP addresses.
#![allow(clippy::unwrap_used)]

use super::*;

fn errors(text: &str) -> Vec<String> {
    match Policy::from_toml("policies/p.toml", text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const BASE: &str = r#"[hosts.web-1]
address = "10.0.0.1"
[principals.ops]
hosts = "*"
logins = ["deploy"]
"#;

#[test]
fn require_reason_is_a_boolean() {
    let p = Policy::from_toml(
        "p.toml",
        &format!(
            "{BASE}[principals.root]\nhosts = \"*\"\nlogins = [\"root\"]\nrequire_reason = true\n"
        ),
    )
    .unwrap();
    assert!(p.principals["root"].require_reason);
    assert!(!p.principals["ops"].require_reason);
    let e = errors(&format!(
        "{BASE}[principals.root]\nhosts = \"*\"\nlogins = [\"root\"]\nrequire_reason = \"yes\"\n"
    ));
    assert_eq!(
        e,
        ["policies/p.toml:9:18: require_reason must be true or false, not a string"]
    );
    // A typo is still an unknown key.
    let e = errors(&format!(
        "{BASE}[principals.root]\nhosts = \"*\"\nlogins = [\"root\"]\nrequire_reasons = true\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("unknown key \"require_reasons\""), "{e:?}");
}

#[test]
fn drawbridge_extensions_are_reserved() {
    // Every name the issuer writes, and any other name of ours yet to come.
    let ours = crate::issuer::cert_fields::RESERVED_EXTENSIONS;
    for ext in ours.iter().copied().chain(["session@drawbridge"]) {
        let e = errors(&format!(
            "{BASE}[principals.x]\nhosts = \"*\"\nlogins = [\"x\"]\nextensions = [\"{ext}\"]\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("policies/p.toml:9:15: ")
                && e[0].contains(&format!("{ext} is set by drawbridge itself"))
                && e[0].contains(
                    "(reserved: groups@drawbridge, idp-groups@drawbridge, reason@drawbridge \
                     and every name ending in @drawbridge)"
                ),
            "{e:?}"
        );
    }
    assert!(
        errors(&format!(
            "{BASE}[principals.x]\nhosts = \"*\"\nlogins = [\"x\"]\nextensions = [\"login@example.org\"]\n"
        ))
        .is_empty()
    );
}

#[test]
fn revoked_key_as_a_line_or_a_fingerprint() {
    const LINE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHR3AVRDyQeLDGsfzVQK8m+Dtt+9wsDV6pFQ1MqgcE8o lost@laptop";
    let fp = super::revoked_key_fingerprint(LINE).unwrap();
    assert!(fp.starts_with("SHA256:") && fp.len() == 50, "{fp}");
    let p = Policy::from_toml(
        "p.toml",
        &format!(
            "{BASE}[[revoked]]\nkey = \"{LINE}\"\n[[revoked]]\nkey = \"{fp}\"\nreason = \"x\"\n"
        ),
    )
    .unwrap();
    assert_eq!(p.revoked[0].key.as_deref(), Some(fp.as_str()));
    assert_eq!(p.revoked[1].key.as_deref(), Some(fp.as_str()));
    assert_eq!(
        p.revocation(None, "alice", &fp)
            .map(|(r, by)| (r.origin.line, by)),
        Some((6, RevokedBy::Key))
    );
    assert!(p.revocation(Some(9), "alice", "SHA256:other").is_none());

    for bad in [
        "SHA256:tooshort",
        "ssh-ed25519 AAAA",
        "MD5:aa:bb",
        "ssh-ed25519-cert-v01@openssh.com AAAA",
    ] {
        let e = errors(&format!("{BASE}[[revoked]]\nkey = \"{bad}\"\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(e[0].starts_with("policies/p.toml:7:7: key "), "{e:?}");
    }
}

#[test]
fn host_names_that_parse_as_addresses_are_errors() {
    for (name, ip) in [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("::1", "::1"),
    ] {
        let e = errors(&format!(
            "[hosts.\"{name}\"]\naddress = \"10.0.0.9\"\n[hosts.web-1]\naddress = \"127.0.0.1\"\n"
        ));
        assert_eq!(e.len(), 1, "{name}: {e:?}");
        assert!(
            e[0].starts_with(&format!(
                "policies/p.toml:1:8: host name \"{name}\" parses as the IP address {ip}"
            )),
            "{e:?}"
        );
    }
}
