//! docs/threats.md, "Inputs that must be refused (SSH side)": one test per row (1–22), named
//! after it, against the real binary (`support::dmz`) with a real OpenSSH `sshd` as the DMZ
//! host. Each drives the OpenSSH client where it can make the input, the russh client
//! (`support::wire`) or the `ssh-key` crate where it cannot, and the raw protocol client
//! (`support::rawssh`) for hand-made packets; each asserts the refusal, what the user is
//! shown (ssh's stderr, a channel-open failure's text, a disconnect) and the audit record
//! with its `reason`.
//!
//! Authentication refusals carry no text in SSH: the user sees `Permission denied
//! (publickey)` and the reason is in the audit log (src/bastion/mod.rs, "Refusal
//! messages"). Pre-authentication protocol garbage (rows 19–21) is not audited by design
//! (a flood must not drive the log); those tests assert that nothing was recorded.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::dmz::{self, Bastion, assert_permission_denied};
use crate::support::net::Sink;
use crate::support::process::{KillOnDrop, run_ok, wait_for_port, wait_until};
use crate::support::rawssh::{self, Raw};
use crate::support::rawssh_session::{self, Session};
use crate::support::ssh::{Ca, Key, fingerprint, refused};
use crate::support::wire::{self, bounded};
use serde_json::Value;
use ssh_key::certificate::{Builder, CertType};

fn with_role(bld: &mut Builder) {
    bld.valid_principal("web-admin").unwrap();
}

/// Writes `cert` (made with the ssh-key crate) where `ssh` looks for `key`'s certificate.
fn install_cert(key: &Key, cert: &ssh_key::Certificate) {
    std::fs::write(key.cert(), cert.to_openssh().unwrap()).unwrap();
}

/// Counts `ssh.auth.failed` records with `reason` refused inside russh that carry no key
/// fingerprint (a client that did not fall back to the bare key).
fn unkeyed(b: &Bastion, reason: &str) -> usize {
    b.find(
        "ssh.auth.failed",
        &[("reason", reason), ("refused_by", "russh")],
    )
    .into_iter()
    .filter(|r| r["key_fingerprint"].is_null())
    .count()
}

/// The certificate refusal for `fp` with `reason`, then the OpenSSH client's fallback to
/// the bare key on the same connection, refused as `no-certificate`.
#[track_caller]
fn refused_then_fallback(b: &Bastion, reason: &str, fp: &str) -> Value {
    let rec = b.auth_failed(reason, fp);
    let fallback = b.auth_failed("no-certificate", fp);
    assert_eq!(
        fallback["rule"], "bastion.certificate-required",
        "{fallback}"
    );
    assert!(
        fallback["policy_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{fallback}"
    );
    assert_eq!(fallback["conn"], rec["conn"], "{rec}\n{fallback}");
    assert!(
        b.find("ssh.auth.ok", &[("key_fingerprint", fp)]).is_empty(),
        "{fp} got in"
    );
    rec
}

/// A certificate `ssh-keygen -s` makes from the bastion's own user CA (principal
/// web-admin) that the bastion must refuse, as the OpenSSH client offers it.
struct RefusedCert {
    /// The threat row it belongs to.
    row: u8,
    name: &'static str,
    key_id: &'static str,
    /// `ssh-keygen -V`.
    validity: &'static str,
    serial: u64,
    /// `ssh-keygen -O` values.
    options: &'static [&'static str],
    reason: &'static str,
    /// What the refusal says (the whole message, or the part that does not vary).
    message: &'static str,
}

/// The certificate rows that share one shape: made by `ssh-keygen`, offered by `ssh`,
/// refused with a reason, then the client's fallback to the bare key refused too.
const REFUSED_CERTS: &[RefusedCert] = &[
    RefusedCert {
        row: 6,
        name: "forever",
        key_id: "alice",
        validity: "-1m:forever",
        serial: 63,
        options: &[],
        reason: "no-expiry",
        message: "certificate never expires; refused",
    },
    RefusedCert {
        row: 6,
        name: "long",
        key_id: "alice",
        // Longer than the global maximum (certs.max_ttl = 1h, plus the 60 s backdating).
        validity: "-1m:+2h",
        serial: 64,
        options: &[],
        reason: "validity-too-long",
        message: "longer than the maximum 3660 s",
    },
    RefusedCert {
        row: 7,
        name: "forced",
        key_id: "alice",
        validity: "-1m:+5m",
        serial: 71,
        options: &["force-command=/bin/true"],
        reason: "force-command",
        message: "certificate has force-command; the bastion runs no commands",
    },
    RefusedCert {
        row: 7,
        name: "odd",
        key_id: "alice",
        validity: "-1m:+5m",
        serial: 72,
        options: &["critical:frobnicate@example.com=yes"],
        reason: "unknown-critical-option",
        message: "certificate has an unknown critical option: frobnicate@example.com",
    },
    RefusedCert {
        row: 8,
        name: "far",
        key_id: "alice",
        // A network the connection does not come from.
        validity: "-1m:+5m",
        serial: 81,
        options: &["source-address=192.0.2.0/24"],
        reason: "source-address-mismatch",
        message: "connection does not come from the certificate's source-address",
    },
    RefusedCert {
        row: 11,
        name: "lost",
        key_id: "alice",
        validity: "-1m:+5m",
        // Revoked by serial in the test policy.
        serial: 666,
        options: &[],
        reason: "revoked",
        message: "certificate is revoked",
    },
    RefusedCert {
        row: 11,
        name: "stolen",
        // Revoked by key id in the test policy.
        key_id: "stolen",
        validity: "-1m:+5m",
        serial: 1102,
        options: &[],
        reason: "revoked",
        message: "certificate is revoked",
    },
];

