//! The target's host key check: the host CA's certificate naming the host, or exactly
//! the pinned key.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::{Algorithm, HashAlg, PrivateKey};

use super::check_host_key;
use crate::issuer::{CaKey, sign_host_cert};

fn key() -> PrivateKey {
    PrivateKey::random(&mut crate::issuer::rng(), Algorithm::Ed25519).unwrap()
}

/// `k` offered with a host certificate for web-1 signed by `ca`, valid a minute.
fn web1_cert(ca: &CaKey, k: &PrivateKey, now: SystemTime) -> PublicKeyOrCertificate {
    let c = sign_host_cert(
        ca,
        k.public_key(),
        &["web-1".into()],
        Duration::from_secs(60),
        now,
    )
    .unwrap();
    PublicKeyOrCertificate::Certificate(c.certificate)
}

fn bare(k: &PrivateKey) -> PublicKeyOrCertificate {
    PublicKeyOrCertificate::PublicKey {
        key: k.public_key().clone(),
        hash_alg: None,
    }
}

fn fp(k: &PrivateKey) -> String {
    k.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[test]
fn a_pinned_host_accepts_exactly_its_key_bare_or_certified() {
    let ca = CaKey::generate("host ca").unwrap();
    let now = SystemTime::now();
    let pinned = key();
    let other = key();
    let pin = fp(&pinned);
    let check = |offered: &PublicKeyOrCertificate| {
        check_host_key(offered, ca.public_key(), "web-1", Some(&pin), now)
    };
    assert_eq!(check(&bare(&pinned)), Ok(()));
    let err = check(&bare(&other)).unwrap_err();
    assert!(err.contains(&fp(&other)) && err.contains(&pin), "{err}");
    // A host CA certificate naming the host does not replace the pin.
    let cert = |k: &PrivateKey| web1_cert(&ca, k, now);
    assert_eq!(check(&cert(&pinned)), Ok(()));
    let err = check(&cert(&other)).unwrap_err();
    assert!(err.contains("key in the host certificate"), "{err}");
}

#[test]
fn without_a_pin_only_the_host_cas_certificate_for_the_name() {
    let ca = CaKey::generate("host ca").unwrap();
    let now = SystemTime::now();
    let k = key();
    let err = check_host_key(&bare(&k), ca.public_key(), "web-1", None, now).unwrap_err();
    assert!(err.contains("a bare host key"), "{err}");
    let offered = web1_cert(&ca, &k, now);
    assert_eq!(
        check_host_key(&offered, ca.public_key(), "web-1", None, now),
        Ok(())
    );
    let err = check_host_key(&offered, ca.public_key(), "web-2", None, now).unwrap_err();
    assert!(err.contains("not for web-2"), "{err}");
}
