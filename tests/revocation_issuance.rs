//! Issue 15, issuance side, against the real binary with curl, `ssh-keygen` as the judge
//! of certificates and KRLs, and the OpenSSH client for the bastion's `whoami`:
//! a certificate never outlives a temporary grant it carries, the revoked (by key id or
//! by key) get nothing, the KRL lists revoked keys, reasons are required where the
//! policy says so and travel in the certificate, and a host named like an IP address is
//! a policy error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ca, Key, SshClient, TestDir};
use harness::{Drawbridge, cert_info, keygen};

const PW: &str = "correct horse battery";

const HOSTS: &str = r#"
[hosts.web-1]
address = "10.20.0.11"
labels  = { role = "web" }

[hosts.db-1]
address = "10.20.0.21"
labels  = { role = "db" }
"#;

const PRINCIPALS: &str = r#"
[principals.web-deploy]
hosts  = { role = "web" }
logins = ["deploy"]

[principals.dba]
hosts  = ["db-1"]
logins = ["postgres"]
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rfc3339(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn ed25519_pub(dir: &Path, name: &str) -> PathBuf {
    keygen(dir, name, &["-t", "ed25519"]).with_extension("pub")
}

/// `POST /v1/certs{query}` with `user`'s password and the public key file `key`.
fn post_key(d: &Drawbridge, user: &str, key: &Path, query: &str) -> harness::Resp {
    let data = format!("@{}", key.display());
    let auth = format!("{user}:{PW}");
    d.curl(
        &format!("/v1/certs{query}"),
        &["-u", &auth, "--data-binary", &data],
    )
}

/// "Valid: from A to B" of `ssh-keygen -L`, B as Unix seconds.
fn valid_to(info: &str) -> u64 {
    let line = info
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap_or_else(|| panic!("no Valid line: {info}"));
    let to = line.rsplit(" to ").next().unwrap().trim();
    let out = Command::new("date")
        .args(["-d", to, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date of {to:?}"))
}

/// Rewrites a policy file and waits (bounded) until the server has reloaded it.
fn rewrite_policy(d: &Drawbridge, file: &str, text: &str) {
    let before = d.events("policy.reloaded").len();
    std::fs::write(d.path().join("policies").join(file), text).unwrap();
    d.signal("HUP");
    let ok = harness::wait_until(Duration::from_secs(10), || {
        d.events("policy.reloaded").len() > before
    });
    assert!(
        ok,
        "policy not reloaded: {:?}\n{}",
        d.events("policy.rejected"),
        d.server_log()
    );
}

/// `ssh-keygen -Q -f KRL FILE`: whether FILE (a key or a certificate) is revoked.
fn krl_revokes(krl: &Path, file: &Path) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = text.contains("REVOKED");
    assert_eq!(revoked, !out.status.success(), "{text}");
    assert!(revoked || text.contains(": ok"), "{text}");
    revoked
}

/// The `cert.refused` records of `user` with reason `revoked`.
fn revoked_refusals(d: &Drawbridge, user: &str) -> Vec<serde_json::Value> {
    d.events("cert.refused")
        .into_iter()
        .filter(|r| r["user"] == user && r["reason"] == "revoked")
        .collect()
}

// ---------------------------------------------------------------------------------------
// A certificate never outlives a temporary grant it carries (THREATS row 35).

#[test]
fn a_temporary_grant_until_caps_valid_before() {
    let until = now() + 240;
    let people = format!(
        r#"
[groups.ops]
members    = ["alice"]
principals = ["web-deploy"]

[[temporary]]
user      = "ivy"
principal = "dba"
until     = "{}"
reason    = "INC-4711"
"#,
        rfc3339(until)
    );
    let d = Drawbridge::start_with(
        &[
            ("hosts.toml", HOSTS),
            ("principals.toml", PRINCIPALS),
            ("people.toml", &people),
        ],
        "",
        &[],
    );
    d.add_user("ivy", PW);
    d.add_user("alice", PW);
    let key = ed25519_pub(d.path(), "ivy");
    let r = post_key(&d, "ivy", &key, "?ttl=30m");
    assert_eq!(r.status, 200, "{}", r.text());
    let to = valid_to(&cert_info(d.path(), &r.text()));
    assert!(
        to <= until,
        "the certificate ends at {to}, after its grant's until {until} ({} s later)",
        to.saturating_sub(until)
    );
    assert!(to + 60 >= until, "capped far below until: {to} vs {until}");
    let issued = d.events("cert.issued");
    let rec = issued.last().unwrap();
    assert_eq!(rec["valid_before"], until, "{rec}");
    let cap = rec["ttl_capped_by"].as_str().unwrap_or_default();
    assert!(
        cap.starts_with("temporary grant of dba until ")
            && cap.contains("(INC-4711)")
            && cap.ends_with("people.toml:6:1"),
        "{rec}"
    );

    // A principal held permanently is not capped by anyone's grant.
    let key = ed25519_pub(d.path(), "alice");
    let r = post_key(&d, "alice", &key, "?ttl=30m");
    assert_eq!(r.status, 200, "{}", r.text());
    let to = valid_to(&cert_info(d.path(), &r.text()));
    assert!(
        to >= now() + 29 * 60,
        "alice's certificate was capped: {to}"
    );
}

// ---------------------------------------------------------------------------------------
// The revoked get nothing (THREATS row 36).

#[test]
fn a_revoked_key_id_gets_403_revoked_whatever_the_serial() {
    let people = r#"
[users.mallory]
principals = ["web-deploy"]
[users.alice]
principals = ["web-deploy"]
"#;
    // The entry names a serial too: it does not matter, the key id alone revokes.
    let revoked = r#"
[[revoked]]
serial = 4242
key_id = "mallory"
reason = "left the company"
"#;
    let d = Drawbridge::start_with(
        &[
            ("hosts.toml", HOSTS),
            ("principals.toml", PRINCIPALS),
            ("people.toml", people),
            ("revoked.toml", revoked),
        ],
        "",
        &[],
    );
    d.add_user("mallory", PW);
    d.add_user("alice", PW);
    let key = ed25519_pub(d.path(), "mallory");
    for query in ["", "?ttl=1m", "?principals=web-deploy"] {
        let r = post_key(&d, "mallory", &key, query);
        assert_eq!(r.status, 403, "{query}: a revoked key id got {}", r.text());
        assert_eq!(r.json()["error"], "revoked", "{}", r.text());
    }
    let refused = revoked_refusals(&d, "mallory");
    assert_eq!(refused.len(), 3, "{refused:?}");
    for rec in &refused {
        let rule = rec["rule"].as_str().unwrap_or_default();
        assert!(
            rule.starts_with("[[revoked]] at ") && rule.ends_with("revoked.toml:2:1"),
            "{rec}"
        );
        assert_eq!(rec["revoked_by"], "key_id", "{rec}");
        assert!(rec["policy_version"].is_string(), "{rec}");
    }
    assert!(
        d.events("cert.issued")
            .iter()
            .all(|r| r["user"] != "mallory")
    );
    // Someone else is not affected.
    let r = post_key(&d, "alice", &ed25519_pub(d.path(), "alice"), "");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_revoked_public_key_gets_403_and_the_krl_revokes_it() {
    let people = "[users.alice]\nprincipals = [\"web-deploy\"]\n";
    let d = Drawbridge::start_with(
        &[
            ("hosts.toml", HOSTS),
            ("principals.toml", PRINCIPALS),
            ("people.toml", people),
        ],
        "",
        &[],
    );
    d.add_user("alice", PW);
    let lost = ed25519_pub(d.path(), "lost");
    let stolen = ed25519_pub(d.path(), "stolen");
    let kept = ed25519_pub(d.path(), "kept");
    // A certificate for the key that is about to be lost, and one for a kept key.
    let lost_cert = d.path().join("lost-cert.pub");
    let kept_cert = d.path().join("kept-cert.pub");
    for (key, cert) in [(&lost, &lost_cert), (&kept, &kept_cert)] {
        let r = post_key(&d, "alice", key, "");
        assert_eq!(r.status, 200, "{}", r.text());
        std::fs::write(cert, r.text()).unwrap();
    }

    // Revoked by its key line, and another by its SHA-256 fingerprint.
    let lost_line = std::fs::read_to_string(&lost).unwrap();
    let stolen_fp = {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&stolen)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(stolen_fp.starts_with("SHA256:"), "{stolen_fp}");
    let revoked = format!(
        "[[revoked]]\nkey_id = \"nobody\"\n\n[[revoked]]\nkey = \"{}\"\nreason = \"laptop lost\"\n\n[[revoked]]\nkey = \"{stolen_fp}\"\n",
        lost_line.trim()
    );
    rewrite_policy(&d, "revoked.toml", &revoked);

    for (key, line) in [(&lost, 4), (&stolen, 8)] {
        let r = post_key(&d, "alice", key, "");
        assert_eq!(
            r.status,
            403,
            "a revoked key ({}) got {}",
            key.display(),
            r.text()
        );
        assert_eq!(r.json()["error"], "revoked", "{}", r.text());
        let refused = revoked_refusals(&d, "alice");
        let rec = refused.last().unwrap();
        assert!(
            rec["rule"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("revoked.toml:{line}:1"))),
            "{rec}"
        );
        assert_eq!(rec["revoked_by"], "key", "{rec}");
        assert!(
            rec["key_fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:")),
            "{rec}"
        );
    }
    // The same user with another key is not revoked.
    let r = post_key(&d, "alice", &kept, "");
    assert_eq!(r.status, 200, "{}", r.text());

    // The KRL lists the key: its certificate from before and the bare key are revoked.
    let r = d.curl("/v1/krl", &[]);
    assert_eq!(r.status, 200);
    let krl = d.path().join("krl");
    std::fs::write(&krl, &r.body).unwrap();
    assert!(krl_revokes(&krl, &lost_cert), "the lost key's certificate");
    assert!(krl_revokes(&krl, &lost), "the lost key");
    assert!(krl_revokes(&krl, &stolen), "the key revoked by fingerprint");
    assert!(!krl_revokes(&krl, &kept_cert), "a kept key's certificate");

    // The bastion refuses the lost key's unexpired certificate; the kept one gets in.
    let t = TestDir::new();
    let host_ca = Ca {
        key: Key {
            path: d.path().join("ca/host_ca"),
        },
    };
    for (name, ok) in [("lost", false), ("kept", true)] {
        let key = Key {
            path: d.path().join(name),
        };
        let out = SshClient::new(&t, name, &host_ca, d.ssh.port(), "alice", &key)
            .run(&["bastion", "whoami"]);
        assert_eq!(out.success(), ok, "{name}: {out:?}");
    }
    let lost_fp = d.events("cert.issued")[0]["key_fingerprint"].clone();
    assert!(
        d.events("ssh.auth.failed")
            .iter()
            .any(|r| r["reason"] == "revoked" && r["key_fingerprint"] == lost_fp),
        "{:?}",
        d.events("ssh.auth.failed")
    );
}

// ---------------------------------------------------------------------------------------
// Reasons (DESIGN, Certificates).

#[test]
fn require_reason_refuses_without_one_and_carries_it_to_the_cert_audit_and_whoami() {
    let principals = format!(
        "{PRINCIPALS}\n[principals.prod-root]\nhosts = \"*\"\nlogins = [\"root\"]\nrequire_reason = true\n"
    );
    let people = "[users.bob]\nprincipals = [\"dba\", \"prod-root\"]\n";
    let d = Drawbridge::start_with(
        &[
            ("hosts.toml", HOSTS),
            ("principals.toml", &principals),
            ("people.toml", people),
        ],
        "",
        &[],
    );
    d.add_user("bob", PW);
    let t = TestDir::new();
    let key = t.keygen("bob");

    // Without a reason: 400 naming the role.
    let r = post_key(&d, "bob", &key.public(), "");
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "reason_required", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("role prod-root requires a reason")),
        "{body}"
    );
    let refused = d.events("cert.refused");
    assert_eq!(refused.last().unwrap()["reason"], "reason_required");
    // Without the role that requires it, no reason is needed.
    let r = post_key(&d, "bob", &key.public(), "?principals=dba");
    assert_eq!(r.status, 200, "{}", r.text());

    // A reason that is too long or not printable: 400.
    let long = "x".repeat(257);
    for bad in [format!("?reason={long}"), "?reason=a%0Ab".to_string()] {
        let r = post_key(&d, "bob", &key.public(), &bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_reason", "{}", r.text());
    }

    // With one: the extension, the audit record, and the bastion's whoami.
    let r = post_key(&d, "bob", &key.public(), "?reason=INC-4711%20db%20down");
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(key.cert(), r.text()).unwrap();
    let info = cert_info(d.path(), &r.text());
    let ext = info
        .lines()
        .find(|l| l.contains("reason@drawbridge"))
        .unwrap_or_else(|| panic!("no reason@drawbridge extension: {info}"));
    assert!(
        ext.contains(&hex("INC-4711 db down")),
        "the extension does not hold the reason: {ext}"
    );
    let issued = d.events("cert.issued");
    assert_eq!(issued.last().unwrap()["reason"], "INC-4711 db down");

    // The JSON body works too.
    let body = serde_json::json!({"public_key": key.public_line(), "reason": "CHG-1"}).to_string();
    let auth = format!("bob:{PW}");
    let r = d.curl(
        "/v1/certs",
        &[
            "-u",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.events("cert.issued").last().unwrap()["reason"], "CHG-1");

    let host_ca = Ca {
        key: Key {
            path: d.path().join("ca/host_ca"),
        },
    };
    let ssh = SshClient::new(&t, "bob", &host_ca, d.ssh.port(), "bob", &key);
    let out = ssh.run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}\n{}", d.server_log());
    assert!(
        out.stdout.contains("reason:      INC-4711 db down"),
        "whoami does not show the reason: {}",
        out.stdout
    );
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// A host named like an IP address (THREATS row 43).

#[test]
fn a_host_name_that_parses_as_an_ip_address_fails_policy_check() {
    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, ip) in [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("::1", "::1"),
    ] {
        assert!(Instant::now() < deadline);
        let t = TestDir::new();
        let dir = t.join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "[hosts.web-1]\naddress = \"127.0.0.1\"\n\n[hosts.\"{name}\"]\naddress = \"10.9.9.9\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("principals.toml"),
            "[principals.ops]\nhosts = \"*\"\nlogins = [\"root\"]\n",
        )
        .unwrap();
        let (code, out, err) =
            harness::run(&["policy", "check", dir.to_str().unwrap()], t.path(), None);
        assert_eq!(
            code, 1,
            "policy check accepted a host named {name:?}: {out}{err}"
        );
        let expected = format!(
            "{}:4:8: host name \"{name}\" parses as the IP address {ip}",
            dir.join("hosts.toml").display()
        );
        assert!(
            err.contains(&expected) || out.contains(&expected),
            "expected {expected:?} in: {out}{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Security keys (THREATS row 46): a signature without the user-presence flag.

/// A software `sk-ssh-ed25519@openssh.com` authenticator (application `ssh:`): the
/// public key line, and a signer of SSH signature blobs with chosen flags.
struct SoftSk {
    key: ed25519_dalek::SigningKey,
}

impl SoftSk {
    const APPLICATION: &'static str = "ssh:";

    fn new() -> SoftSk {
        SoftSk {
            key: harness::idp::signing_key(),
        }
    }

    fn public_line(&self) -> String {
        let pk = ssh_key::public::Ed25519PublicKey(self.key.verifying_key().to_bytes());
        let data = ssh_key::public::KeyData::SkEd25519(ssh_key::public::SkEd25519::new(
            pk,
            Self::APPLICATION,
        ));
        ssh_key::PublicKey::new(data, "soft-sk")
            .to_openssh()
            .unwrap()
    }

    /// The signature blob (PROTOCOL.u2f): the authenticator signs SHA-256(application) ‖
    /// flags ‖ counter ‖ SHA-256(data).
    fn sign(&self, data: &[u8], flags: u8, counter: u32) -> Vec<u8> {
        use ed25519_dalek::Signer;
        use sha2::{Digest, Sha256};
        let mut to_sign = Sha256::digest(Self::APPLICATION.as_bytes()).to_vec();
        to_sign.push(flags);
        to_sign.extend_from_slice(&counter.to_be_bytes());
        to_sign.extend_from_slice(&Sha256::digest(data));
        let sig = self.key.sign(&to_sign).to_bytes();
        let mut blob = Vec::new();
        for part in [b"sk-ssh-ed25519@openssh.com".as_slice(), sig.as_slice()] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        blob.push(flags);
        blob.extend_from_slice(&counter.to_be_bytes());
        blob
    }
}

/// Logs in to `addr` as `user` with `cert`, the signature made by `sk` with `flags`.
fn sk_login(
    addr: std::net::SocketAddr,
    user: &str,
    cert: &ssh_key::Certificate,
    sk: &SoftSk,
    flags: u8,
) -> bool {
    let mut s = common::rawssh_session::Session::connect(addr);
    s.authenticate_signed(user, cert, |data| sk.sign(data, flags, 7))
}

#[test]
fn a_security_key_signature_without_user_presence_is_refused_as_sshd_does() {
    if !common::need_sshd() {
        return;
    }
    let principals = format!(
        "{PRINCIPALS}\n[principals.kiosk]\nhosts = [\"web-1\"]\nlogins = [\"root\"]\nextensions = [\"permit-pty\", \"no-touch-required\"]\n"
    );
    let people = "[users.alice]\nprincipals = [\"web-deploy\", \"kiosk\"]\n";
    let d = Drawbridge::start_with(
        &[
            ("hosts.toml", HOSTS),
            ("principals.toml", &principals),
            ("people.toml", people),
        ],
        "",
        &[],
    );
    d.add_user("alice", PW);
    let t = TestDir::new();
    let host_ca = Ca::new(&t, "host_ca");
    let trusted = d.path().join("ca/trusted_user_ca_keys.pub");
    let sshd = common::Sshd::start(
        &t,
        "web-1",
        &[&trusted],
        &host_ca,
        // sshd waives the touch only when both the certificate and the principals line
        // say so (its options are ANDed); the bastion has only the certificate.
        &[("root", &["web-deploy", "no-touch-required kiosk"])],
    )
    .expect("sshd");

    let sk = SoftSk::new();
    let key_file = t.write("soft-sk.pub", sk.public_line());
    let cert_for = |role: &str| {
        let r = post_key(&d, "alice", &key_file, &format!("?principals={role}"));
        assert_eq!(r.status, 200, "{}", r.text());
        ssh_key::Certificate::from_openssh(r.text().trim()).unwrap()
    };
    let touch = cert_for("web-deploy");
    let no_touch = cert_for("kiosk");

    // OpenSSH's sshd, the reference: a touch is needed unless the certificate waives it.
    // (It also proves the software authenticator signs correctly.)
    assert!(
        sk_login(sshd.addr(), "root", &touch, &sk, 0x01),
        "{}",
        sshd.log()
    );
    assert!(
        !sk_login(sshd.addr(), "root", &touch, &sk, 0x00),
        "sshd took no touch"
    );
    assert!(
        sk_login(sshd.addr(), "root", &no_touch, &sk, 0x00),
        "{}",
        sshd.log()
    );

    // The bastion must agree.
    assert!(
        sk_login(d.ssh, "alice", &touch, &sk, 0x01),
        "{}",
        d.server_log()
    );
    assert!(
        sk_login(d.ssh, "alice", &no_touch, &sk, 0x00),
        "{}",
        d.server_log()
    );
    assert!(
        !sk_login(d.ssh, "alice", &touch, &sk, 0x00),
        "the bastion accepted a security-key signature made without user presence"
    );
    let refused = d.events("ssh.auth.failed");
    assert!(
        refused
            .iter()
            .any(|r| r["reason"] == "sk-no-user-presence" && r["key_id"] == "alice"),
        "{refused:?}"
    );
}
