//! Unit tests of a host's pinned `host_key`: the forms it takes, what it is stored as,
//! and the errors (with their position) for what it must not be.
#![allow(clippy::unwrap_used)]

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFdP8ah357kNNrSA12HQOcypYEHruesDhXILsQcD8gBE web-1";
const FP: &str = "SHA256:5Y/EStzDjIWXeSBmC86vE95ZmuZ25bbYtNaICiwzaPU";

fn load(host_key: &str) -> Result<Policy, Vec<String>> {
    let text = format!(
        "[hosts.web-1]\naddress = \"10.0.0.1\"\nhost_key = {host_key}\n[principals.ops]\nhosts = \"*\"\nlogins = [\"deploy\"]\n"
    );
    Policy::from_toml("policies/p.toml", &text)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn a_public_key_line_and_its_fingerprint_pin_the_same_key() {
    let by_line = load(&format!("{KEY:?}")).unwrap();
    let by_fp = load(&format!("{FP:?}")).unwrap();
    assert_eq!(by_line.hosts["web-1"].host_key.as_deref(), Some(FP));
    assert_eq!(by_fp.hosts["web-1"].host_key.as_deref(), Some(FP));
}

#[test]
fn without_host_key_nothing_is_pinned() {
    let p = Policy::from_toml(
        "policies/p.toml",
        "[hosts.web-1]\naddress = \"10.0.0.1\"\n[principals.ops]\nhosts = \"*\"\nlogins = [\"deploy\"]\n",
    )
    .unwrap();
    assert_eq!(p.hosts["web-1"].host_key, None);
}

#[test]
fn a_bad_host_key_is_an_error_at_its_position() {
    let e = load("\"ssh-ed25519 AAAAnotbase64!\"").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("policies/p.toml:3:12: host_key: "),
        "{e:?}"
    );
    assert!(e[0].contains("neither a public key line"), "{e:?}");
    let e = load("\"SHA256:short\"").unwrap_err();
    assert!(
        e[0].starts_with("policies/p.toml:3:12: host_key: "),
        "{e:?}"
    );
    assert!(e[0].contains("not a SHA-256 fingerprint"), "{e:?}");
    let e = load("22").unwrap_err();
    assert_eq!(
        e,
        vec!["policies/p.toml:3:12: host_key must be a string, not an integer"]
    );
}
