//! The certificate check: one pure function from a certificate, the trusted user CAs, the
//! policy, the peer address and the time to an identity or a refusal.
//!
//! russh, before it calls `Handler::auth_openssh_certificate_signed`, checks only that the client
//! holds the key, that the certificate's signature matches the key *embedded in it*, and
//! the time window (skipped for `valid_before = u64::MAX`). ssh-key's
//! `Certificate::validate` adds the CA fingerprint but not the type, principals or
//! critical options. So every check OpenSSH's `sshd` makes on a user certificate is made
//! here again, from scratch, in [`verify_certificate`] (THREATS rows 1–13).
//!
//! Invariants:
//! - no I/O and no clock: `now` is a parameter;
//! - never panics on any certificate a peer can send;
//! - a [`Refusal`]'s `Display` is safe to show the peer (it never echoes peer-chosen text
//!   unescaped and never names a policy detail beyond "revoked").

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::{Certificate, Fingerprint, HashAlg, PublicKey};

use crate::policy::Policy;

use crate::issuer::cert_fields::{
    BACKDATING, GROUPS_EXTENSION, IDP_GROUPS_EXTENSION, REASON_EXTENSION, SOURCE_ADDRESS,
};

/// Smallest RSA modulus accepted for a user key (DESIGN, Certificates).
pub const MIN_RSA_BITS: u32 = 3072;

/// What a valid certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The certificate's key id: the holder's identity (e.g. `alice`).
    pub key_id: String,
    pub serial: u64,
    /// Roles carried by the certificate (never empty).
    pub principals: Vec<String>,
    /// Groups from the `groups@drawbridge` extension (empty when absent); shown to the
    /// user, never used to decide.
    pub groups: Vec<String>,
    /// Groups from the `idp-groups@drawbridge` extension: those an identity provider
    /// asserted at issuance. The only groups from the certificate that decisions count.
    pub idp_groups: Vec<String>,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    /// `SHA256:...` of the CA that signed it.
    pub ca_fingerprint: String,
    /// `SHA256:...` of the holder's key inside the certificate.
    pub key_fingerprint: String,
    /// The reason given at issuance (`reason@drawbridge`), when there is a well-formed one.
    pub reason: Option<String>,
}

impl CertIdentity {
    /// How old the certificate is at `now`, counted from its issuance (`valid_after` plus
    /// the 60 s backdating the issuer applies). Zero when not yet that old.
    pub fn age(&self, now: SystemTime) -> Duration {
        let issued = self.valid_after + BACKDATING;
        now.duration_since(issued).unwrap_or(Duration::ZERO)
    }
}

/// Why a certificate was refused. `Display` is the message for the user; [`Refusal::code`]
/// is the stable name for audit records and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The signer is not one of the trusted user CAs (row 1, 2).
    UntrustedCa,
    /// The signing key is itself a certificate (row 10).
    CaIsCertificate,
    /// The CA signature does not verify (row 9).
    BadSignature,
    /// A host certificate, or an unknown type (row 4).
    NotUserCertificate,
    /// The key type inside the certificate is not accepted (DSA, short RSA, unknown; row 13).
    KeyType(String),
    /// `valid_after` is in the future.
    NotYetValid,
    /// `valid_before` has passed.
    Expired,
    /// `valid_before` is the "forever" sentinel (row 6).
    NoExpiry,
    /// The validity window is longer than the global maximum (row 6).
    ValidityTooLong { secs: u64, max_secs: u64 },
    /// No principals: would mean "anyone" (row 5).
    NoPrincipals,
    /// `force-command`: the bastion runs no commands (row 7).
    ForceCommand,
    /// A critical option drawbridge does not know (row 7).
    UnknownCriticalOption(String),
    /// `source-address` does not parse (row 8).
    BadSourceAddress,
    /// The connection does not come from an allowed `source-address` (row 8).
    SourceAddressMismatch,
    /// Revoked by serial, key id or key in `revoked.toml` (row 11).
    Revoked,
    /// A security-key signature made without a touch, and the certificate does not
    /// waive it with `no-touch-required` (row 46).
    SkNoUserPresence,
    /// A security-key signature without user verification (PIN), and the certificate
    /// says `verify-required`.
    SkNoUserVerification,
}

