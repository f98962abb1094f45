//! Refusal codes the bastion's connection code uses besides [`super::Refusal::code`]:
//! stable, low-cardinality names for the audit log and the refusal metrics.

pub const NO_CERTIFICATE: &str = "no-certificate";
pub const WEAK_ALGORITHM: &str = "weak-algorithm";
pub const TOO_MANY_CONNECTIONS: &str = "too-many-connections";
pub const TOO_MANY_CHANNELS: &str = "too-many-channels";
pub const AUDIT_UNAVAILABLE: &str = "audit-unavailable";
pub const SESSION: &str = "session-refused";
pub const REMOTE_FORWARD: &str = "remote-forward";
pub const STREAMLOCAL: &str = "streamlocal";