/// Offers every certificate of threat row `row` in [`REFUSED_CERTS`] through the OpenSSH
/// client: ssh says `Permission denied`, the audit record has the reason, serial, key id
/// and message, and the fallback to the bare key is refused on the same connection.
/// Returns the keys, by name, for a test that goes on with them.
#[track_caller]
fn refuse_certs(b: &Bastion, row: u8) -> Vec<(&'static str, Key)> {
    let rows: Vec<&RefusedCert> = REFUSED_CERTS.iter().filter(|c| c.row == row).collect();
    assert!(!rows.is_empty(), "no certificate rows for row {row}");
    rows.into_iter()
        .map(|c| {
            let key = b.user(
                c.name,
                c.key_id,
                &["web-admin"],
                c.validity,
                c.serial,
                c.options,
            );
            let out = b.client(c.name, &key).run(&["bastion", "whoami"]);
            assert_permission_denied(&out);
            let rec = refused_then_fallback(b, c.reason, &fingerprint(&key));
            assert_eq!(rec["serial"], c.serial, "{}: {rec}", c.name);
            assert_eq!(rec["key_id"], c.key_id, "{}: {rec}", c.name);
            // The rule that refused: the [[revoked]] entry with its file and line, or
            // the certificate check by name (the config key for a too-long validity).
            let rule = rec["rule"].as_str().unwrap_or_default();
            let expected = match c.reason {
                "revoked" => rule.starts_with("[[revoked]] ") && rule.contains("revoked.toml:"),
                "validity-too-long" => rule == "certs.max_ttl",
                other => rule == format!("certificate.{other}"),
            };
            assert!(expected, "{}: rule {rule:?} in {rec}", c.name);
            assert!(
                rec["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(c.message)),
                "{}: {rec}",
                c.name
            );
            (c.name, key)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Row 1

#[test]
fn t01_untrusted_ca_refused() {
    let Some(mut b) = dmz::start() else { return };
    // Signed by a CA the bastion does not trust.
    let mallory = b.t.keygen("mallory");
    b.other_ca.sign_user(
        &mallory.public(),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        2,
        &[],
    );
    let out = b.client("mallory", &mallory).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    let rec = refused_then_fallback(&b, "untrusted-ca", &fingerprint(&mallory));
    assert_eq!(rec["serial"], 2);
    assert_eq!(rec["key_id"], "alice");
    assert_eq!(rec["ca_fingerprint"], fingerprint(&b.other_ca.key));
    assert_eq!(
        rec["message"],
        "certificate is not signed by a trusted user CA"
    );

    // Self-signed: the user key signs its own certificate.
    let selfie = b.t.keygen("selfie");
    Ca {
        key: selfie.clone(),
    }
    .sign_user(&selfie.public(), "alice", &["web-admin"], "-1m:+5m", 3, &[]);
    let out = b.client("selfie", &selfie).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    let rec = refused_then_fallback(&b, "untrusted-ca", &fingerprint(&selfie));
    assert_eq!(rec["serial"], 3);
    assert_eq!(rec["ca_fingerprint"], fingerprint(&selfie));

    assert!(b.refusals("untrusted-ca") >= 2);
    assert!(b.find("forward.opened", &[]).is_empty());
    b.assert_still_serving();
}

// ---------------------------------------------------------------------------------------
// Row 2

#[test]
fn t02_ca_public_key_as_user_key_refused() {
    let Some(b) = dmz::start() else { return };
    // The client holds the user CA's own key (no certificate beside it) and offers it.
    let ca = b.user_ca.key.clone();
    assert!(!ca.cert().exists());
    let out = b.client("ca", &ca).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    let rec = b.auth_failed("no-certificate", &fingerprint(&ca));
    assert_eq!(
        rec["message"],
        "a plain key is not accepted; get a certificate from drawbridge"
    );
    assert!(b.find("ssh.auth.ok", &[]).is_empty(), "{:#?}", b.records());
    assert!(b.refusals("no-certificate") >= 1);
}

// ---------------------------------------------------------------------------------------
// Row 3

#[test]
fn t03_plain_key_and_fallback_after_refused_cert_refused() {
    let Some(b) = dmz::start() else { return };
    // A plain key (no -cert.pub beside it).
    let plain = b.plain("plain");
    let out = b.client("plain", &plain).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    let fp = fingerprint(&plain);
    let rec = b.auth_failed("no-certificate", &fp);
    assert_eq!(
        rec["message"],
        "a plain key is not accepted; get a certificate from drawbridge"
    );
    assert_eq!(rec["ssh_user"], "plain");
    assert!(b.find("ssh.auth.ok", &[]).is_empty());

    // A certificate that is refused (revoked serial), then the client's own fallback to
    // the bare key of the same file: both refused, on the same connection.
    let lost = b.user("lost", "alice", &["web-admin"], "-1m:+5m", 666, &[]);
    let out = b.client("lost", &lost).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    refused_then_fallback(&b, "revoked", &fingerprint(&lost));
    assert!(b.find("ssh.auth.ok", &[]).is_empty());
    assert!(b.refusals("no-certificate") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 4

#[test]
fn t04_host_certificate_as_user_certificate_refused() {
    let Some(b) = dmz::start() else { return };
    // A host certificate from our (user) CA, with a role as its "host name". The OpenSSH
    // client does not even offer a host certificate for user authentication: it falls
    // back to the bare key, refused.
    let hosty = b.t.keygen("hosty");
    b.user_ca.sign_host(&hosty.public(), &["web-admin"]);
    let out = b.client("hosty", &hosty).run(&["web-1", "true"]);
    assert_permission_denied(&out);
    b.auth_failed("no-certificate", &fingerprint(&hosty));

    // The russh client sends it anyway.
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let rt = wire::runtime();
    rt.block_on(async {
        let c = wire::cert_with(&ca, &user, "alice", 4004, now - 60, now + 300, |bld| {
            with_role(bld);
            bld.cert_type(CertType::Host).unwrap();
        });
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(!ok, "a host certificate was accepted as a user certificate");
    });
    let rec = b.expect_record(
        "ssh.auth.failed",
        &[("reason", "not-user-certificate"), ("serial", "4004")],
    );
    assert_eq!(rec["message"], "not a user certificate");
    assert!(b.find("ssh.auth.ok", &[]).is_empty());
    assert!(b.refusals("not-user-certificate") >= 1);
}

// ---------------------------------------------------------------------------------------
// Row 5

#[test]
fn t05_empty_principals_refused() {
    let Some(b) = dmz::start() else { return };
    // ssh-keygen without -n: a certificate with no principals ("anyone" to ssh-key).
    let anyone = b.t.keygen("anyone");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&b.user_ca.key.path)
            .args(["-I", "alice", "-V", "-1m:+5m", "-z", "5"])
            .arg(anyone.public()),
    );
    let out = b.client("anyone", &anyone).run(&["bastion", "whoami"]);
    assert_permission_denied(&out);
    let rec = refused_then_fallback(&b, "no-principals", &fingerprint(&anyone));
    assert_eq!(rec["serial"], 5);
    assert_eq!(rec["message"], "certificate has no principals");

    // The russh client: no principals, and one empty principal.
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let rt = wire::runtime();
    rt.block_on(async {
        let c = wire::cert_with(&ca, &user, "alice", 5005, now - 60, now + 300, |bld| {
            bld.all_principals_valid().unwrap();
        });
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(!ok, "a certificate with no principals was accepted");
        let c = wire::cert_with(&ca, &user, "alice", 5006, now - 60, now + 300, |bld| {
            bld.valid_principal("").unwrap();
        });
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(!ok, "a certificate with an empty principal was accepted");
        // The same key and CA with a principal gets in: the refusals were about them.
        let c = wire::cert_with(&ca, &user, "alice", 5007, now - 60, now + 300, with_role);
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(ok, "a good certificate was refused");
    });
    for serial in ["5005", "5006"] {
        b.expect_record(
            "ssh.auth.failed",
            &[("reason", "no-principals"), ("serial", serial)],
        );
    }
    b.expect_record("ssh.auth.ok", &[("serial", "5007")]);
    assert!(b.find("ssh.auth.ok", &[("serial", "5")]).is_empty());
    assert!(b.refusals("no-principals") >= 3);
}

// ---------------------------------------------------------------------------------------
// Row 6

#[test]
fn t06_expired_not_yet_valid_forever_and_too_long_refused() {
    let Some(b) = dmz::start() else { return };
    // Expired and not yet valid: russh refuses them before drawbridge's handler; the
    // capture of its log line audits them (src/bastion/lib_refusals.rs), with the key
    // the OpenSSH client falls back to.
    for (name, validity, serial) in [("stale", "-20m:-10m", 61u64), ("early", "+10m:+20m", 62)] {
        let key = b.user(name, "alice", &["web-admin"], validity, serial, &[]);
        let out = b.client(name, &key).run(&["bastion", "whoami"]);
        assert_permission_denied(&out);
        let fp = fingerprint(&key);
        let rec = b.expect_record(
            "ssh.auth.failed",
            &[
                ("reason", "expired"),
                ("key_fingerprint", &fp),
                ("ssh_user", name),
                ("refused_by", "russh"),
            ],
        );
        assert!(
            rec["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{rec}"
        );
        assert!(rec["conn"].as_u64().is_some(), "{rec}");
        assert!(
            rec["message"]
                .as_str()
                .is_some_and(|m| m.contains("validity window")),
            "{rec}"
        );
        refused_then_fallback(&b, "expired", &fp);
        // One record per refused certificate.
        assert_eq!(
            b.find(
                "ssh.auth.failed",
                &[("reason", "expired"), ("key_fingerprint", &fp)]
            )
            .len(),
            1
        );
    }
    // Forever (valid_before = u64::MAX, which russh does not check) and longer than the
    // maximum: ssh-keygen makes them.
    refuse_certs(&b, 6);

    // The russh client, which does not fall back: expired and not yet valid are audited
    // when the connection ends, with no key fingerprint; forever and too long as above.
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let rt = wire::threaded_runtime();
    rt.block_on(async {
        for (after, before) in [(now - 1200, now - 600), (now + 600, now + 1200)] {
            let c = wire::cert_with(&ca, &user, "alice", 6001, after, before, with_role);
            let (h, ok) = bounded(wire::login(b.port(), &user, c)).await;
            assert!(!ok, "a certificate outside its window was accepted");
            drop(h);
        }
        let c = wire::cert_with(&ca, &user, "alice", 6003, now - 60, u64::MAX, with_role);
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(!ok, "a certificate that never expires was accepted");
        let c = wire::cert_with(&ca, &user, "alice", 6004, now - 60, now + 7200, with_role);
        let (_, ok) = bounded(wire::login(b.port(), &user, c)).await;
        assert!(!ok, "a certificate longer than the maximum was accepted");
    });
    wait_until(
        Duration::from_secs(5),
        || unkeyed(&b, "expired") == 2,
        || format!("{:#?}", b.records()),
    );
    assert_eq!(unkeyed(&b, "expired"), 2, "{:#?}", b.records());
    b.expect_record(
        "ssh.auth.failed",
        &[("reason", "no-expiry"), ("serial", "6003")],
    );
    b.expect_record(
        "ssh.auth.failed",
        &[("reason", "validity-too-long"), ("serial", "6004")],
    );
    assert!(b.find("ssh.auth.ok", &[]).is_empty(), "{:#?}", b.records());
    assert!(b.refusals("expired") >= 4);
    assert!(b.refusals("no-expiry") >= 2);
    assert!(b.refusals("validity-too-long") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 7

#[test]
fn t07_force_command_and_unknown_critical_option_refused() {
    let Some(b) = dmz::start() else { return };
    refuse_certs(&b, 7);
    assert!(b.find("forward.opened", &[]).is_empty());
    assert!(b.refusals("force-command") >= 1);
    assert!(b.refusals("unknown-critical-option") >= 1);
}

// ---------------------------------------------------------------------------------------
// Row 8

#[test]
fn t08_source_address_mismatch_and_malformed_refused() {
    let Some(b) = dmz::start() else { return };
    refuse_certs(&b, 8);

    // 127.0.0.1 only: accepted from 127.0.0.1, refused from 127.0.0.2 (the real peer
    // address is what counts).
    let here = b.user(
        "here",
        "alice",
        &["web-admin"],
        "-1m:+5m",
        82,
        &["source-address=127.0.0.1/32"],
    );
    let c = b.client("here", &here);
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    let out = c.run(&["-o", "BindAddress=127.0.0.2", "bastion", "whoami"]);
    assert_permission_denied(&out);
    let rec = b.expect_record(
        "ssh.auth.failed",
        &[("reason", "source-address-mismatch"), ("serial", "82")],
    );
    assert!(
        rec["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.2:")),
        "{rec}"
    );

    // Malformed source-address lists (ssh-keygen will not write them; ssh-key will, and
    // the OpenSSH client offers them).
    let ca = b.ca_key();
    for (name, list, serial) in [
        ("hostbits", "127.0.0.1/8", 83u64),
        ("garbage", "not-an-address", 84),
        ("empty-entry", "127.0.0.1,,10.0.0.0/8", 85),
    ] {
        let key = b.t.keygen(name);
        let now = wire::now();
        let cert = wire::cert_with(
            &ca,
            &wire::read_key(&key.path),
            "alice",
            serial,
            now - 60,
            now + 300,
            |bld| {
                with_role(bld);
                bld.critical_option("source-address", list).unwrap();
            },
        );
        install_cert(&key, &cert);
        let out = b.client(name, &key).run(&["bastion", "whoami"]);
        assert_permission_denied(&out);
        let rec = refused_then_fallback(&b, "bad-source-address", &fingerprint(&key));
        assert_eq!(rec["serial"], serial);
        assert_eq!(
            rec["message"],
            "certificate has a malformed source-address option"
        );
    }
    assert!(b.refusals("bad-source-address") >= 3);
    assert!(b.refusals("source-address-mismatch") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 9

#[test]
fn t09_flipped_byte_or_bad_ca_signature_refused_without_panic() {
    let Some(mut b) = dmz::start() else { return };
    let ca = b.ca_key();
    let other = wire::read_key(&b.other_ca.key.path);
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let good = wire::cert_with(&ca, &user, "alice", 9001, now - 60, now + 300, with_role);
    let bytes = good.to_bytes().unwrap();
    let rt = wire::threaded_runtime();
    let tried = rt.block_on(async {
        // One bit of the signature flipped.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let bad = ssh_key::Certificate::from_bytes(&flipped).unwrap();
        assert!(bad.verify_signature().is_err());
        let (h, ok) = bounded(wire::login(b.port(), &user, bad)).await;
        assert!(
            !ok,
            "a certificate with a flipped signature bit was accepted"
        );
        drop(h);

        // Signed by another CA, claiming ours as its signer.
        let foreign = wire::cert_with(&other, &user, "alice", 9002, now - 60, now + 300, with_role);
        let mut forged = foreign.to_bytes().unwrap();
        let theirs = other.public_key().to_bytes().unwrap();
        let ours = ca.public_key().to_bytes().unwrap();
        assert_eq!(theirs.len(), ours.len());
        let pos = forged
            .windows(theirs.len())
            .position(|w| w == theirs.as_slice())
            .unwrap();
        forged[pos..pos + ours.len()].copy_from_slice(&ours);
        let forged = ssh_key::Certificate::from_bytes(&forged).unwrap();
        let (h, ok) = bounded(wire::login(b.port(), &user, forged)).await;
        assert!(!ok, "a certificate with a bad CA signature was accepted");
        drop(h);

        // A flipped byte anywhere else: refused whatever the field, never accepted.
        let mut tried = 0;
        for i in (0..bytes.len() - 1).step_by(bytes.len() / 16 + 1) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x20;
            let Ok(c) = ssh_key::Certificate::from_bytes(&flipped) else {
                continue;
            };
            tried += 1;
            let (h, ok) = bounded(wire::login(b.port(), &user, c)).await;
            assert!(!ok, "a certificate with byte {i} flipped was accepted");
            drop(h);
        }
        tried
    });
    assert!(tried >= 8, "only {tried} flipped certificates parsed");
    wait_until(
        Duration::from_secs(5),
        || unkeyed(&b, "bad-signature") >= 2,
        || format!("{:#?}", b.records()),
    );
    let bad = b.find(
        "ssh.auth.failed",
        &[("reason", "bad-signature"), ("refused_by", "russh")],
    );
    assert!(bad.len() >= 2, "{:#?}", b.records());
    assert!(
        bad[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("signature invalid")),
        "{}",
        bad[0]
    );
    assert!(b.find("ssh.auth.ok", &[]).is_empty(), "{:#?}", b.records());
    assert!(b.refusals("bad-signature") >= 2);
    // No panic; the unflipped certificate still gets in.
    b.assert_healthy();
    rt.block_on(async {
        let (_, ok) = bounded(wire::login(b.port(), &user, good)).await;
        assert!(ok, "the good certificate was refused");
    });
    b.assert_still_serving();
}

// ---------------------------------------------------------------------------------------
// Row 10

#[test]
fn t10_signer_that_is_a_certificate_refused() {
    let Some(b) = dmz::start() else { return };
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let good = wire::cert_with(&ca, &user, "alice", 1001, now - 60, now + 300, with_role);
    // A certificate for the CA's own key, standing in as the signing key; the outer
    // certificate is signed (over the edited bytes) by the CA key inside it.
    let ca_cert = wire::cert_with(&ca, &ca, "ca", 1000, now - 60, now + 300, with_role);
    let forged = wire::with_signing_key(&good, &ca_cert.to_bytes().unwrap(), &ca);
    let forged = ssh_key::Certificate::from_bytes(&forged).unwrap();
    assert!(forged.signature_key().is_certificate());

    // drawbridge's own check, the pure function the bastion runs.
    let trusted = drawbridge::bastion::TrustedCas::new(&[ca.public_key().clone()]);
    let verdict = drawbridge::bastion::verify_certificate(
        &forged,
        &trusted,
        &drawbridge::policy::Policy::default(),
        "127.0.0.1".parse().unwrap(),
        std::time::SystemTime::now(),
        Duration::from_secs(3660),
    );
    assert_eq!(verdict, Err(drawbridge::bastion::Refusal::CaIsCertificate));

    // On the wire: russh cannot verify a signature by a certificate and refuses it before
    // the handler; audited all the same.
    let rt = wire::threaded_runtime();
    rt.block_on(async {
        let (h, ok) = bounded(wire::login(b.port(), &user, forged)).await;
        assert!(!ok, "a certificate signed by a certificate was accepted");
        drop(h);
    });
    wait_until(
        Duration::from_secs(5),
        || unkeyed(&b, "bad-signature") == 1,
        || format!("{:#?}", b.records()),
    );
    assert_eq!(unkeyed(&b, "bad-signature"), 1, "{:#?}", b.records());
    assert!(b.find("ssh.auth.ok", &[]).is_empty());
}

// ---------------------------------------------------------------------------------------
// Row 11

#[test]
fn t11_revoked_serial_or_key_id_refused_empty_list_lets_good_certs_in() {
    let Some(b) = dmz::start() else { return };
    let mut keys = refuse_certs(&b, 11).into_iter();
    let (Some(("lost", lost)), Some(("stolen", stolen))) = (keys.next(), keys.next()) else {
        panic!("row 11's certificates are lost, then stolen");
    };

    let good = b.user("good", "alice", &["web-admin"], "-1m:+5m", 1103, &[]);
    let out = b.client("good", &good).run(&["web-1", "echo", "in"]);
    assert!(out.success(), "{out:?}");

    // An empty revocation list: good certificates still get in (and the ones revoked
    // before are let in too: the list was the only reason).
    b.reload_policy(|dir| std::fs::write(dir.join("revoked.toml"), "").unwrap());
    for (name, key) in [("good", &good), ("lost", &lost)] {
        let out = b.client(name, key).run(&["web-1", "echo", "in"]);
        assert!(out.success(), "{name}: {out:?}");
        assert_eq!(out.stdout.trim(), "in");
    }
    b.expect_record("forward.opened", &[("serial", "666")]);
    // `stolen` is in no group: in, but it reaches nothing.
    let out = b.client("stolen", &stolen).run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("stolen"), "{out:?}");
    b.expect_record("ssh.auth.ok", &[("key_id", "stolen")]);
    assert!(b.refusals("revoked") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 12

#[test]
fn t12_key_a_offered_signature_by_key_b_decided_on_the_signer() {
    let Some(b) = dmz::start() else { return };
    let ca = b.ca_key();
    let a = wire::read_key(&b.t.keygen("key-a").path);
    let bkey = wire::read_key(&b.t.keygen("key-b").path);
    let now = wire::now();
    // A: alice, web-admin. B: bob, dba (db-1 only).
    let cert_a = wire::cert_with(&ca, &a, "alice", 1201, now - 60, now + 300, with_role);
    let cert_b = wire::cert_with(&ca, &bkey, "bob", 1202, now - 60, now + 300, |bld| {
        bld.valid_principal("dba").unwrap();
    });
    let rt = wire::threaded_runtime();
    rt.block_on(async {
        let mut h = wire::connect(b.port()).await;
        // A's certificate offered, the signature made with B.
        let r = bounded(h.authenticate_certificate_with(
            "wire",
            cert_a.clone(),
            None,
            &mut wire::SignWith(bkey.clone()),
        ))
        .await;
        assert!(
            !r.map(|r| r.success()).unwrap_or(false),
            "A's certificate accepted with B's signature"
        );
        // B's plain key, signed by B: refused for what it is (no certificate).
        let r = bounded(h.authenticate_publickey(
            "wire",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(bkey.clone()), None),
        ))
        .await
        .unwrap();
        assert!(!r.success(), "B's plain key was accepted");
        // B's certificate, signed by B: in as bob, with bob's rights only.
        let r = bounded(h.authenticate_openssh_cert("wire", Arc::new(bkey.clone()), cert_b))
            .await
            .unwrap();
        assert!(r.success(), "B's own certificate was refused");
        let web = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)).await;
        assert!(web.is_err(), "bob reached web-1 with alice's role");
    });
    let fp_a = a
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    let fp_b = bkey
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    b.auth_failed("no-certificate", &fp_b);
    let ok = b.expect_record("ssh.auth.ok", &[("key_fingerprint", &fp_b)]);
    assert_eq!(ok["key_id"], "bob");
    assert_eq!(ok["serial"], 1202);
    // Nothing was ever decided for A's key or key id.
    assert!(
        b.find("ssh.auth.ok", &[("key_fingerprint", &fp_a)])
            .is_empty()
    );
    assert!(b.find("ssh.auth.ok", &[("key_id", "alice")]).is_empty());
    let denied = b.expect_record(
        "forward.refused",
        &[("reason", "denied"), ("key_id", "bob"), ("host", "web-1")],
    );
    assert_eq!(denied["serial"], 1202);
}

// ---------------------------------------------------------------------------------------
// Row 13

#[test]
fn t13_dsa_and_sha1_rsa_signatures_refused() {
    let Some(b) = dmz::start() else { return };
    // RSA 3072 with a certificate: accepted with an rsa-sha2-512 signature...
    let rsa = crate::support::ssh::keygen(&b.t.join("rsa"), "rsa");
    b.user_ca
        .sign_user(&rsa.public(), "alice", &["web-admin"], "-1m:+5m", 131, &[]);
    let c = b.client("rsa", &rsa);
    let out = c.run(&["-v", "bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    // ...and the bastion never advertises SHA-1 `ssh-rsa` or DSA, so the OpenSSH client
    // will not even try them.
    let sig_algs = out
        .stderr
        .lines()
        .find_map(|l| {
            l.split_once("server-sig-algs=<")
                .map(|(_, r)| r.to_string())
        })
        .expect("server-sig-algs in ssh -v");
    let sig_algs: Vec<&str> = sig_algs.trim_end_matches('>').split(',').collect();
    assert!(sig_algs.contains(&"rsa-sha2-512"), "{sig_algs:?}");
    assert!(
        !sig_algs.contains(&"ssh-rsa") && !sig_algs.contains(&"ssh-dss"),
        "{sig_algs:?}"
    );
    let out = c.run(&[
        "-v",
        "-o",
        "PubkeyAcceptedAlgorithms=ssh-rsa-cert-v01@openssh.com,ssh-rsa",
        "bastion",
        "whoami",
    ]);
    assert_permission_denied(&out);
    assert!(
        out.stderr.contains("no mutual signature algorithm"),
        "{out:?}"
    );

    // The russh client offers SHA-1 `ssh-rsa` anyway: the certificate, then the bare key.
    let fp = fingerprint(&rsa);
    let rsa_key = Arc::new(wire::read_key(&rsa.path));
    let rsa_cert = ssh_key::Certificate::read_file(&rsa.cert()).unwrap();
    let rt = wire::runtime();
    rt.block_on(async {
        let mut h = wire::connect(b.port()).await;
        let r = bounded(h.authenticate_openssh_cert("wire", rsa_key.clone(), rsa_cert))
            .await
            .unwrap();
        assert!(
            !r.success(),
            "an ssh-rsa (SHA-1) certificate signature was accepted"
        );
        let r = bounded(h.authenticate_publickey(
            "wire",
            russh::keys::PrivateKeyWithHashAlg::new(rsa_key.clone(), None),
        ))
        .await
        .unwrap();
        assert!(!r.success(), "an ssh-rsa (SHA-1) signature was accepted");
    });
    let weak = b.find(
        "ssh.auth.failed",
        &[
            ("reason", "weak-algorithm"),
            ("key_fingerprint", &fp),
            ("ssh_user", "wire"),
        ],
    );
    assert_eq!(weak.len(), 2, "{:#?}", b.records());
    for rec in &weak {
        assert_eq!(rec["algorithm"], "ssh-rsa", "{rec}");
        assert!(
            rec["message"]
                .as_str()
                .is_some_and(|m| m.contains("no DSA, no SHA-1 ssh-rsa")),
            "{rec}"
        );
    }

    // DSA: a certificate from our CA for a DSA key, which OpenSSH 9.2 still offers when
    // told to.
    let dsa = crate::support::ssh::keygen(&b.t.join("dsa"), "dsa");
    b.user_ca
        .sign_user(&dsa.public(), "alice", &["web-admin"], "-1m:+5m", 132, &[]);
    let out = b.client("dsa", &dsa).run(&[
        "-v",
        "-o",
        "PubkeyAcceptedAlgorithms=+ssh-dss-cert-v01@openssh.com,ssh-dss",
        "bastion",
        "whoami",
    ]);
    assert_permission_denied(&out);
    let rec = b.auth_failed("weak-algorithm", &fingerprint(&dsa));
    assert_eq!(rec["algorithm"], "ssh-dss", "{rec}");
    assert_eq!(rec["ssh_user"], "dsa", "{rec}");
    assert_eq!(b.find("ssh.auth.ok", &[]).len(), 1);
    assert!(b.refusals("weak-algorithm") >= 3);
}

// ---------------------------------------------------------------------------------------
// Row 14

#[test]
fn t14_too_many_authentication_attempts_disconnected() {
    let Some(b) = dmz::start_with("max_auth_attempts = 3", &[]) else {
        return;
    };
    let keys: Vec<Key> = (0..6).map(|i| b.plain(&format!("k{i}"))).collect();
    let mut c = b.client("many", &keys[0]);
    for k in &keys[1..] {
        c.option(&format!("IdentityFile {}", k.path.display()));
    }
    let out = c.run(&["bastion", "whoami"]);
    refused(&out);
    assert!(
        out.stderr.contains("Too many authentication attempts"),
        "{out:?}"
    );
    // The keys the bastion saw (each refused as a plain key): a first few, never all six.
    let seen: Vec<Value> = keys
        .iter()
        .filter_map(|k| {
            b.find(
                "ssh.auth.failed",
                &[
                    ("key_fingerprint", &fingerprint(k)),
                    ("reason", "no-certificate"),
                ],
            )
            .pop()
        })
        .collect();
    assert!(
        !seen.is_empty() && seen.len() <= 3,
        "{} keys audited with max_auth_attempts = 3: {seen:#?}",
        seen.len()
    );
    assert!(seen.iter().all(|r| r["conn"] == seen[0]["conn"]));
    assert!(
        b.find("ssh.auth.failed", &[]).len() <= 3,
        "{:#?}",
        b.records()
    );
    assert!(
        b.find(
            "ssh.auth.failed",
            &[("key_fingerprint", &fingerprint(&keys[5]))]
        )
        .is_empty()
    );
    assert!(b.find("ssh.auth.ok", &[]).is_empty());
}

/// What a caller is told about a host they may not reach, whether it is in the inventory
/// or not.
fn not_reachable(host: &str) -> String {
    format!(
        "host \"{host}\" is not in the inventory or not granted to you \
         (the bastion's `hosts` command lists the hosts you may reach)"
    )
}

// ---------------------------------------------------------------------------------------
// Row 15

#[test]
fn t15_direct_tcpip_outside_the_inventory_or_to_another_port_refused() {
    let Some(b) = dmz::start() else { return };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 151, &[]);
    let mut c = b.client("alice", &alice);
    // Allowed: the inventory host on its own port (and 22 for -J).
    let out = c.run(&["web-1", "true"]);
    assert!(out.success(), "{out:?}");
    // A host not in the inventory, and an inventory host alice has no grant for (db-1):
    // the same words, so that a refusal does not tell which hosts exist; the audit
    // record keeps the difference.
    c.add_target_as("nowhere", "nowhere.example.org", "root");
    let out = c.run(&["nowhere", "true"]);
    refused(&out);
    let message = not_reachable("nowhere.example.org");
    assert!(out.stderr.contains(&message), "{out:?}");
    let rec = b.expect_record(
        "forward.refused",
        &[("reason", "unknown-host"), ("host", "nowhere.example.org")],
    );
    assert_eq!(rec["key_id"], "alice");
    assert_eq!(rec["message"], message);
    assert!(rec["detail"].is_null(), "{rec}");
    let out = c.run(&["-W", "db-1:22", "bastion"]);
    refused(&out);
    let message = not_reachable("db-1");
    assert!(out.stderr.contains(&message), "{out:?}");
    let rec = b.expect_record(
        "forward.refused",
        &[("reason", "denied"), ("host", "db-1"), ("key_id", "alice")],
    );
    assert_eq!(rec["message"], message);
    assert_eq!(
        rec["detail"], "inventory host db-1: no principal of the certificate grants it",
        "{rec}"
    );
    // The allowed host with another port.
    let out = c.run(&["-W", "web-1:2200", "bastion"]);
    refused(&out);
    let message = format!(
        "port 2200 refused for host web-1: only its inventory port {} (or 22) is forwarded",
        b.sshd.port
    );
    assert!(out.stderr.contains(&message), "{out:?}");
    let rec = b.expect_record(
        "forward.refused",
        &[
            ("reason", "unknown-host"),
            ("host", "web-1"),
            ("port", "2200"),
        ],
    );
    assert_eq!(rec["message"], message);
    assert!(b.refusals("unknown-host") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 16

#[test]
fn t16_host_aliases_refused() {
    let Some(b) = dmz::start() else { return };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 161, &[]);
    let c = b.client("alice", &alice);
    let port = b.sshd.port.to_string();
    let forward = |host: &str, port: &str| {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        c.run(&["-W", &target, "bastion"])
    };
    // Exactly an inventory entry, by name or by address: allowed.
    for exact in ["web-1", "127.0.0.1"] {
        let out = forward(exact, &port);
        assert!(out.success(), "{exact}: {out:?}");
        assert!(
            out.stdout.starts_with("SSH-2.0-OpenSSH"),
            "{exact}: {out:?}"
        );
        b.expect_record(
            "forward.opened",
            &[("host", exact), ("target", "web-1"), ("key_id", "alice")],
        );
    }
    // web-1 is 127.0.0.1 on the sshd's port. Every other spelling is refused.
    let trailing = "host \"web-1.\" refused: write it exactly as in the inventory, \"web-1\" (no trailing dot)";
    let case =
        "host \"WEB-1\" refused: names are compared exactly (case included); write \"web-1\"";
    let numeric = |h: &str| {
        format!(
            "host \"{h}\" refused: numeric forms other than an inventory host's exact address are not accepted"
        )
    };
    let mapped = "host \"::ffff:127.0.0.1\" refused: IPv4-mapped IPv6 addresses are not accepted (only an inventory host's exact address, e.g. 127.0.0.1 if it is listed)";
    let cases: Vec<(&str, String)> = vec![
        ("web-1.", trailing.to_string()),
        ("WEB-1", case.to_string()),
        ("2130706433", numeric("2130706433")),
        ("0177.0.0.1", numeric("0177.0.0.1")),
        ("0x7f.0.0.1", numeric("0x7f.0.0.1")),
        ("0x7f000001", numeric("0x7f000001")),
        ("127.1", numeric("127.1")),
        ("::ffff:127.0.0.1", mapped.to_string()),
        ("169.254.169.254", not_reachable("169.254.169.254")),
        // Resolves to web-1's address, but is not how the inventory names it.
        ("localhost", not_reachable("localhost")),
    ];
    for (alias, message) in &cases {
        let out = forward(alias, &port);
        assert!(
            !out.success() && !out.timed_out,
            "{alias:?} was forwarded: {out:?}"
        );
        assert!(
            out.stderr.contains("administratively prohibited") && out.stderr.contains(message),
            "{alias}: {out:?}"
        );
        let rec = b.expect_record(
            "forward.refused",
            &[("reason", "unknown-host"), ("host", alias)],
        );
        assert_eq!(&rec["message"], message.as_str(), "{alias}");
        assert!(rec["target"].is_null(), "{alias}: {rec}");
    }
    // Only the two exact requests were ever dialed.
    assert_eq!(b.find("forward.opened", &[]).len(), 2);
    assert!(b.refusals("unknown-host") >= cases.len() as u64);
}

// ---------------------------------------------------------------------------------------
// Row 17

#[test]
fn t17_role_for_host_a_used_to_dial_host_b_refused() {
    let Some(b) = dmz::start() else { return };
    // alice's web-admin grants role=web hosts; db-1 is role=db.
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 171, &[]);
    let c = b.client("alice", &alice);
    assert!(c.run(&["web-1", "true"]).success());
    let out = c.run(&["db-1", "true"]);
    refused(&out);
    assert!(
        out.stderr.contains("administratively prohibited"),
        "{out:?}"
    );
    let rec = b.expect_record(
        "forward.refused",
        &[("reason", "denied"), ("key_id", "alice"), ("host", "db-1")],
    );
    // The same words as for a host outside the inventory; the record says which it was.
    let message = not_reachable("db-1");
    assert_eq!(rec["message"], message);
    assert!(
        out.stderr.contains(&message),
        "{message} not shown: {out:?}"
    );
    assert_eq!(
        rec["detail"], "inventory host db-1: no principal of the certificate grants it",
        "{rec}"
    );
    assert!(
        rec["policy_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    // bob's dba grants db-1 only, even with web-1 asked by address.
    let bob = b.user("bob", "bob", &["dba"], "-1m:+5m", 172, &[]);
    let out = b
        .client("bob", &bob)
        .run(&["-W", &format!("127.0.0.1:{}", b.sshd.port), "bastion"]);
    refused(&out);
    let port = b.sshd.port.to_string();
    let rec = b.expect_record(
        "forward.refused",
        &[
            ("reason", "denied"),
            ("key_id", "bob"),
            ("host", "127.0.0.1"),
            ("port", &port),
        ],
    );
    // bob is not told that the address is web-1's (he may not reach web-1): the words
    // are those for any host he may not reach; the record names web-1.
    let message = not_reachable("127.0.0.1");
    assert_eq!(rec["message"], message);
    assert!(out.stderr.contains(&message), "{out:?}");
    assert!(
        !out.stderr.contains("web-1"),
        "bob was told the address is web-1's: {out:?}"
    );
    assert_eq!(
        rec["detail"], "inventory host web-1: no principal of the certificate grants it",
        "{rec}"
    );
    assert_eq!(b.find("forward.opened", &[]).len(), 1);
    assert!(b.refusals("denied") >= 2);
}

// ---------------------------------------------------------------------------------------
// Row 18

#[test]
fn t18_sessions_exec_pty_x11_agent_subsystem_remote_and_streamlocal_refused() {
    let Some(b) = dmz::start() else { return };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 181, &[]);
    let c = b.client("alice", &alice);
    let session_refused = |request: &str| {
        b.expect_record(
            "ssh.session.refused",
            &[
                ("key_id", "alice"),
                ("request", request),
                ("reason", "session-refused"),
                ("rule", "bastion.forward-only"),
            ],
        )
    };
    // The two read-only commands answer.
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success() && out.stdout.contains("alice"), "{out:?}");

    // A shell session.
    let out = c.run(&["bastion"]);
    refused(&out);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("drawbridge: shell refused"), "{out:?}");
    session_refused("shell");
    // exec other than whoami / hosts.
    let out = c.run(&["bastion", "cat", "/etc/passwd"]);
    refused(&out);
    assert!(
        out.stderr
            .contains("drawbridge: command \"cat /etc/passwd\" refused"),
        "{out:?}"
    );
    session_refused("exec");
    // A pty: refused, the command still runs without one.
    let out = c.run(&["-tt", "bastion", "whoami"]);
    assert!(
        out.stderr.contains("PTY allocation request failed"),
        "{out:?}"
    );
    session_refused("pty");
    // X11.
    let out = run_with_env(
        c.command(&["-o", "ForwardX11=yes", "bastion", "whoami"]),
        &[("DISPLAY", "127.0.0.1:99")],
    );
    assert!(
        out.stderr.contains("X11 forwarding request failed"),
        "{out:?}"
    );
    session_refused("x11");
    // Agent forwarding, from a real (empty) agent.
    let sock = b.t.join("agent.sock");
    let agent = KillOnDrop(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        Duration::from_secs(5),
        || sock.exists(),
        || "ssh-agent made no socket".to_string(),
    );
    let out = c.run(&[
        "-o",
        &format!("IdentityAgent={}", sock.display()),
        "-o",
        "ForwardAgent=yes",
        "bastion",
        "whoami",
    ]);
    drop(agent);
    assert!(out.success(), "{out:?}");
    session_refused("agent");
    // A subsystem.
    let out = c.run(&["-s", "bastion", "sftp"]);
    refused(&out);
    assert!(
        out.stderr
            .contains("drawbridge: subsystem \"sftp\" refused"),
        "{out:?}"
    );
    session_refused("subsystem");

    // Remote forwarding (-R): TCP and a unix socket.
    let out = c.run(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
        "bastion",
    ]);
    refused(&out);
    assert!(
        out.stderr.contains("remote port forwarding failed"),
        "{out:?}"
    );
    b.expect_record(
        "forward.refused",
        &[
            ("key_id", "alice"),
            ("kind", "remote"),
            ("reason", "remote-forward"),
            ("rule", "bastion.no-remote-forward"),
        ],
    );
    let remote_sock = b.t.join("remote.sock");
    let out = c.run(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &format!("{}:127.0.0.1:9", remote_sock.display()),
        "bastion",
    ]);
    refused(&out);
    assert!(out.stderr.contains("forwarding failed"), "{out:?}");
    b.expect_record(
        "forward.refused",
        &[
            ("key_id", "alice"),
            ("kind", "streamlocal-remote"),
            ("reason", "streamlocal"),
            ("rule", "bastion.no-streamlocal"),
        ],
    );
    // A local forward to a unix socket on the bastion (direct-streamlocal).
    let local = crate::support::ports::free_port();
    let mut child = c
        .command(&[
            "-N",
            "-L",
            &format!("127.0.0.1:{local}:/run/sshd.pid"),
            "bastion",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], local));
    wait_for_port(addr, Duration::from_secs(10));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "data came through a refused unix socket forward");
    b.expect_record(
        "forward.refused",
        &[
            ("key_id", "alice"),
            ("kind", "streamlocal"),
            ("reason", "streamlocal"),
            ("rule", "bastion.no-streamlocal"),
        ],
    );
    let _ = child.kill();
    let out = crate::support::process::wait_with_timeout(child, Duration::from_secs(5));
    assert!(
        out.stderr
            .contains("unix socket forwarding is refused by the bastion"),
        "{out:?}"
    );
    assert!(b.find("forward.opened", &[]).is_empty());
    assert!(b.refusals("session-refused") >= 6);
    assert!(b.refusals("remote-forward") >= 1);
    assert!(b.refusals("streamlocal") >= 2);
}

fn run_with_env(mut cmd: Command, env: &[(&str, &str)]) -> crate::support::process::Output {
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::support::process::run_with_timeout(&mut cmd, crate::support::process::COMMAND_TIMEOUT)
}

// ---------------------------------------------------------------------------------------
// Rows 19–21: hand-made packets

fn addr(b: &Bastion) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], b.port()))
}

