//! Refusal codes the bastion's connection code uses besides [`super::Refusal::code`],
//! and the rules behind them: refusals made before any policy question name the config
//! key or the built-in rule that decided (`rule` in the audit record).

use crate::audit::RefusalCode;

pub const NO_CERTIFICATE: RefusalCode = RefusalCode::NoCertificate;
pub const WEAK_ALGORITHM: RefusalCode = RefusalCode::WeakAlgorithm;
pub const TOO_MANY_CONNECTIONS: RefusalCode = RefusalCode::TooManyConnections;
pub const TOO_MANY_CHANNELS: RefusalCode = RefusalCode::TooManyChannels;
pub const AUDIT_UNAVAILABLE: RefusalCode = RefusalCode::AuditUnavailable;
pub const SESSION: RefusalCode = RefusalCode::SessionRefused;
pub const REMOTE_FORWARD: RefusalCode = RefusalCode::RemoteForward;
pub const STREAMLOCAL: RefusalCode = RefusalCode::Streamlocal;

/// Built-in: only certificates authenticate.
pub const RULE_CERTIFICATE_REQUIRED: &str = "bastion.certificate-required";
/// Built-in: no DSA, no SHA-1 `ssh-rsa` signatures.
pub const RULE_SIGNATURE_ALGORITHMS: &str = "bastion.signature-algorithms";
pub const RULE_MAX_CONNECTIONS_PER_USER: &str = "ssh.max_connections_per_user";
pub const RULE_MAX_CHANNELS: &str = "ssh.max_channels_per_connection";
/// Built-in: the bastion forwards TCP and runs nothing.
pub const RULE_FORWARD_ONLY: &str = "bastion.forward-only";
/// Built-in: no `ssh -R`.
pub const RULE_NO_REMOTE_FORWARD: &str = "bastion.no-remote-forward";
/// Built-in: no Unix socket forwarding.
pub const RULE_NO_STREAMLOCAL: &str = "bastion.no-streamlocal";
/// Built-in: nothing is allowed that cannot be recorded first.
pub const RULE_AUDIT_FIRST: &str = "audit.record-before-acting";
/// The shared state (PostgreSQL) must answer before a connection is let in.
pub const RULE_STATE_POSTGRES: &str = "state.postgres";
/// Accepted: the certificate checks passed (trusted CA, validity, options, revocation).
pub const RULE_CERTIFICATE_ACCEPTED: &str = "certificate";

/// The rule behind a refusal code of the bastion's authentication, for records that
/// count refusals rather than name each one (`ssh.auth.failed.repeated`).
pub fn rule_of(code: RefusalCode) -> String {
    match code {
        RefusalCode::NoCertificate => RULE_CERTIFICATE_REQUIRED.into(),
        RefusalCode::WeakAlgorithm => RULE_SIGNATURE_ALGORITHMS.into(),
        RefusalCode::TooManyConnections => RULE_MAX_CONNECTIONS_PER_USER.into(),
        RefusalCode::ValidityTooLong => "certs.max_ttl".into(),
        RefusalCode::StateUnavailable => RULE_STATE_POSTGRES.into(),
        other => format!("certificate.{other}"),
    }
}