impl Refusal {
    /// A stable, short name for audit records and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UntrustedCa => "untrusted-ca",
            Refusal::CaIsCertificate => "ca-is-certificate",
            Refusal::BadSignature => "bad-signature",
            Refusal::NotUserCertificate => "not-user-certificate",
            Refusal::KeyType(_) => "key-type",
            Refusal::NotYetValid => "not-yet-valid",
            Refusal::Expired => "expired",
            Refusal::NoExpiry => "no-expiry",
            Refusal::ValidityTooLong { .. } => "validity-too-long",
            Refusal::NoPrincipals => "no-principals",
            Refusal::ForceCommand => "force-command",
            Refusal::UnknownCriticalOption(_) => "unknown-critical-option",
            Refusal::BadSourceAddress => "bad-source-address",
            Refusal::SourceAddressMismatch => "source-address-mismatch",
            Refusal::Revoked => "revoked",
            Refusal::SkNoUserPresence => "sk-no-user-presence",
            Refusal::SkNoUserVerification => "sk-no-user-verification",
        }
    }

    /// Every code, for metrics that pre-register their labels.
    pub const CODES: &'static [&'static str] = &[
        "untrusted-ca",
        "ca-is-certificate",
        "bad-signature",
        "not-user-certificate",
        "key-type",
        "not-yet-valid",
        "expired",
        "no-expiry",
        "validity-too-long",
        "no-principals",
        "force-command",
        "unknown-critical-option",
        "bad-source-address",
        "source-address-mismatch",
        "revoked",
        "sk-no-user-presence",
        "sk-no-user-verification",
    ];
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UntrustedCa => f.write_str("certificate is not signed by a trusted user CA"),
            Refusal::CaIsCertificate => {
                f.write_str("certificate is signed by a certificate, not by a CA key")
            }
            Refusal::BadSignature => f.write_str("certificate signature does not verify"),
            Refusal::NotUserCertificate => f.write_str("not a user certificate"),
            Refusal::KeyType(what) => write!(
                f,
                "key type not accepted: {} (use ssh-ed25519, ecdsa, a security key, or RSA of at least {MIN_RSA_BITS} bits)",
                crate::util::shown(what)
            ),
            Refusal::NotYetValid => f.write_str("certificate is not valid yet"),
            Refusal::Expired => f.write_str("certificate has expired; get a new one"),
            Refusal::NoExpiry => f.write_str("certificate never expires; refused"),
            Refusal::ValidityTooLong { secs, max_secs } => write!(
                f,
                "certificate is valid for {secs} s, longer than the maximum {max_secs} s"
            ),
            Refusal::NoPrincipals => f.write_str("certificate has no principals"),
            Refusal::ForceCommand => {
                f.write_str("certificate has force-command; the bastion runs no commands")
            }
            Refusal::UnknownCriticalOption(name) => write!(
                f,
                "certificate has an unknown critical option: {}",
                crate::util::shown(name)
            ),
            Refusal::BadSourceAddress => {
                f.write_str("certificate has a malformed source-address option")
            }
            Refusal::SourceAddressMismatch => {
                f.write_str("connection does not come from the certificate's source-address")
            }
            Refusal::Revoked => f.write_str("certificate is revoked"),
            Refusal::SkNoUserPresence => f.write_str(
                "security key signature made without a touch (user presence); touch the key when it blinks",
            ),
            Refusal::SkNoUserVerification => f.write_str(
                "security key signature without user verification, which the certificate requires (verify-required)",
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// SHA-256 fingerprints of the trusted user CA keys, computed once.
#[derive(Debug, Clone)]
pub struct TrustedCas {
    fingerprints: Vec<Fingerprint>,
}

impl TrustedCas {
    /// Certificates are never CA keys: a `PublicKey` holding a certificate is skipped.
    pub fn new(keys: &[PublicKey]) -> TrustedCas {
        TrustedCas {
            fingerprints: keys
                .iter()
                .filter(|k| !k.key_data().is_certificate())
                .map(|k| k.fingerprint(HashAlg::Sha256))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    fn contains(&self, f: &Fingerprint) -> bool {
        self.fingerprints.iter().any(|t| t == f)
    }
}

/// Checks a user certificate the way OpenSSH's `sshd` would, and more (see module docs).
///
/// - `trusted`: the user CA keys;
/// - `policy`: only its revocation list is read here (access is decided per forward);
/// - `peer`: the real TCP peer (not the client-supplied originator);
/// - `max_validity`: the longest `valid_before - valid_after` accepted (the global
///   `certs.max_ttl` plus the issuer's 60 s backdating).
pub fn verify_certificate(
    cert: &Certificate,
    trusted: &TrustedCas,
    policy: &Policy,
    peer: IpAddr,
    now: SystemTime,
    max_validity: Duration,
) -> Result<CertIdentity, Refusal> {
    // 1. The signer: never a certificate (row 10), a trusted CA (rows 1, 2), and a
    //    signature that verifies (row 9).
    let signer = cert.signature_key();
    if signer.is_certificate() {
        return Err(Refusal::CaIsCertificate);
    }
    let ca_fingerprint = signer.fingerprint(HashAlg::Sha256);
    if !trusted.contains(&ca_fingerprint) {
        return Err(Refusal::UntrustedCa);
    }
    if cert.verify_signature().is_err() {
        return Err(Refusal::BadSignature);
    }
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    // 2. Type (row 4) and key type (row 13).
    if cert.cert_type() != CertType::User {
        return Err(Refusal::NotUserCertificate);
    }
    check_key_type(cert.public_key())?;

    // 3. Validity (row 6): forever, window, length.
    if cert.valid_before() == u64::MAX {
        return Err(Refusal::NoExpiry);
    }
    if now_secs < cert.valid_after() {
        return Err(Refusal::NotYetValid);
    }
    if now_secs >= cert.valid_before() {
        return Err(Refusal::Expired);
    }
    let length = cert.valid_before().saturating_sub(cert.valid_after());
    if length > max_validity.as_secs() {
        return Err(Refusal::ValidityTooLong {
            secs: length,
            max_secs: max_validity.as_secs(),
        });
    }

    // Belt and braces: ssh-key's own check (signature, CA fingerprint, window) agrees.
    if cert
        .validate_at(now_secs, std::iter::once(&ca_fingerprint))
        .is_err()
    {
        return Err(Refusal::BadSignature);
    }

    // 4. Principals (row 5).
    let principals = cert.valid_principals();
    if principals.is_empty() || principals.iter().any(|p| p.is_empty()) {
        return Err(Refusal::NoPrincipals);
    }

    // 5. Critical options (rows 7, 8).
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            SOURCE_ADDRESS => {
                let nets = parse_source_address(value)?;
                if !nets.iter().any(|n| n.contains(&canonical(peer))) {
                    return Err(Refusal::SourceAddressMismatch);
                }
            }
            "force-command" => return Err(Refusal::ForceCommand),
            other => return Err(Refusal::UnknownCriticalOption(other.to_string())),
        }
    }

    // 6. Revocation (row 11): serial, key id, or the key itself.
    let key_fingerprint = cert.public_key().fingerprint(HashAlg::Sha256).to_string();
    if policy
        .revocation(Some(cert.serial()), cert.key_id(), &key_fingerprint)
        .is_some()
    {
        return Err(Refusal::Revoked);
    }

    let groups = cert
        .extensions()
        .get(GROUPS_EXTENSION)
        .map(|v| parse_groups(v))
        .unwrap_or_default();
    let idp_groups = cert
        .extensions()
        .get(IDP_GROUPS_EXTENSION)
        .map(|v| parse_groups(v))
        .unwrap_or_default();

    Ok(CertIdentity {
        key_id: cert.key_id().to_string(),
        serial: cert.serial(),
        principals: principals.to_vec(),
        groups,
        idp_groups,
        valid_after: UNIX_EPOCH + Duration::from_secs(cert.valid_after()),
        valid_before: UNIX_EPOCH + Duration::from_secs(cert.valid_before()),
        ca_fingerprint: ca_fingerprint.to_string(),
        key_fingerprint,
        reason: cert
            .extensions()
            .get(REASON_EXTENSION)
            .filter(|r| crate::issuer::plan::check_reason(r).is_ok())
            .cloned(),
    })
}

/// Authenticator flag: the user touched the key (PROTOCOL.u2f).
pub const SK_USER_PRESENT: u8 = 0x01;
/// Authenticator flag: the user was verified (PIN or biometrics).
pub const SK_USER_VERIFIED: u8 = 0x04;

/// What sshd checks of a security-key (`sk-*`) signature, given the flags byte of the
/// signature that authenticated `cert`: the touch (user presence) unless the certificate
/// has `no-touch-required`, and user verification when it has `verify-required`.
///
/// The flags are part of the signed data; our russh fork (`vendor/russh`) passes them to
/// the handler, which calls this once the certificate itself is accepted.
pub fn check_security_key_flags(cert: &Certificate, flags: u8) -> Result<(), Refusal> {
    let ext = cert.extensions();
    if flags & SK_USER_PRESENT == 0 && !ext.contains_key("no-touch-required") {
        return Err(Refusal::SkNoUserPresence);
    }
    if flags & SK_USER_VERIFIED == 0 && ext.contains_key("verify-required") {
        return Err(Refusal::SkNoUserVerification);
    }
    Ok(())
}

/// The flags to check for the signature that proved `cert`'s key: for a security key
/// (`sk-*`), the flags russh read from the signature, or 0 (no touch, no verification)
/// when it could not read them, so that such a signature is refused unless the certificate
/// waives both; `None` for other keys, whose signatures carry no flags.
pub fn security_key_flags(cert: &Certificate, read: Option<u8>) -> Option<u8> {
    match cert.public_key() {
        KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => Some(read.unwrap_or(0)),
        _ => read,
    }
}

fn check_key_type(key: &KeyData) -> Result<(), Refusal> {
    match key {
        KeyData::Ed25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEd25519(_)
        | KeyData::SkEcdsaSha2NistP256(_) => Ok(()),
        KeyData::Rsa(rsa) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
        KeyData::Rsa(rsa) => Err(Refusal::KeyType(format!("RSA of {} bits", rsa.key_size()))),
        other => Err(Refusal::KeyType(other.algorithm().to_string())),
    }
}

/// Parses a `source-address` value strictly: comma-separated addresses or CIDR blocks, no
/// empty entries, no spaces, no host bits set under the prefix (as OpenSSH's
/// `addr_match_cidr_list` in strict mode). Anything else is [`Refusal::BadSourceAddress`].
pub fn parse_source_address(value: &str) -> Result<Vec<IpNet>, Refusal> {
    if value.is_empty() || value.len() > 4096 {
        return Err(Refusal::BadSourceAddress);
    }
    let mut nets = Vec::new();
    for entry in value.split(',') {
        if entry.is_empty() || entry.chars().any(|c| c.is_whitespace()) {
            return Err(Refusal::BadSourceAddress);
        }
        let net = if entry.contains('/') {
            let net: IpNet = entry.parse().map_err(|_| Refusal::BadSourceAddress)?;
            if net.trunc() != net {
                return Err(Refusal::BadSourceAddress);
            }
            net
        } else {
            let ip: IpAddr = entry.parse().map_err(|_| Refusal::BadSourceAddress)?;
            IpNet::from(ip)
        };
        nets.push(match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                // ::ffff:a.b.c.d/n written in a certificate: match it as IPv4.
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                        .map_err(|_| Refusal::BadSourceAddress)?
                }
                _ => net,
            },
            IpNet::V4(_) => net,
        });
    }
    Ok(nets)
}

