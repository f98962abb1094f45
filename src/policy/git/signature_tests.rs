//! SSHSIG checks of commit objects made by real `git commit -S` and `ssh-keygen -Y sign`
//! (in `testdata/`: alice signed `signed.commit`; `mallory.commit` is signed by another
//! key; `file-namespace.commit` carries alice's signature of the same payload made in the
//! namespace `file`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::signature::{parse_commit, verify};
use super::signers::AllowedSigners;
use crate::audit::RefusalCode;

const SIGNED: &[u8] = include_bytes!("testdata/signed.commit");
const MALLORY: &[u8] = include_bytes!("testdata/mallory.commit");
const FILE_NAMESPACE: &[u8] = include_bytes!("testdata/file-namespace.commit");
const ALICE_PUB: &str = include_str!("testdata/alice.pub");

/// 2026-12-01, after the commits were made.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_100_000)
}

fn signers(options: &str) -> AllowedSigners {
    let key = ALICE_PUB.trim();
    AllowedSigners::parse(
        "allowed_signers",
        &format!("alice@example.org {options} {key}\n"),
    )
    .unwrap()
}

#[test]
fn a_commit_signed_by_an_allowed_key_verifies() {
    let c = parse_commit(SIGNED).unwrap();
    assert_eq!(c.tree, "123abc3bbea34b7e76c019e5d784eb42ab41e03c");
    assert_eq!(c.committer_email, "alice@example.org");
    assert!(!String::from_utf8_lossy(&c.payload).contains("gpgsig"));
    let s = verify(&c, &signers(""), now()).unwrap();
    assert_eq!(s.principals, "alice@example.org");
    assert_eq!(s.line, "allowed_signers:1");
    assert!(s.fingerprint.starts_with("SHA256:"), "{s:?}");
}

#[test]
fn a_tampered_payload_does_not_verify() {
    // The tree a signed commit names, changed by one character: the same signature over
    // other bytes.
    let raw = String::from_utf8(SIGNED.to_vec()).unwrap().replace(
        "tree 123abc3bbea34b7e76c019e5d784eb42ab41e03c",
        "tree 123abc3bbea34b7e76c019e5d784eb42ab41e03d",
    );
    let c = parse_commit(raw.as_bytes()).unwrap();
    let e = verify(&c, &signers(""), now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::BadCommitSignature, "{e}");
    assert!(e.message.contains("does not verify"), "{e}");
    // The message changed too.
    let raw = String::from_utf8(SIGNED.to_vec())
        .unwrap()
        .replace("a signed commit", "a signed commit!");
    let e = verify(&parse_commit(raw.as_bytes()).unwrap(), &signers(""), now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::BadCommitSignature, "{e}");
}

#[test]
fn a_signature_in_another_namespace_is_refused() {
    let c = parse_commit(FILE_NAMESPACE).unwrap();
    let e = verify(&c, &signers(""), now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::BadCommitSignature, "{e}");
    assert!(e.message.contains("namespace \"file\""), "{e}");
}

#[test]
fn a_key_not_in_allowed_signers_is_refused() {
    let c = parse_commit(MALLORY).unwrap();
    let e = verify(&c, &signers(""), now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::UnknownSigner, "{e}");
    assert!(e.message.contains("not in the allowed signers"), "{e}");
}

#[test]
fn a_line_past_valid_before_or_before_valid_after_does_not_apply() {
    let c = parse_commit(SIGNED).unwrap();
    for options in [
        "valid-before=\"20261130Z\"",
        "valid-after=\"20261202Z\"",
        "namespaces=\"file\"",
    ] {
        let e = verify(&c, &signers(options), now()).unwrap_err();
        assert_eq!(e.code, RefusalCode::UnknownSigner, "{options}: {e}");
        assert!(e.message.contains("allowed_signers:1"), "{e}");
    }
    // Inside its window, and with git among its namespaces, the line applies.
    let ok =
        signers("valid-after=\"20261130Z\",valid-before=\"20261202Z\",namespaces=\"file,git\"");
    verify(&c, &ok, now()).unwrap();
}

#[test]
fn the_principal_must_match_the_committer() {
    let key = ALICE_PUB.trim();
    let s = AllowedSigners::parse("f", &format!("bob@example.org {key}\n")).unwrap();
    let e = verify(&parse_commit(SIGNED).unwrap(), &s, now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::UnknownSigner, "{e}");
    assert!(e.message.contains("not for the committer"), "{e}");
    let s = AllowedSigners::parse("f", &format!("*@example.org {key}\n")).unwrap();
    verify(&parse_commit(SIGNED).unwrap(), &s, now()).unwrap();
}

