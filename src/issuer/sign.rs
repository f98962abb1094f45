//! Signing user and host certificates.

use std::time::{Duration, SystemTime};

use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Certificate, PublicKey};

use super::cert_fields::{BACKDATING, SOURCE_ADDRESS};
use super::keys::CaKey;
use super::plan::CertPlan;
use super::rng;

/// Why signing failed. These are faults (HTTP 500), not the caller's mistakes, except
/// [`SignError::KeyIsCertificate`] which [`super::accept_user_key`] already refuses.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key to sign is a certificate (docs/threats.md T10).
    #[error("the key to sign is itself a certificate")]
    KeyIsCertificate,
    /// The plan has no principal: it would be valid for every login (docs/threats.md T5).
    #[error("refusing to sign a certificate without principals")]
    NoPrincipals,
    /// The validity window is empty or unbounded.
    #[error("refusing to sign a certificate with validity {0}..{1}")]
    BadValidity(u64, u64),
    /// The plan carries a critical option drawbridge does not set.
    #[error("refusing to sign a certificate with critical option {0:?}")]
    UnknownCriticalOption(String),
    /// The operating system's random number generator failed.
    #[error("no randomness for the serial number: {0}")]
    Random(String),
    /// ssh-key refused to build or sign.
    #[error("signing failed: {0}")]
    Ssh(#[from] ssh_key::Error),
}

/// A signed certificate and its serial (for the audit record).
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub certificate: Certificate,
    pub serial: u64,
}

impl SignedCert {
    /// The certificate as one OpenSSH line (what `-cert.pub` files hold), with a
    /// trailing newline.
    pub fn openssh_line(&self) -> Result<String, SignError> {
        Ok(self.certificate.to_openssh()? + "\n")
    }
}

/// A random, non-zero serial.
pub fn random_serial() -> Result<u64, SignError> {
    loop {
        let s = getrandom::u64().map_err(|e| SignError::Random(e.to_string()))?;
        if s != 0 {
            return Ok(s);
        }
    }
}

fn check_key(key: &PublicKey) -> Result<(), SignError> {
    if key.key_data().is_certificate() {
        return Err(SignError::KeyIsCertificate);
    }
    Ok(())
}

/// Signs a user certificate for `key` as `plan` says, with the user CA `ca` and a
/// random non-zero serial. Checks the plan again (principals not empty, finite window,
/// only `source-address` as critical option) so no caller can sign a golden ticket.
pub fn sign_user_cert(
    ca: &CaKey,
    key: &PublicKey,
    plan: &CertPlan,
) -> Result<SignedCert, SignError> {
    check_key(key)?;
    if plan.principals.is_empty() || plan.principals.iter().any(String::is_empty) {
        return Err(SignError::NoPrincipals);
    }
    if plan.valid_before <= plan.valid_after || plan.valid_before == u64::MAX {
        return Err(SignError::BadValidity(plan.valid_after, plan.valid_before));
    }
    if let Some(name) = plan.critical_options.keys().find(|k| *k != SOURCE_ADDRESS) {
        return Err(SignError::UnknownCriticalOption(name.clone()));
    }
    let serial = random_serial()?;
    let mut b = Builder::new_with_random_nonce(
        &mut rng(),
        key.key_data().clone(),
        plan.valid_after,
        plan.valid_before,
    )?;
    b.serial(serial)?;
    b.cert_type(CertType::User)?;
    b.key_id(plan.key_id.as_str())?;
    for p in &plan.principals {
        b.valid_principal(p.as_str())?;
    }
    for (k, v) in &plan.critical_options {
        b.critical_option(k.as_str(), v.as_str())?;
    }
    for (k, v) in &plan.extensions {
        b.extension(k.as_str(), v.as_str())?;
    }
    let certificate = b.sign(ca.private())?;
    Ok(SignedCert {
        certificate,
        serial,
    })
}