/// Asserts the server closes the connection within 10 s; returns how it ended.
fn assert_closed(raw: &mut Raw, what: &str) -> rawssh::Ending {
    let end = raw.wait_closed(Duration::from_secs(10));
    assert!(end.closed, "{what}: connection kept open ({end:?})");
    end
}

#[test]
fn t19_channel_open_before_auth_and_message_before_kex_disconnect() {
    let Some(mut b) = dmz::start() else { return };
    let records = b.records().len();
    // Messages before key exchange: a CHANNEL_OPEN, a SERVICE_REQUEST, a USERAUTH_REQUEST.
    for (what, payload) in [
        ("channel open before kex", {
            let mut p = vec![rawssh::MSG_CHANNEL_OPEN];
            rawssh::put_string(&mut p, b"direct-tcpip");
            rawssh::put_u32(&mut p, 0);
            rawssh::put_u32(&mut p, 1 << 20);
            rawssh::put_u32(&mut p, 32768);
            rawssh::put_string(&mut p, b"web-1");
            rawssh::put_u32(&mut p, 22);
            rawssh::put_string(&mut p, b"127.0.0.1");
            rawssh::put_u32(&mut p, 1);
            p
        }),
        ("service request before kex", {
            let mut p = vec![rawssh::MSG_SERVICE_REQUEST];
            rawssh::put_string(&mut p, b"ssh-userauth");
            p
        }),
        ("userauth before kex", {
            let mut p = vec![rawssh::MSG_USERAUTH_REQUEST];
            rawssh::put_string(&mut p, b"alice");
            rawssh::put_string(&mut p, b"ssh-connection");
            rawssh::put_string(&mut p, b"none");
            p
        }),
    ] {
        let mut raw = Raw::connect(addr(&b));
        raw.send_banner();
        assert!(raw.read_banner().starts_with("SSH-2.0-drawbridge"));
        raw.send_packet(&payload);
        assert_closed(&mut raw, what);
    }

    // A channel open after key exchange but before authentication (russh client).
    let rt = wire::threaded_runtime();
    rt.block_on(async {
        let h = wire::connect(b.port()).await;
        let r = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)).await;
        assert!(r.is_err(), "a channel opened before authentication");
        let r = bounded(h.channel_open_session()).await;
        assert!(r.is_err(), "a session opened before authentication");
    });
    // Nothing was forwarded or recorded for any of it; the bastion is fine.
    assert!(b.find("forward.opened", &[]).is_empty());
    assert_eq!(b.records().len(), records, "{:#?}", b.records());
    b.assert_still_serving();
}

