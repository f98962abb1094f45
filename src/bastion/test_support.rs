//! Builders shared by the bastion's unit tests (compiled for tests only).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::verify::CertIdentity;

/// 2026-12-01T00:00:00Z: when the fixture policies' temporary grant ends.
pub const UNTIL: u64 = 1_796_083_200;

/// `secs` after the Unix epoch.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A certificate identity issued at `issued` (valid_after backdated 60 s), valid 1 h,
/// with `idp` as the groups an identity provider asserted.
pub fn cert(
    key_id: &str,
    principals: &[&str],
    idp: &[&str],
    serial: u64,
    issued: u64,
) -> CertIdentity {
    CertIdentity {
        key_id: key_id.into(),
        serial,
        principals: principals.iter().map(|s| s.to_string()).collect(),
        groups: vec![],
        idp_groups: idp.iter().map(|s| s.to_string()).collect(),
        valid_after: at(issued - 60),
        valid_before: at(issued + 3600),
        ca_fingerprint: "SHA256:ca".into(),
        key_fingerprint: "SHA256:key".into(),
        reason: None,
    }
}