#[test]
fn an_unsigned_commit_is_refused_as_unsigned() {
    let raw = String::from_utf8(SIGNED.to_vec()).unwrap();
    let unsigned: String = {
        let c = parse_commit(raw.as_bytes()).unwrap();
        String::from_utf8(c.payload).unwrap()
    };
    let e = verify(
        &parse_commit(unsigned.as_bytes()).unwrap(),
        &signers(""),
        now(),
    )
    .unwrap_err();
    assert_eq!(e.code, RefusalCode::Unsigned, "{e}");
}

#[test]
fn malformed_commits_are_errors() {
    assert!(parse_commit(b"tree x\n").is_err());
    let two =
        String::from_utf8(SIGNED.to_vec())
            .unwrap()
            .replacen("gpgsig ", "gpgsig x\ngpgsig ", 1);
    assert!(
        parse_commit(two.as_bytes())
            .unwrap_err()
            .contains("two gpgsig")
    );
}

/// `signed.commit`'s payload signed by a software security key (`sk-ssh-ed25519`) with
/// the authenticator `flags`, as the commit object and the allowed_signers line for it
/// (with `options`).
fn security_key_commit(flags: u8, options: &str) -> (Vec<u8>, AllowedSigners) {
    use ed25519_dalek::Signer as _;
    use sha2::{Digest, Sha256};
    use ssh_key::public::{Ed25519PublicKey, KeyData, SkEd25519};
    use ssh_key::{Algorithm, HashAlg, LineEnding, Signature, SshSig};

    let payload = parse_commit(SIGNED).unwrap().payload;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let application = "ssh:";
    let key = KeyData::SkEd25519(SkEd25519::new(
        Ed25519PublicKey(sk.verifying_key().to_bytes()),
        application,
    ));
    let signed_data = SshSig::signed_data("git", HashAlg::Sha512, &payload).unwrap();
    let trailer = [flags, 0, 0, 0, 1];
    let mut message = Sha256::digest(application.as_bytes()).to_vec();
    message.extend_from_slice(&trailer);
    message.extend_from_slice(&Sha256::digest(&signed_data));
    let mut data = sk.sign(&message).to_bytes().to_vec();
    data.extend_from_slice(&trailer);
    let sig = SshSig::new(
        key.clone(),
        "git",
        HashAlg::Sha512,
        Signature::new(Algorithm::SkEd25519, data).unwrap(),
    )
    .unwrap();
    let pem = sig.to_pem(LineEnding::LF).unwrap();
    let header: String = pem
        .trim_end()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("gpgsig {l}\n")
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    let text = String::from_utf8(payload).unwrap();
    let (head, message) = text.split_once("\n\n").unwrap();
    let raw = format!("{head}\n{header}\n{message}").into_bytes();
    let public = ssh_key::PublicKey::from(key).to_openssh().unwrap();
    let signers =
        AllowedSigners::parse("f", &format!("alice@example.org {options} {public}\n")).unwrap();
    (raw, signers)
}

#[test]
fn a_security_key_signature_needs_the_touch_unless_the_line_waives_it() {
    // Touched (user presence): applies.
    let (raw, s) = security_key_commit(0x01, "");
    verify(&parse_commit(&raw).unwrap(), &s, now()).unwrap();
    // Not touched: refused, unless the line says no-touch-required.
    let (raw, s) = security_key_commit(0x00, "");
    let e = verify(&parse_commit(&raw).unwrap(), &s, now()).unwrap_err();
    assert_eq!(e.code, RefusalCode::BadCommitSignature, "{e}");
    assert!(e.message.contains("without a touch"), "{e}");
    let (raw, s) = security_key_commit(0x00, "no-touch-required");
    verify(&parse_commit(&raw).unwrap(), &s, now()).unwrap();
    // verify-required: the PIN flag too.
    let (raw, s) = security_key_commit(0x01, "verify-required");
    let e = verify(&parse_commit(&raw).unwrap(), &s, now()).unwrap_err();
    assert!(e.message.contains("without user verification"), "{e}");
    let (raw, s) = security_key_commit(0x05, "verify-required");
    verify(&parse_commit(&raw).unwrap(), &s, now()).unwrap();
}