#[test]
fn t20_malformed_packets_disconnect_with_bounded_memory() {
    let Some(mut b) = dmz::start() else { return };
    let records = b.records().len();
    let rss_before = b.rss_kib();
    // KEXINIT with trailing bytes.
    let mut raw = Raw::connect(addr(&b));
    raw.send_banner();
    assert!(raw.read_banner().starts_with("SSH-2.0-drawbridge"));
    let mut k = rawssh::kexinit("curve25519-sha256");
    k.extend_from_slice(b"trailing bytes after the reserved field");
    raw.send_packet(&k);
    assert_closed(&mut raw, "KEXINIT with trailing bytes");

    // Lengths no packet may have, and junk.
    for (what, junk) in [
        (
            "length 0xFFFFFFFF",
            &b"SSH-2.0-x\r\n\xff\xff\xff\xff\x00\x00"[..],
        ),
        (
            "length 0x7FFFFFFF",
            &b"SSH-2.0-x\r\n\x7f\xff\xff\xff\x00\x00"[..],
        ),
        (
            "length 0",
            &b"SSH-2.0-x\r\n\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        ),
        ("HTTP", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        ("zeros", &[0u8; 4096][..]),
    ] {
        let mut raw = Raw::connect(addr(&b));
        raw.send(junk);
        assert_closed(&mut raw, what);
    }
    // Many connections announcing huge packets at once: memory stays bounded.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut raw = Raw::connect(addr(&b));
        raw.send(b"SSH-2.0-x\r\n\x00\x10\x00\x00\x00");
        held.push(raw);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = b.rss_kib().saturating_sub(rss_before) / 1024;
    for mut raw in held {
        assert_closed(&mut raw, "1 MiB length");
    }
    assert!(grown < 32, "drawbridge grew by {grown} MiB");
    assert_eq!(b.records().len(), records);
    b.assert_still_serving();
}

/// The encrypting raw client (`crate::support::rawssh_session`), logged in as `alice` with a
/// web-admin certificate from the bastion's CA (serial `serial`).
fn raw_login(b: &Bastion, serial: u64) -> Session {
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen(&format!("raw-{serial}")).path);
    let now = wire::now();
    let cert = wire::cert_with(&ca, &user, "alice", serial, now - 60, now + 300, with_role);
    Session::login(addr(b), "alice", &user, &cert)
}

/// Asserts the server closes the encrypted connection within 10 s; returns how it ended.
fn assert_session_closed(s: &mut Session, what: &str) -> rawssh_session::Ending {
    let end = s.wait_closed(Duration::from_secs(10));
    assert!(end.closed, "{what}: connection kept open ({end:?})");
    end
}

/// Row 20 after key exchange and authentication, with the encrypting raw client: a
/// CHANNEL_OPEN with trailing bytes, WINDOW_ADJUSTs summing past 2^32-1, and a first
/// encrypted block claiming packet length 0xFFFFFFFF.
#[test]
fn t20_post_auth_trailing_bytes_window_overflow_and_huge_encrypted_length() {
    let Some(mut b) = dmz::start() else { return };
    let rss_before = b.rss_kib();
    let web1 = u32::from(b.sshd.port);
    let t10 = Duration::from_secs(10);
    let logged = |b: &Bastion, line: &str| {
        wait_until(
            Duration::from_secs(5),
            || b.d.server_log().contains(line),
            || format!("no log line {line:?}: {}", b.d.server_log()),
        )
    };

    // 1. CHANNEL_OPEN direct-tcpip with bytes after the originator port. The same open
    // without them works on the same connection first.
    let mut s = raw_login(&b, 2011);
    let good = s.open_direct_tcpip(0, "web-1", web1).expect("a good open");
    assert!(
        s.wait_data(good.ours, b"SSH-2.0-OpenSSH", t10),
        "no banner from web-1 through the channel"
    );
    let trailing = b"trailing bytes after the last field";
    s.send_direct_tcpip(1, 1 << 21, "web-1", web1, trailing);
    // russh refuses to parse it and ends the connection (no DISCONNECT message, no
    // CHANNEL_OPEN_FAILURE): nothing is dialed for it.
    let end = assert_session_closed(&mut s, "CHANNEL_OPEN with trailing bytes");
    assert!(
        !end.messages
            .contains(&rawssh_session::MSG_CHANNEL_OPEN_CONFIRMATION),
        "{end:?}"
    );
    logged(
        &b,
        &format!(
            "unexpected trailing data at end of message ({} bytes)",
            trailing.len()
        ),
    );
    assert_eq!(b.find("forward.opened", &[("serial", "2011")]).len(), 1);
    b.expect_record("forward.closed", &[("serial", "2011")]);

    // 2. WINDOW_ADJUSTs whose sum overflows u32: our 2 MiB window + 2 × (2^32-1) + 1, and
    // one for a channel that does not exist. russh saturates the window at 2^32-1 and
    // ignores the unknown channel: no disconnect, and the channel still carries data both
    // ways (web-1 answers our banner with its KEXINIT).
    let mut s = raw_login(&b, 2012);
    let ch = s.open_direct_tcpip(0, "web-1", web1).expect("a good open");
    assert!(s.wait_data(ch.ours, b"SSH-2.0-OpenSSH", t10));
    for amount in [u32::MAX, u32::MAX, 1] {
        assert!(s.send_window_adjust(&ch, amount));
    }
    let unknown = rawssh_session::Opened { theirs: 77, ..ch };
    assert!(s.send_window_adjust(&unknown, u32::MAX));
    assert!(s.send_data(&ch, b"SSH-2.0-rawssh_through\r\n"));
    assert!(
        s.wait_data(ch.ours, b"curve25519-sha256", t10),
        "the channel stopped carrying data after the window overflow"
    );
    let end = s.wait_closed(Duration::from_secs(1));
    assert!(
        !end.closed,
        "disconnected after the window overflow: {end:?}"
    );
    drop(s);
    b.expect_record("forward.closed", &[("serial", "2012")]);

    // 3. After authentication, a first encrypted block claiming packet length 0xFFFFFFFF:
    // the connection ends at once (no DISCONNECT message), nothing is allocated for it.
    let mut s = raw_login(&b, 2013);
    let mut block = vec![0xff; 4];
    block.extend_from_slice(&[0u8; 12]);
    assert!(s.send_encrypted_bytes(&block));
    assert_session_closed(&mut s, "encrypted packet length 0xFFFFFFFF");
    logged(&b, "Bad packet size: 4294967295");

    let grown = b.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown < 32, "drawbridge grew by {grown} MiB");
    // No panic; an OpenSSH client still gets through (ProxyJump, i.e. `ssh -W`).
    b.assert_still_serving();
}

