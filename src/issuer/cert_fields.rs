//! What drawbridge writes into a user certificate beyond the policy's own words: the
//! names of its extensions, the one critical option it sets, and how far it backdates
//! `valid_after`. The issuer writes them (`plan`, `sign`), the bastion reads them back
//! (`bastion::verify`), and the policy loader refuses a policy that names one of these
//! extensions, so a role can never forge what the issuer vouches for. Each is defined
//! here once.

use std::time::Duration;

/// The extension carrying the holder's groups (comma-joined, sorted; may be empty). Shown
/// to the user by the bastion, never used to decide.
pub const GROUPS_EXTENSION: &str = "groups@drawbridge";

/// The extension carrying only the groups an identity provider asserted (comma-joined,
/// sorted; may be empty). The bastion counts these, and only these, on top of the policy
/// loaded at connection time: a user removed from a policy group is cut off at once,
/// while an OIDC user's groups, which only the token knew, hold for the certificate's
/// minutes.
pub const IDP_GROUPS_EXTENSION: &str = "idp-groups@drawbridge";

/// The extension carrying the reason given at issuance (`?reason=`), when one was.
pub const REASON_EXTENSION: &str = "reason@drawbridge";

/// The extension naming the recorded session a bastion's per-session certificate was
/// made for (the session id), so the target's log ties a login to its recording.
pub const SESSION_EXTENSION: &str = "session@drawbridge";

/// How long a recorded session's per-session certificate is valid after it is made
/// (plus [`BACKDATING`] before): OpenSSH checks a certificate only when logging in.
pub const SESSION_CERT_VALIDITY: Duration = Duration::from_secs(120);

/// The critical option carrying the policy's `source` networks: the only critical option
/// drawbridge sets or understands.
pub const SOURCE_ADDRESS: &str = "source-address";

/// Every extension name drawbridge writes itself. A policy may not name any of them, nor
/// any other name ending in [`RESERVED_EXTENSION_SUFFIX`] (kept for what comes next).
pub const RESERVED_EXTENSIONS: &[&str] =
    &[GROUPS_EXTENSION, IDP_GROUPS_EXTENSION, REASON_EXTENSION];

/// Extensions named `...@drawbridge` are drawbridge's own.
pub const RESERVED_EXTENSION_SUFFIX: &str = "@drawbridge";

/// Whether `name` is an extension only drawbridge may write.
pub fn is_reserved_extension(name: &str) -> bool {
    RESERVED_EXTENSIONS.contains(&name) || name.ends_with(RESERVED_EXTENSION_SUFFIX)
}

/// The extensions OpenSSH knows, which a policy's principal may grant; other names a
/// policy gives must contain `@` (vendor extensions).
pub const OPENSSH_EXTENSIONS: &[&str] = &[
    "no-touch-required",
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "verify-required",
];

/// How far before issuance the issuer sets `valid_after`, for clients whose clock is
/// behind. The bastion adds it back to learn when a certificate was issued (its age), and
/// the longest validity it accepts is `certs.max_ttl` plus this.
pub const BACKDATING: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_drawbridge_writes_is_reserved() {
        for name in RESERVED_EXTENSIONS {
            assert!(is_reserved_extension(name), "{name}");
            assert!(!OPENSSH_EXTENSIONS.contains(name), "{name}");
        }
        assert!(is_reserved_extension("session@drawbridge"));
        assert!(!is_reserved_extension("permit-pty"));
        assert!(!is_reserved_extension("login@example.com"));
    }
}
