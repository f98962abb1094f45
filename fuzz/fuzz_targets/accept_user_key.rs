//! `POST /v1/certs` key lines: `accept_user_key` must answer every input with a key or a
//! reason, never a panic (docs/threats.md T27; OpenSSH's `pubkey` fuzzer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = drawbridge::issuer::accept::accept_user_key(data) {
        // An accepted key is never a certificate and always re-encodes.
        assert!(!key.key_data().is_certificate());
        assert!(key.to_openssh().is_ok());
    }
});