/// Row 20, CHANNEL_DATA beyond what was announced: a client that never reads the
/// server's WINDOW_ADJUSTs and keeps sending to a target that does not read, and a
/// CHANNEL_DATA longer than the maximum packet size.
#[test]
fn t20_post_auth_data_beyond_the_window_bounded_memory() {
    let sink = Sink::start();
    let Some(mut b) = dmz::start_with("", &[("sink", format!("127.0.0.1:{}", sink.port()))]) else {
        return;
    };
    let rss_before = b.rss_kib();
    let grown = |b: &Bastion| b.rss_kib().saturating_sub(rss_before) / 1024;

    // 1. 32 KiB packets, past the 2 MiB window, to a target that stalls: the bastion stops
    // reading (TCP pushes back, our writes time out), memory does not follow what we sent.
    let mut s = raw_login(&b, 2021);
    let ch = s
        .open_direct_tcpip(0, "sink", u32::from(sink.port()))
        .expect("open to the sink");
    assert_eq!(ch.max_packet, 32 * 1024);
    s.set_write_timeout(Duration::from_secs(1));
    let data = vec![0x5a; ch.max_packet as usize];
    let mut sent = 0usize;
    let mut peak = 0;
    while sent < 64 << 20 && s.send_data(&ch, &data) {
        sent += data.len();
        if sent.is_multiple_of(1 << 20) {
            peak = peak.max(grown(&b));
        }
    }
    peak = peak.max(grown(&b));
    assert!(
        sent > ch.window as usize,
        "the bastion stopped reading after {sent} bytes, within the window"
    );
    assert!(
        sent < 64 << 20,
        "the bastion took 64 MiB for a stalled target"
    );
    assert!(
        peak <= 8,
        "drawbridge grew by {peak} MiB while {} MiB went past a stalled target's window",
        sent >> 20
    );
    let end = s.wait_closed(Duration::from_secs(1));
    assert!(!end.closed, "disconnected instead of pushing back: {end:?}");

    // 2. One CHANNEL_DATA of 200 KiB where 32 KiB was announced: disconnected with a
    // protocol error (russh itself would queue up to 32 such packets per forward).
    let mut s2 = raw_login(&b, 2022);
    let ch2 = s2
        .open_direct_tcpip(0, "sink", u32::from(sink.port()))
        .expect("open to the sink");
    assert!(s2.send_data(&ch2, &vec![0x5a; 200 * 1024]));
    let end = assert_session_closed(&mut s2, "CHANNEL_DATA over the maximum packet size");
    let (code, text) = end.disconnect.expect("a DISCONNECT");
    assert_eq!(code, 2, "{text}"); // SSH_DISCONNECT_PROTOCOL_ERROR
    assert_eq!(
        text,
        "channel data of 204800 bytes exceeds the maximum packet size 32768"
    );
    drop(s2);
    b.expect_record("forward.closed", &[("serial", "2022")]);
    let after = grown(&b);
    assert!(after <= 8, "drawbridge grew by {after} MiB");

    // The stalled target goes away: the stalled forward ends, nothing stays behind.
    drop(sink);
    b.expect_record("forward.closed", &[("serial", "2021")]);
    drop(s);
    wait_until(
        Duration::from_secs(5),
        || b.metric("drawbridge_bastion_forwards_active") == 0,
        || "forwards still open".to_string(),
    );
    b.assert_still_serving();
}

