//! The certificate check: one pure function from a certificate, the trusted user CAs, the
//! policy, the peer address and the time to an identity or a refusal.
//!
//! russh, before it calls `Handler::auth_openssh_certificate_signed`, checks only that the client
//! holds the key, that the certificate's signature matches the key *embedded in it*, and
//! the time window (skipped for `valid_before = u64::MAX`). ssh-key's
//! `Certificate::validate` adds the CA fingerprint but not the type, principals or
//! critical options. So every check OpenSSH's `sshd` makes on a user certificate is made
//! here again, from scratch, in [`verify_certificate`] (docs/threats.md T1–T13).
//!
//! Invariants:
//! - no I/O and no clock: `now` is a parameter;
//! - never panics on any certificate a peer can send;
//! - a [`Refusal`]'s `Display` is safe to show the peer (it never echoes peer-chosen text
//!   unescaped and never names a policy detail beyond "revoked").

use crate::audit::RefusalCode;
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

/// Smallest RSA modulus accepted for a user key (keys under 3072 bits are refused at issuance and at the bastion alike).
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
    /// What the certificate claims, as the policy's [`crate::policy::Policy::still_holds`]
    /// takes it.
    pub fn carried(&self) -> crate::policy::Carried<'_> {
        crate::policy::Carried {
            key_id: &self.key_id,
            serial: self.serial,
            key_fingerprint: &self.key_fingerprint,
            principals: &self.principals,
            idp_groups: &self.idp_groups,
        }
    }

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
    pub fn code(&self) -> RefusalCode {
        match self {
            Refusal::UntrustedCa => RefusalCode::UntrustedCa,
            Refusal::CaIsCertificate => RefusalCode::CaIsCertificate,
            Refusal::BadSignature => RefusalCode::BadSignature,
            Refusal::NotUserCertificate => RefusalCode::NotUserCertificate,
            Refusal::KeyType(_) => RefusalCode::KeyType,
            Refusal::NotYetValid => RefusalCode::NotYetValid,
            Refusal::Expired => RefusalCode::Expired,
            Refusal::NoExpiry => RefusalCode::NoExpiry,
            Refusal::ValidityTooLong { .. } => RefusalCode::ValidityTooLong,
            Refusal::NoPrincipals => RefusalCode::NoPrincipals,
            Refusal::ForceCommand => RefusalCode::ForceCommand,
            Refusal::UnknownCriticalOption(_) => RefusalCode::UnknownCriticalOption,
            Refusal::BadSourceAddress => RefusalCode::BadSourceAddress,
            Refusal::SourceAddressMismatch => RefusalCode::SourceAddressMismatch,
            Refusal::Revoked => RefusalCode::Revoked,
            Refusal::SkNoUserPresence => RefusalCode::SkNoUserPresence,
            Refusal::SkNoUserVerification => RefusalCode::SkNoUserVerification,
        }
    }

    /// The rule that refused, for the audit record: the certificate check by name, or
    /// the config key it enforces. (For [`Refusal::Revoked`] the caller names the
    /// `[[revoked]]` entry instead.)
    pub fn rule(&self) -> String {
        match self {
            Refusal::ValidityTooLong { .. } => "certs.max_ttl".to_string(),
            other => format!("certificate.{}", other.code()),
        }
    }

    /// Every code, for metrics that pre-register their labels.
    pub const CODES: &'static [RefusalCode] = &[
        RefusalCode::UntrustedCa,
        RefusalCode::CaIsCertificate,
        RefusalCode::BadSignature,
        RefusalCode::NotUserCertificate,
        RefusalCode::KeyType,
        RefusalCode::NotYetValid,
        RefusalCode::Expired,
        RefusalCode::NoExpiry,
        RefusalCode::ValidityTooLong,
        RefusalCode::NoPrincipals,
        RefusalCode::ForceCommand,
        RefusalCode::UnknownCriticalOption,
        RefusalCode::BadSourceAddress,
        RefusalCode::SourceAddressMismatch,
        RefusalCode::Revoked,
        RefusalCode::SkNoUserPresence,
        RefusalCode::SkNoUserVerification,
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

/// A certificate that a client proved with a signature, checked as every login to the
/// bastion checks it (the outer connection's and a recorded session's inner one):
/// [`verify_certificate`], then, once the certificate itself is good, the security key's
/// flags (`sk_flags`, from [`security_key_flags`]), as sshd does.
pub fn verify_signed_certificate(
    cert: &Certificate,
    trusted: &TrustedCas,
    policy: &Policy,
    peer: IpAddr,
    now: SystemTime,
    max_validity: Duration,
    sk_flags: Option<u8>,
) -> Result<CertIdentity, Refusal> {
    let id = verify_certificate(cert, trusted, policy, peer, now, max_validity)?;
    if let Some(flags) = sk_flags {
        check_security_key_flags(cert, flags)?;
    }
    Ok(id)
}

/// The rule to audit for `refusal` of `cert`: for a revocation, the `[[revoked]]` entry
/// that matched (file, line, what it names and why); otherwise the refusal's own rule.
/// `key_fingerprint` is the certificate's key's `SHA256:` fingerprint.
pub fn refusal_rule(
    refusal: &Refusal,
    policy: &Policy,
    cert: &Certificate,
    key_fingerprint: &str,
) -> String {
    match refusal {
        Refusal::Revoked => policy
            .revocation(Some(cert.serial()), cert.key_id(), key_fingerprint)
            .map(|(r, _)| crate::policy::carried::Lost::Revoked(r).rule())
            .unwrap_or_else(|| refusal.rule()),
        other => other.rule(),
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
#[path = "verify_tests.rs"]
mod tests;
