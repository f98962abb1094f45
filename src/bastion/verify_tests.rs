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
    assert!(verify_certificate(&cert, &trusted, &Policy::default(), peer(), now(), MAX).is_ok());
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
                let r = verify_certificate(&c, &trusted, &Policy::default(), peer(), now(), MAX);
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

#[test]
fn a_signed_certificate_is_checked_whole_before_its_security_key_flags() {
    let (ca, user) = (key(), key());
    let trusted = TrustedCas::new(&[ca.public_key().clone()]);
    let check_signed = |cert: &Certificate, policy: &Policy, flags: Option<u8>| {
        verify_signed_certificate(cert, &trusted, policy, peer(), now(), MAX, flags)
    };
    let cert = sign(&ca, &user, Spec::default());
    let none = Policy::default();
    assert!(check_signed(&cert, &none, None).is_ok());
    assert!(check_signed(&cert, &none, Some(SK_USER_PRESENT)).is_ok());
    // An untouched security key is refused for that...
    assert_eq!(
        check_signed(&cert, &none, Some(0)),
        Err(Refusal::SkNoUserPresence)
    );
    // ...but a certificate that is bad in itself is refused for what is wrong with it,
    // whatever the flags: the revocation is what the user and the audit log must see.
    assert_eq!(
        check_signed(&cert, &revoked(Some(42), None), Some(0)),
        Err(Refusal::Revoked)
    );
}

#[test]
fn a_revocation_is_audited_with_the_entry_that_matched() {
    let (ca, user) = (key(), key());
    let cert = sign(&ca, &user, Spec::default());
    let fingerprint = user.public_key().fingerprint(HashAlg::Sha256).to_string();
    let policy = revoked(Some(42), None);
    let rule = refusal_rule(&Refusal::Revoked, &policy, &cert, &fingerprint);
    assert!(
        rule.starts_with("[[revoked]] ") && rule.ends_with("(serial 42: laptop lost)"),
        "{rule}"
    );
    // No entry matches (the policy changed since): the refusal's own rule.
    assert_eq!(
        refusal_rule(&Refusal::Revoked, &Policy::default(), &cert, &fingerprint),
        Refusal::Revoked.rule()
    );
    assert_eq!(
        refusal_rule(&Refusal::UntrustedCa, &policy, &cert, &fingerprint),
        Refusal::UntrustedCa.rule()
    );
}