/// Signs a host certificate for `key` with the host CA: key id and first principal
/// `principals[0]`, valid from now − 60 s for `validity`, no extensions.
pub fn sign_host_cert(
    host_ca: &CaKey,
    key: &PublicKey,
    principals: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<SignedCert, SignError> {
    check_key(key)?;
    let Some(first) = principals.first() else {
        return Err(SignError::NoPrincipals);
    };
    if principals.iter().any(String::is_empty) {
        return Err(SignError::NoPrincipals);
    }
    let now = crate::util::unix_secs(now);
    let valid_after = now.saturating_sub(BACKDATING.as_secs());
    let valid_before = now.saturating_add(validity.as_secs());
    if validity.is_zero() || valid_before == u64::MAX {
        return Err(SignError::BadValidity(valid_after, valid_before));
    }
    let serial = random_serial()?;
    let mut b = Builder::new_with_random_nonce(
        &mut rng(),
        key.key_data().clone(),
        valid_after,
        valid_before,
    )?;
    b.serial(serial)?;
    b.cert_type(CertType::Host)?;
    b.key_id(first.as_str())?;
    for p in principals {
        b.valid_principal(p.as_str())?;
    }
    let certificate = b.sign(host_ca.private())?;
    Ok(SignedCert {
        certificate,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn plan() -> CertPlan {
        CertPlan {
            key_id: "alice".into(),
            principals: vec!["ops".into()],
            valid_after: 1_800_000_000 - 60,
            valid_before: 1_800_000_300,
            ttl: Duration::from_secs(300),
            asked_ttl: Duration::from_secs(300),
            capped_by: None,
            extensions: BTreeMap::from([("permit-pty".into(), String::new())]),
            critical_options: BTreeMap::new(),
            omitted_groups: vec![],
        }
    }

    fn subject() -> PublicKey {
        CaKey::generate("subject").unwrap().public_key().clone()
    }

    #[test]
    fn signs_a_user_cert_the_ca_validates() {
        let ca = CaKey::generate("ca").unwrap();
        let s = sign_user_cert(&ca, &subject(), &plan()).unwrap();
        let c = &s.certificate;
        assert_ne!(s.serial, 0);
        assert_eq!(c.serial(), s.serial);
        assert_eq!(c.cert_type(), CertType::User);
        assert_eq!(c.key_id(), "alice");
        assert_eq!(c.valid_principals(), ["ops"]);
        let fp = ca.public_key().fingerprint(Default::default());
        c.validate_at(1_800_000_000, [&fp]).unwrap();
        assert!(
            s.openssh_line()
                .unwrap()
                .starts_with("ssh-ed25519-cert-v01@openssh.com ")
        );
        // Serials differ.
        let t = sign_user_cert(&ca, &subject(), &plan()).unwrap();
        assert_ne!(s.serial, t.serial);
    }

    #[test]
    fn refuses_golden_tickets_and_odd_plans() {
        let ca = CaKey::generate("ca").unwrap();
        let mut p = plan();
        p.principals.clear();
        assert!(matches!(
            sign_user_cert(&ca, &subject(), &p),
            Err(SignError::NoPrincipals)
        ));
        let mut p = plan();
        p.valid_before = u64::MAX;
        assert!(matches!(
            sign_user_cert(&ca, &subject(), &p),
            Err(SignError::BadValidity(..))
        ));
        let mut p = plan();
        p.critical_options
            .insert("force-command".into(), "/bin/sh".into());
        assert!(matches!(
            sign_user_cert(&ca, &subject(), &p),
            Err(SignError::UnknownCriticalOption(_))
        ));
        // A certificate as the key to sign.
        let cert = sign_user_cert(&ca, &subject(), &plan())
            .unwrap()
            .certificate;
        let as_key = PublicKey::from(ssh_key::public::KeyData::Certificate(Box::new(cert)));
        assert!(matches!(
            sign_user_cert(&ca, &as_key, &plan()),
            Err(SignError::KeyIsCertificate)
        ));
    }

    #[test]
    fn host_cert() {
        let ca = CaKey::generate("host ca").unwrap();
        let names = vec!["web-1".to_string(), "10.0.0.1".to_string()];
        let s = sign_host_cert(
            &ca,
            &subject(),
            &names,
            Duration::from_secs(86400),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(s.certificate.cert_type(), CertType::Host);
        assert_eq!(s.certificate.valid_principals(), names.as_slice());
        assert_eq!(s.certificate.key_id(), "web-1");
        assert!(
            sign_host_cert(
                &ca,
                &subject(),
                &[],
                Duration::from_secs(1),
                SystemTime::now()
            )
            .is_err()
        );
    }
}
