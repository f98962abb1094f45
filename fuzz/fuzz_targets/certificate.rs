//! Certificate parsing and the bastion's certificate check (docs/threats.md T1–T13): any bytes
//! a client can offer are parsed by ssh-key (binary, or an OpenSSH line) and then judged by
//! `verify_certificate` against a fixed trusted CA and the example policy. Never a panic;
//! an accepted certificate always meets every rule.
//!
//! Mutated certificates rarely keep a valid signature, so each parsed certificate is also
//! re-signed, fields unchanged, by the trusted CA: that reaches the type, validity,
//! principal, critical-option and revocation checks with fuzzer-chosen values.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use drawbridge::bastion::verify::{TrustedCas, verify_certificate};
use drawbridge::policy::{Policy, SourceFile};
use libfuzzer_sys::fuzz_target;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Certificate, HashAlg, PrivateKey};

/// The seeds in `seeds/certificate` are valid in the hour from 2026-01-01T00:00:00Z.
const SEED_NOW: u64 = 1_767_225_600 + 1_800;
/// `certs.max_ttl` (1 h) plus the issuer's 60 s backdating.
const MAX_VALIDITY: Duration = Duration::from_secs(3_660);

struct Fixture {
    ca: PrivateKey,
    trusted: TrustedCas,
    policy: Policy,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca =
            PrivateKey::from_openssh(include_str!("../fixtures/user_ca")).expect("fixture CA key");
        let trusted = TrustedCas::new(&[ca.public_key().clone()]);
        let file = |rel: &str, text: &str| SourceFile {
            rel: rel.into(),
            display: rel.into(),
            text: text.into(),
        };
        let policy = Policy::from_files(&[
            file("hosts.toml", include_str!("../../policies/hosts.toml")),
            file("people.toml", include_str!("../../policies/people.toml")),
            file(
                "principals.toml",
                include_str!("../../policies/principals.toml"),
            ),
            file("revoked.toml", include_str!("../../policies/revoked.toml")),
        ])
        .expect("the example policy loads");
        // Self-check: a well-formed certificate from this CA is accepted at SEED_NOW, so
        // the re-signed inputs reach every check.
        let user = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[9; 32]));
        let mut b = Builder::new(
            vec![0; 16],
            user.public_key().key_data().clone(),
            SEED_NOW - 60,
            SEED_NOW + 300,
        )
        .expect("builder");
        b.cert_type(CertType::User).expect("type");
        b.key_id("fuzz").expect("key id");
        b.valid_principal("web-deploy").expect("principal");
        let good = b.sign(&ca).expect("sign");
        let now = UNIX_EPOCH + Duration::from_secs(SEED_NOW);
        verify_certificate(
            &good,
            &trusted,
            &policy,
            [192, 0, 2, 1].into(),
            now,
            MAX_VALIDITY,
        )
        .expect("the fixture certificate is accepted");
        Fixture {
            ca,
            trusted,
            policy,
        }
    })
}

fn check(cert: &Certificate, now_secs: u64) {
    let f = fixture();
    let Some(now) = UNIX_EPOCH.checked_add(Duration::from_secs(now_secs)) else {
        return;
    };
    for peer in ["192.0.2.10", "2001:db8::1", "::ffff:10.0.0.1"] {
        let peer: IpAddr = peer.parse().expect("literal address");
        let Ok(id) = verify_certificate(cert, &f.trusted, &f.policy, peer, now, MAX_VALIDITY)
        else {
            continue;
        };
        // Accepted: every rule holds.
        assert!(!cert.signature_key().is_certificate());
        assert_eq!(
            cert.signature_key().fingerprint(HashAlg::Sha256),
            f.ca.public_key().fingerprint(HashAlg::Sha256)
        );
        assert_eq!(cert.cert_type(), CertType::User);
        assert_ne!(cert.valid_before(), u64::MAX);
        assert!(cert.valid_after() <= now_secs && now_secs < cert.valid_before());
        assert!(cert.valid_before() - cert.valid_after() <= MAX_VALIDITY.as_secs());
        assert!(!id.principals.is_empty());
        let key = cert.public_key().fingerprint(HashAlg::Sha256).to_string();
        assert!(
            f.policy
                .revocation(Some(cert.serial()), cert.key_id(), &key)
                .is_none()
        );
        for (name, _) in cert.critical_options().iter() {
            assert_eq!(name, "source-address");
        }
    }
}

/// The same fields, signed by the trusted CA.
fn resign(cert: &Certificate) -> Option<Certificate> {
    let mut b = Builder::new(
        cert.nonce().to_vec(),
        cert.public_key().clone(),
        cert.valid_after(),
        cert.valid_before(),
    )
    .ok()?;
    b.serial(cert.serial()).ok()?;
    b.cert_type(cert.cert_type()).ok()?;
    b.key_id(cert.key_id()).ok()?;
    if cert.valid_principals().is_empty() {
        b.all_principals_valid().ok()?;
    }
    for p in cert.valid_principals() {
        b.valid_principal(p.as_str()).ok()?;
    }
    for (k, v) in cert.critical_options().iter() {
        b.critical_option(k.as_str(), v.as_str()).ok()?;
    }
    for (k, v) in cert.extensions().iter() {
        b.extension(k.as_str(), v.as_str()).ok()?;
    }
    b.sign(&fixture().ca).ok()
}

fuzz_target!(|data: &[u8]| {
    let parsed = match std::str::from_utf8(data) {
        Ok(text) if !text.is_empty() && text.as_bytes()[0].is_ascii_alphabetic() => {
            Certificate::from_openssh(text)
        }
        _ => Certificate::from_bytes(data),
    };
    let Ok(cert) = parsed else {
        return;
    };
    check(&cert, SEED_NOW);
    if let Some(signed) = resign(&cert) {
        let va = signed.valid_after();
        let vb = signed.valid_before();
        check(&signed, va + (vb - va) / 2);
        check(&signed, SEED_NOW);
    }
    // What parsed re-encodes.
    let _ = cert.to_bytes();
});