#[test]
fn t21_strict_kex_enforced() {
    let Some(b) = dmz::start() else { return };
    // A client that does not offer strict KEX still sees the server's marker.
    let mut raw = Raw::connect(addr(&b));
    raw.send_banner();
    assert!(raw.read_banner().starts_with("SSH-2.0-drawbridge"));
    raw.send_packet(&rawssh::kexinit("curve25519-sha256"));
    let theirs = raw.read_packet().expect("server KEXINIT");
    let lists = rawssh::parse_kexinit(&theirs).expect("a KEXINIT");
    assert!(
        lists[0].iter().any(|k| k == rawssh::STRICT_S),
        "no strict KEX marker in {:?}",
        lists[0]
    );
    // Without strict KEX an IGNORE during key exchange is allowed: still open.
    raw.send_packet(&[rawssh::MSG_IGNORE, 0, 0, 0, 0]);
    let end = raw.wait_closed(Duration::from_secs(2));
    assert!(!end.closed, "closed without strict KEX: {end:?}");

    // With strict KEX, any message out of sequence during the initial key exchange ends
    // the connection (Terrapin).
    let mut raw = Raw::connect(addr(&b));
    raw.send_banner();
    raw.read_banner();
    raw.send_packet(&rawssh::kexinit(&format!(
        "curve25519-sha256,{}",
        rawssh::STRICT_C
    )));
    raw.read_packet().expect("server KEXINIT");
    raw.send_packet(&[rawssh::MSG_IGNORE, 0, 0, 0, 0]);
    assert_closed(&mut raw, "IGNORE during strict KEX");

    // The OpenSSH client negotiates it.
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 211, &[]);
    let out = b
        .client("alice", &alice)
        .run(&["-vvv", "bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr.contains("will use strict KEX ordering"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Row 22

#[test]
fn t22_control_characters_escaped_in_audit_and_logs() {
    let Some(mut b) = dmz::start() else { return };
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let evil_user = "evil\n\u{1b}[31m\0user";
    let evil_id = "mal\n\u{1b}[2J\0lory";
    let evil_host = "web-1\n\u{1b}[31m\0";
    let cert = wire::cert_with(&ca, &user, evil_id, 2201, now - 60, now + 300, with_role);
    let rt = wire::threaded_runtime();
    rt.block_on(async {
        let (h, ok) = bounded(wire::login_as(b.port(), evil_user, &user, cert)).await;
        assert!(ok, "the login failed");
        let r = bounded(h.channel_open_direct_tcpip(evil_host, 22, "127.0.0.1", 1)).await;
        assert!(r.is_err(), "a host name with control characters was dialed");
    });
    let clean = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
        assert!(
            !s.contains('\n') && !s.contains('\u{1b}') && !s.contains('\0'),
            "{s:?}"
        );
        s.to_string()
    };
    let ok = b.expect_record("ssh.auth.ok", &[("serial", "2201")]);
    assert_eq!(clean(&ok["ssh_user"]), "evil\\n\\u{1b}[31m\\0user");
    assert_eq!(clean(&ok["key_id"]), "mal\\n\\u{1b}[2J\\0lory");
    let refused = b.expect_record(
        "forward.refused",
        &[("serial", "2201"), ("reason", "unknown-host")],
    );
    assert_eq!(clean(&refused["host"]), "web-1\\n\\u{1b}[31m\\0");
    clean(&refused["message"]);
    clean(&refused["ssh_user"]);
    clean(&refused["key_id"]);
    // The raw log file: one JSON record a line, no control byte anywhere.
    let raw = std::fs::read(b.audit_path()).unwrap();
    assert!(
        !raw.iter().any(|c| *c == 0x1b || *c == 0),
        "control bytes in the audit log"
    );
    // The process's own log (stdout/stderr): no ESC, no NUL, no forged line.
    b.assert_healthy();
    let log = std::fs::read(&b.d.log).unwrap();
    assert!(
        !log.iter().any(|c| *c == 0x1b || *c == 0),
        "control bytes in the server log"
    );
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.lines()
            .any(|l| l.starts_with("[31m") || l.starts_with("lory") || l.starts_with("user")),
        "a forged line in the server log:\n{log}"
    );
    assert!(
        log.contains("key_id=mal\\n\\u{1b}[2J\\0lory"),
        "the key id is not logged escaped:\n{log}"
    );
    assert!(
        log.contains("host \"web-1\\n\\u{1b}[31m\\0\" refused"),
        "the host is not logged escaped:\n{log}"
    );
}