/// An IPv4-mapped IPv6 peer (dual-stack socket) is matched as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        IpAddr::V4(_) => ip,
    }
}

/// `groups@drawbridge` value: comma-separated group names; empty entries dropped.
pub fn parse_groups(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::{Origin, Revoked};
    use ssh_key::certificate::Builder;
    use ssh_key::{Algorithm, PrivateKey};

    fn rng() -> ssh_key::rand_core::UnwrapErr<ssh_key::getrandom::SysRng> {
        ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng)
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rng(), Algorithm::Ed25519).unwrap()
    }

    const NOW: u64 = 1_800_000_000;
    const MAX: Duration = Duration::from_secs(3600 + 60);

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn peer() -> IpAddr {
        "192.0.2.10".parse().unwrap()
    }

    struct Spec {
        after: u64,
        before: u64,
        cert_type: CertType,
        principals: Vec<&'static str>,
        critical: Vec<(&'static str, &'static str)>,
        extensions: Vec<(&'static str, &'static str)>,
        serial: u64,
        key_id: &'static str,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                after: NOW - 60,
                before: NOW + 300,
                cert_type: CertType::User,
                principals: vec!["web-deploy"],
                critical: vec![],
                extensions: vec![("permit-pty", ""), (GROUPS_EXTENSION, "ops,dev")],
                serial: 42,
                key_id: "alice",
            }
        }
    }

    fn sign(ca: &PrivateKey, user: &PrivateKey, s: Spec) -> Certificate {
        let mut b = Builder::new(
            [7u8; 16],
            user.public_key().key_data().clone(),
            s.after,
            s.before,
        )
        .unwrap();
        b.serial(s.serial).unwrap();
        b.cert_type(s.cert_type).unwrap();
        b.key_id(s.key_id).unwrap();
        if s.principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        for p in s.principals {
            b.valid_principal(p).unwrap();
        }
        for (k, v) in s.critical {
            b.critical_option(k, v).unwrap();
        }
        for (k, v) in s.extensions {
            b.extension(k, v).unwrap();
        }
        b.sign(ca).unwrap()
    }

    fn check(ca: &PrivateKey, cert: &Certificate) -> Result<CertIdentity, Refusal> {
        check_with(ca, cert, &Policy::default(), peer())
    }

    fn check_with(
        ca: &PrivateKey,
        cert: &Certificate,
        policy: &Policy,
        peer: IpAddr,
    ) -> Result<CertIdentity, Refusal> {
        let trusted = TrustedCas::new(&[ca.public_key().clone()]);
        verify_certificate(cert, &trusted, policy, peer, now(), MAX)
    }

    #[test]
    fn a_good_certificate_passes_with_its_identity() {
        let (ca, user) = (key(), key());
        let cert = sign(&ca, &user, Spec::default());
        let id = check(&ca, &cert).unwrap();
        assert_eq!(id.key_id, "alice");
        assert_eq!(id.serial, 42);
        assert_eq!(id.principals, vec!["web-deploy".to_string()]);
        assert_eq!(id.groups, vec!["ops".to_string(), "dev".to_string()]);
        assert_eq!(id.valid_before, UNIX_EPOCH + Duration::from_secs(NOW + 300));
        assert_eq!(
            id.ca_fingerprint,
            ca.public_key().fingerprint(HashAlg::Sha256).to_string()
        );
        assert_eq!(
            id.key_fingerprint,
            user.public_key().fingerprint(HashAlg::Sha256).to_string()
        );
        assert_eq!(id.age(now()), Duration::ZERO);
        assert_eq!(
            id.age(now() + Duration::from_secs(90)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn one_of_several_trusted_cas_is_enough() {
        let (old, new, user) = (key(), key(), key());
        let cert = sign(&old, &user, Spec::default());
        let trusted = TrustedCas::new(&[new.public_key().clone(), old.public_key().clone()]);
        assert!(
            verify_certificate(&cert, &trusted, &Policy::default(), peer(), now(), MAX).is_ok()
        );
    }

    #[test]
    fn untrusted_or_self_signed_ca_is_refused() {
        let (ca, other, user) = (key(), key(), key());
        let cert = sign(&other, &user, Spec::default());
        assert_eq!(check(&ca, &cert), Err(Refusal::UntrustedCa));
        // self-signed: the user key signs its own certificate
        let cert = sign(&user, &user, Spec::default());
        assert_eq!(check(&ca, &cert), Err(Refusal::UntrustedCa));
        // no trusted CA at all
        let trusted = TrustedCas::new(&[]);
        let cert = sign(&ca, &user, Spec::default());
        assert_eq!(
            verify_certificate(&cert, &trusted, &Policy::default(), peer(), now(), MAX),
            Err(Refusal::UntrustedCa)
        );
    }

    #[test]
    fn host_certificate_is_refused() {
        let (ca, user) = (key(), key());
        let cert = sign(
            &ca,
            &user,
            Spec {
                cert_type: CertType::Host,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::NotUserCertificate));
    }

    #[test]
    fn validity_window_is_checked_here() {
        let (ca, user) = (key(), key());
        let expired = sign(
            &ca,
            &user,
            Spec {
                after: NOW - 600,
                before: NOW - 1,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &expired), Err(Refusal::Expired));
        // valid_before is exclusive
        let edge = sign(
            &ca,
            &user,
            Spec {
                after: NOW - 600,
                before: NOW,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &edge), Err(Refusal::Expired));
        let future = sign(
            &ca,
            &user,
            Spec {
                after: NOW + 10,
                before: NOW + 300,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &future), Err(Refusal::NotYetValid));
        let forever = sign(
            &ca,
            &user,
            Spec {
                after: 0,
                before: u64::MAX,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &forever), Err(Refusal::NoExpiry));
        let forever2 = sign(
            &ca,
            &user,
            Spec {
                after: NOW - 60,
                before: u64::MAX,
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &forever2), Err(Refusal::NoExpiry));
    }

    #[test]
    fn validity_longer_than_the_maximum_is_refused() {
        let (ca, user) = (key(), key());
        let long = sign(
            &ca,
            &user,
            Spec {
                after: NOW - 60,
                before: NOW + 3601,
                ..Spec::default()
            },
        );
        assert_eq!(
            check(&ca, &long),
            Err(Refusal::ValidityTooLong {
                secs: 3661,
                max_secs: 3660
            })
        );
        let exact = sign(
            &ca,
            &user,
            Spec {
                after: NOW - 60,
                before: NOW + 3600,
                ..Spec::default()
            },
        );
        assert!(check(&ca, &exact).is_ok());
    }

    #[test]
    fn empty_principals_are_refused() {
        let (ca, user) = (key(), key());
        let cert = sign(
            &ca,
            &user,
            Spec {
                principals: vec![],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::NoPrincipals));
        let cert = sign(
            &ca,
            &user,
            Spec {
                principals: vec![""],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::NoPrincipals));
    }

    #[test]
    fn critical_options_other_than_source_address_are_refused() {
        let (ca, user) = (key(), key());
        let cert = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("force-command", "/bin/true")],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::ForceCommand));
        let cert = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("verify-required", "")],
                ..Spec::default()
            },
        );
        assert_eq!(
            check(&ca, &cert),
            Err(Refusal::UnknownCriticalOption("verify-required".into()))
        );
        let cert = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("x\n\u{1b}[31m", "")],
                ..Spec::default()
            },
        );
        let e = check(&ca, &cert).unwrap_err();
        assert_eq!(e.code(), "unknown-critical-option");
        assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'));
    }

    #[test]
    fn source_address_is_matched_against_the_real_peer() {
        let (ca, user) = (key(), key());
        let ok = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("source-address", "10.0.0.1,192.0.2.0/24")],
                ..Spec::default()
            },
        );
        assert!(check(&ca, &ok).is_ok());
        // a dual-stack socket reports IPv4 peers as IPv4-mapped IPv6
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert!(check_with(&ca, &ok, &Policy::default(), mapped).is_ok());
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            check_with(&ca, &ok, &Policy::default(), other),
            Err(Refusal::SourceAddressMismatch)
        );
        let v6 = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("source-address", "2001:db8::/32")],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &v6), Err(Refusal::SourceAddressMismatch));
        assert!(check_with(&ca, &v6, &Policy::default(), "2001:db8::5".parse().unwrap()).is_ok());
    }

    #[test]
    fn malformed_source_address_is_refused() {
        let (ca, user) = (key(), key());
        for bad in [
            "",
            "192.0.2.0/33",
            "192.0.2.1/24",
            "192.0.2.0/24,",
            ",192.0.2.10",
            "192.0.2.10 ",
            "192.0.2.*",
            "example.org",
            "0300.0.2.10",
            "192.0.2.010",
            "3221226058",
            "0xc0000210",
            "192.0.2.10/",
            "/24",
            "192.0.2.10;",
            "::ffff:192.0.2.0/120/1",
        ] {
            assert_eq!(
                parse_source_address(bad),
                Err(Refusal::BadSourceAddress),
                "{bad:?}"
            );
        }
        let cert = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("source-address", "192.0.2.0/33")],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::BadSourceAddress));
        let cert = sign(
            &ca,
            &user,
            Spec {
                critical: vec![("source-address", "")],
                ..Spec::default()
            },
        );
        assert_eq!(check(&ca, &cert), Err(Refusal::BadSourceAddress));
        assert_eq!(
            parse_source_address("::ffff:192.0.2.0/120").unwrap(),
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
    }

    fn revoked(serial: Option<u64>, key_id: Option<&str>) -> Policy {
        Policy {
            revoked: vec![Revoked {
                serial,
                key_id: key_id.map(str::to_string),
                key: None,
                reason: Some("laptop lost".into()),
                origin: Origin::default(),
            }],
            ..Policy::default()
        }
    }

    #[test]
    fn a_revoked_key_is_refused_whatever_the_key_id_and_serial() {
        let (ca, user, other) = (key(), key(), key());
        let policy = Policy {
            revoked: vec![Revoked {
                serial: None,
                key_id: None,
                key: Some(user.public_key().fingerprint(HashAlg::Sha256).to_string()),
                reason: None,
                origin: Origin::default(),
            }],
            ..Policy::default()
        };
        let cert = sign(&ca, &user, Spec::default());
        assert_eq!(
            check_with(&ca, &cert, &policy, peer()),
            Err(Refusal::Revoked)
        );
        let cert = sign(&ca, &other, Spec::default());
        assert!(check_with(&ca, &cert, &policy, peer()).is_ok());
    }

    #[test]
    fn security_key_flags_as_sshd_checks_them() {
        let (ca, user) = (key(), key());
        let plain = sign(&ca, &user, Spec::default());
        let with = |ext: &'static str| {
            let mut spec = Spec::default();
            spec.extensions.push((ext, ""));
            sign(&ca, &user, spec)
        };
        assert_eq!(check_security_key_flags(&plain, SK_USER_PRESENT), Ok(()));
        assert_eq!(
            check_security_key_flags(&plain, 0),
            Err(Refusal::SkNoUserPresence)
        );
        assert_eq!(
            check_security_key_flags(&plain, SK_USER_VERIFIED),
            Err(Refusal::SkNoUserPresence)
        );
        assert_eq!(
            check_security_key_flags(&with("no-touch-required"), 0),
            Ok(())
        );
        let verify = with("verify-required");
        assert_eq!(
            check_security_key_flags(&verify, SK_USER_PRESENT),
            Err(Refusal::SkNoUserVerification)
        );
        assert_eq!(
            check_security_key_flags(&verify, SK_USER_PRESENT | SK_USER_VERIFIED),
            Ok(())
        );
    }

    #[test]
    fn a_security_key_without_readable_flags_counts_as_untouched() {
        let (ca, user) = (key(), key());
        let plain = sign(&ca, &user, Spec::default());
        assert_eq!(security_key_flags(&plain, None), None);
        let ed25519 = *user.public_key().key_data().ed25519().unwrap();
        let sk = KeyData::SkEd25519(ssh_key::public::SkEd25519::new(ed25519, "ssh:"));
        let mut b = Builder::new([7u8; 16], sk, NOW - 60, NOW + 300).unwrap();
        b.valid_principal("web-deploy").unwrap();
        let sk_cert = b.sign(&ca).unwrap();
        assert_eq!(security_key_flags(&sk_cert, None), Some(0));
        assert_eq!(
            security_key_flags(&sk_cert, Some(SK_USER_PRESENT)),
            Some(SK_USER_PRESENT)
        );
    }

    #[test]
    fn the_reason_extension_is_read_when_well_formed() {
        let (ca, user) = (key(), key());
        let mut spec = Spec::default();
        spec.extensions
            .push((REASON_EXTENSION, "INC-4711: disk full"));
        let id = check(&ca, &sign(&ca, &user, spec)).unwrap();
        assert_eq!(id.reason.as_deref(), Some("INC-4711: disk full"));
        let id = check(&ca, &sign(&ca, &user, Spec::default())).unwrap();
        assert_eq!(id.reason, None);
        let mut spec = Spec::default();
        spec.extensions.push((REASON_EXTENSION, "\u{1b}[2Jboo"));
        assert_eq!(check(&ca, &sign(&ca, &user, spec)).unwrap().reason, None);
    }

    #[test]
    fn revoked_serial_or_key_id_is_refused_and_an_empty_list_lets_good_certs_in() {
        let (ca, user) = (key(), key());
        let cert = sign(&ca, &user, Spec::default());
        assert_eq!(
            check_with(&ca, &cert, &revoked(Some(42), None), peer()),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            check_with(&ca, &cert, &revoked(None, Some("alice")), peer()),
            Err(Refusal::Revoked)
        );
        assert!(check_with(&ca, &cert, &revoked(Some(43), Some("bob")), peer()).is_ok());
        assert!(check_with(&ca, &cert, &Policy::default(), peer()).is_ok());
    }

    #[test]
    fn ed25519_and_ecdsa_user_keys_are_accepted() {
        assert!(check_key_type(key().public_key().key_data()).is_ok());
        let ec = PrivateKey::random(
            &mut rng(),
            Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        )
        .unwrap();
        assert!(check_key_type(ec.public_key().key_data()).is_ok());
    }

    #[test]
    fn a_flipped_byte_fails_to_parse_or_to_verify_without_panic() {
        let (ca, user) = (key(), key());
        let cert = sign(&ca, &user, Spec::default());
        let bytes = cert.to_bytes().unwrap();
        let trusted = TrustedCas::new(&[ca.public_key().clone()]);
        let mut parsed_ok = 0;
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                if let Ok(c) = Certificate::from_bytes(&b) {
                    parsed_ok += 1;
                    let r =
                        verify_certificate(&c, &trusted, &Policy::default(), peer(), now(), MAX);
                    assert!(r.is_err(), "byte {i} bit {bit:#x} still verifies");
                }
            }
        }
        assert!(parsed_ok > 0);
        // truncations never panic either
        for n in 0..bytes.len() {
            let _ = Certificate::from_bytes(&bytes[..n]);
        }
    }

    #[test]
    fn a_certificate_as_signing_key_is_refused() {
        let (ca, user) = (key(), key());
        let cert = sign(&ca, &user, Spec::default());
        // A certificate for the CA's own key, to stand in as the "signing key".
        let ca_cert = sign(&ca, &ca, Spec::default());
        let bytes = cert.to_bytes().unwrap();
        let ca_blob = ca.public_key().to_bytes().unwrap();
        let cert_blob = ca_cert.to_bytes().unwrap();
        let pos = bytes
            .windows(ca_blob.len())
            .position(|w| w == ca_blob.as_slice())
            .unwrap();
        // `pos` is just after the 4-byte length prefix of the signing key blob.
        let mut forged = bytes[..pos - 4].to_vec();
        forged.extend_from_slice(&(cert_blob.len() as u32).to_be_bytes());
        forged.extend_from_slice(&cert_blob);
        forged.extend_from_slice(&bytes[pos + ca_blob.len()..]);
        let forged = Certificate::from_bytes(&forged).unwrap();
        assert!(forged.signature_key().is_certificate());
        let trusted = TrustedCas::new(&[ca.public_key().clone()]);
        assert_eq!(
            verify_certificate(&forged, &trusted, &Policy::default(), peer(), now(), MAX),
            Err(Refusal::CaIsCertificate)
        );
    }

    #[test]
    fn codes_are_listed_and_messages_are_one_line() {
        let all = [
            Refusal::UntrustedCa,
            Refusal::CaIsCertificate,
            Refusal::BadSignature,
            Refusal::NotUserCertificate,
            Refusal::KeyType("ssh-dss".into()),
            Refusal::NotYetValid,
            Refusal::Expired,
            Refusal::NoExpiry,
            Refusal::ValidityTooLong {
                secs: 2,
                max_secs: 1,
            },
            Refusal::NoPrincipals,
            Refusal::ForceCommand,
            Refusal::UnknownCriticalOption("x".into()),
            Refusal::BadSourceAddress,
            Refusal::SourceAddressMismatch,
            Refusal::Revoked,
            Refusal::SkNoUserPresence,
            Refusal::SkNoUserVerification,
        ];
        assert_eq!(all.len(), Refusal::CODES.len());
        for r in all {
            assert!(Refusal::CODES.contains(&r.code()));
            assert!(!r.to_string().contains('\n'));
        }
    }

    #[test]
    fn groups_extension_parses_leniently() {
        assert_eq!(parse_groups("a, b,,c"), vec!["a", "b", "c"]);
        assert!(parse_groups("").is_empty());
    }
}
