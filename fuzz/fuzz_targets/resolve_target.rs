//! Host and port normalisation for `direct-tcpip` (docs/threats.md T16): a request resolves
//! only to an inventory host it names exactly (by name or by its exact address string),
//! on that host's port or 22. Checked against the example policy in `policies/`.
#![no_main]

use std::sync::OnceLock;

use drawbridge::policy::{Policy, SourceFile};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let file = |rel: &str, text: &str| SourceFile {
            rel: rel.into(),
            display: rel.into(),
            text: text.into(),
        };
        Policy::from_files(&[
            file("hosts.toml", include_str!("../../policies/hosts.toml")),
            file("people.toml", include_str!("../../policies/people.toml")),
            file(
                "principals.toml",
                include_str!("../../policies/principals.toml"),
            ),
            file("revoked.toml", include_str!("../../policies/revoked.toml")),
        ])
        .expect("the example policy loads")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let port = u16::from_be_bytes([data[0], data[1]]);
    let Ok(host) = std::str::from_utf8(&data[2..]) else {
        return;
    };
    let policy = policy();
    match policy.resolve_target(host, port) {
        Ok(found) => {
            // Only an exact name or an exact address string; only its port or 22.
            assert!(
                found.name == host || found.address == host,
                "{host:?} resolved to {}",
                found.name
            );
            assert!(
                port == found.port || port == 22,
                "port {port} for {}",
                found.name
            );
        }
        Err(message) => {
            // The refusal names no raw control characters (it reaches logs and clients).
            assert!(
                !message.chars().any(|c| c.is_control()),
                "unescaped control character in {message:?}"
            );
        }
    }
});
