//! Every refusal code the product writes: in audit records (`reason`, `end`), in metrics
//! labels and in the API's JSON error bodies. Each place that refuses maps into
//! [`RefusalCode`]; the strings are the ones written since the first release, so old logs
//! read the same. `docs/audit-events.md` lists each code and where it comes from (a unit
//! test keeps the two in step).

use serde::Serialize;

macro_rules! refusal_codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal ),* $(,)?) => {
        /// A refusal's stable name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum RefusalCode {
            $( $(#[$doc])* #[serde(rename = $text)] $variant, )*
        }

        impl RefusalCode {
            /// Every code, in declaration order (metrics pre-register them).
            pub const ALL: &'static [RefusalCode] = &[$(RefusalCode::$variant),*];

            /// The code as written in records, metrics and error bodies.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RefusalCode::$variant => $text,)*
                }
            }
        }
    };
}

refusal_codes! {
    // The certificate check (`bastion::verify::Refusal`, `bastion::lib_refusals`).
    UntrustedCa = "untrusted-ca",
    CaIsCertificate = "ca-is-certificate",
    BadSignature = "bad-signature",
    NotUserCertificate = "not-user-certificate",
    KeyType = "key-type",
    NotYetValid = "not-yet-valid",
    Expired = "expired",
    NoExpiry = "no-expiry",
    ValidityTooLong = "validity-too-long",
    NoPrincipals = "no-principals",
    ForceCommand = "force-command",
    UnknownCriticalOption = "unknown-critical-option",
    BadSourceAddress = "bad-source-address",
    SourceAddressMismatch = "source-address-mismatch",
    /// A `[[revoked]]` entry matched (bastion and issuer alike).
    Revoked = "revoked",
    SkNoUserPresence = "sk-no-user-presence",
    SkNoUserVerification = "sk-no-user-verification",
    // The bastion's connection handler, before any policy question.
    NoCertificate = "no-certificate",
    WeakAlgorithm = "weak-algorithm",
    TooManyConnections = "too-many-connections",
    TooManyChannels = "too-many-channels",
    AuditUnavailable = "audit-unavailable",
    SessionRefused = "session-refused",
    RemoteForward = "remote-forward",
    Streamlocal = "streamlocal",
    // Pre-authentication places (`bastion::preauth`).
    PreAuthCap = "pre-auth-cap",
    PreAuthShare = "pre-auth-share",
    PreAuthEarlyDrop = "pre-auth-early-drop",
    PreAuthPenalty = "pre-auth-penalty",
    PreAuthEvicted = "pre-auth-evicted",
    // Policy from Git (`policy::git`): why a commit is not put in force.
    Unsigned = "unsigned",
    BadCommitSignature = "bad-commit-signature",
    UnknownSigner = "unknown-signer",
    NotDescendant = "not-descendant",
    InvalidPolicy = "invalid-policy",
    // Forwards (`bastion::forward`, `bastion::targets`, `bastion::registry`,
    // `policy::carried`).
    Denied = "denied",
    TtlExceeded = "ttl-exceeded",
    RoleLost = "role-lost",
    HostNotGranted = "host-not-granted",
    CertificateExpired = "certificate-expired",
    CertExpired = "cert-expired",
    UnknownHost = "unknown-host",
    Cut = "cut",
    ConnectFailed = "connect-failed",
    ConnectTimeout = "connect-timeout",
    // Recorded sessions (`recording`, the bastion's SSH server inside the channel).
    /// The recording cannot be created or written (rule `recording.dir`).
    RecordingUnavailable = "recording-unavailable",
    /// The target's host key is neither certified by the host CA for its name nor the
    /// inventory's pinned key (rule `bastion.target-host-key`).
    TargetHostKey = "target-host-key",
    /// The target refused the per-session certificate (rule `bastion.session-certificate`).
    TargetAuthFailed = "target-auth-failed",
    /// No principal of the certificate grants the login asked for inside a recorded
    /// host's channel.
    LoginNotGranted = "login-not-granted",
    /// The certificate inside a recorded host's channel is not the one the connection to
    /// the bastion authenticated with.
    OtherCertificate = "other-certificate",
    /// The per-session certificate for a recorded session could not be made.
    SessionCertificate = "session-certificate",
    // The API (`api`, `identity::AuthError`, `issuer::plan::IssueRefusal`).
    Unauthenticated = "unauthenticated",
    BadCredentials = "bad_credentials",
    InvalidCredentials = "invalid_credentials",
    InvalidToken = "invalid_token",
    RateLimited = "rate_limited",
    Busy = "busy",
    Internal = "internal",
    ApiAuditUnavailable = "audit_unavailable",
    AuthorizationTooLarge = "authorization_too_large",
    BadBody = "bad_body",
    BadJson = "bad_json",
    BadKey = "bad_key",
    BadQuery = "bad_query",
    BadRequest = "bad_request",
    BadIdentityFile = "bad_identity_file",
    BodyTooLarge = "body_too_large",
    UnsupportedMediaType = "unsupported_media_type",
    MethodNotAllowed = "method_not_allowed",
    NotFound = "not_found",
    Timeout = "timeout",
    BadPrincipals = "bad_principals",
    BadTtl = "bad_ttl",
    BadUser = "bad_user",
    BadReason = "bad_reason",
    ReasonRequired = "reason_required",
    PrincipalNotHeld = "principal_not_held",
    NoPrincipalsHeld = "no_principals",
    GrantEnding = "grant_ending",
    // Shared state (`[state] postgres`) unreachable: fail closed.
    /// Bastion: the per-user connection count across replicas cannot be taken.
    StateUnavailable = "state-unavailable",
    /// API: the shared login limits cannot be read.
    ApiStateUnavailable = "state_unavailable",
    // The second factor of password users (`identity::totp`).
    OtpRequired = "otp_required",
    TotpNotEnrolled = "totp_not_enrolled",
    // The device login through an identity provider (`identity::device`, RFC 8628 names).
    AuthorizationPending = "authorization_pending",
    SlowDown = "slow_down",
    ExpiredToken = "expired_token",
    AccessDenied = "access_denied",
    InvalidGrant = "invalid_grant",
    DeviceUnavailable = "device_unavailable",
    DeviceLimit = "device_limit",
    IdpError = "idp_error",
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So tests and callers can compare a code with its text.
impl PartialEq<&str> for RefusalCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for RefusalCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalCode;

    #[test]
    fn codes_are_unique_and_serialise_as_their_text() {
        let mut seen = std::collections::HashSet::new();
        for c in RefusalCode::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::from(c.as_str())
            );
        }
    }
}
