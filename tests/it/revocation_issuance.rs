//! Revocation, issuance side (docs/threats.md, T35, T36, T43, T46), against the real
//! binary with curl, `ssh-keygen` as the judge of certificates and KRLs, and the OpenSSH
//! client for the bastion's `whoami`: a certificate never outlives a temporary grant it
//! carries, the revoked (by key id or by key) get nothing, the KRL lists revoked keys,
//! reasons are required where the policy says so and travel in the certificate, a host
//! named like an IP address is a policy error, and a security-key signature needs the
//! touch.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::support::drawbridge::{self, Drawbridge, PW, Resp, basic, user_key};
use crate::support::process::{COMMAND_TIMEOUT, run_ok, run_with_timeout};
use crate::support::softsk::SoftSk;
use crate::support::ssh::{Ca, Key, SshClient, TestDir, cert_info};
use crate::support::sshd::{Sshd, need_sshd};
use crate::support::wire::now;

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

/// `serve` with HOSTS, `principals`, `people` and `more` policy files, and `users` (with
/// the tests' password).
fn serve(principals: &str, people: &str, more: &[(&str, &str)], users: &[&str]) -> Drawbridge {
    let mut files = vec![
        ("hosts.toml", HOSTS),
        ("principals.toml", principals),
        ("people.toml", people),
    ];
    files.extend_from_slice(more);
    let d = Drawbridge::start_with(&files, "", &[]);
    for user in users {
        d.add_user(user, PW);
    }
    d
}

fn rfc3339(secs: u64) -> String {
    ::drawbridge::util::rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `POST /v1/certs{query}` with `user`'s password and the public key file `key`.
fn post_key(d: &Drawbridge, user: &str, key: &Path, query: &str) -> Resp {
    drawbridge::post_key(d, &["-u", &basic(user)], key, query)
}

/// "Valid: from A to B" of `ssh-keygen -L`, B as Unix seconds.
fn valid_to(info: &str) -> u64 {
    let line = info
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap_or_else(|| panic!("no Valid line: {info}"));
    let to = line.rsplit(" to ").next().unwrap().trim();
    // ssh-keygen prints local time; `date` reads it back in the same zone.
    run_ok(Command::new("date").args(["-d", to, "+%s"]))
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date of {to:?}"))
}

/// Rewrites a policy file and waits (bounded) until the server has reloaded it.
fn rewrite_policy(d: &Drawbridge, file: &str, text: &str) {
    d.reload_policy(|dir| std::fs::write(dir.join(file), text).unwrap());
}

/// `ssh-keygen -Q -f KRL FILE`: whether FILE (a key or a certificate) is revoked.
fn krl_revokes(krl: &Path, file: &Path) -> bool {
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(krl)
            .arg(file),
        COMMAND_TIMEOUT,
    );
    let text = out.text();
    let revoked = text.contains("REVOKED");
    assert!(!out.timed_out, "ssh-keygen -Q: {out:?}");
    assert_eq!(revoked, !out.success(), "{text}");
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
// A certificate never outlives a temporary grant it carries (T35).

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
    let d = serve(PRINCIPALS, &people, &[], &["ivy", "alice"]);
    let key = user_key(&d, "ivy");
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
    let key = user_key(&d, "alice");
    let r = post_key(&d, "alice", &key, "?ttl=30m");
    assert_eq!(r.status, 200, "{}", r.text());
    let to = valid_to(&cert_info(d.path(), &r.text()));
    assert!(
        to >= now() + 29 * 60,
        "alice's certificate was capped: {to}"
    );
}

// ---------------------------------------------------------------------------------------
// The revoked get nothing (T36).

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
    let d = serve(
        PRINCIPALS,
        people,
        &[("revoked.toml", revoked)],
        &["mallory", "alice"],
    );
    let key = user_key(&d, "mallory");
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
    let r = post_key(&d, "alice", &user_key(&d, "alice"), "");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_revoked_public_key_gets_403_and_the_krl_revokes_it() {
    let people = "[users.alice]\nprincipals = [\"web-deploy\"]\n";
    let d = serve(PRINCIPALS, people, &[], &["alice"]);
    let lost = user_key(&d, "lost");
    let stolen = user_key(&d, "stolen");
    let kept = user_key(&d, "kept");
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
        run_ok(Command::new("ssh-keygen").arg("-lf").arg(&stolen))
            .stdout
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
    let host_ca = d.ca("host_ca");
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
// Reasons: required where the policy says so, carried in the certificate.

#[test]
fn require_reason_refuses_without_one_and_carries_it_to_the_cert_audit_and_whoami() {
    let principals = format!(
        "{PRINCIPALS}\n[principals.prod-root]\nhosts = \"*\"\nlogins = [\"root\"]\nrequire_reason = true\n"
    );
    let people = "[users.bob]\nprincipals = [\"dba\", \"prod-root\"]\n";
    let d = serve(&principals, people, &[], &["bob"]);
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
    let r = drawbridge::post_json(&d, &["-u", &basic("bob")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.events("cert.issued").last().unwrap()["reason"], "CHG-1");

    let host_ca = d.ca("host_ca");
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
// A host named like an IP address (T43).

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
            drawbridge::run(&["policy", "check", dir.to_str().unwrap()], t.path(), None);
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
// Security keys (T46): a signature without the user-presence flag.

#[test]
fn a_security_key_signature_without_user_presence_is_refused_as_sshd_does() {
    if !need_sshd() {
        return;
    }
    let principals = format!(
        "{PRINCIPALS}\n[principals.kiosk]\nhosts = [\"web-1\"]\nlogins = [\"root\"]\nextensions = [\"permit-pty\", \"no-touch-required\"]\n"
    );
    let people = "[users.alice]\nprincipals = [\"web-deploy\", \"kiosk\"]\n";
    let d = serve(&principals, people, &[], &["alice"]);
    let t = TestDir::new();
    let host_ca = Ca::new(&t, "host_ca");
    let trusted = d.path().join("ca/trusted_user_ca_keys.pub");
    let sshd = Sshd::start(
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
        sk.login(sshd.addr(), "root", &touch, SoftSk::USER_PRESENT),
        "{}",
        sshd.log()
    );
    assert!(
        !sk.login(sshd.addr(), "root", &touch, 0),
        "sshd took no touch"
    );
    assert!(
        sk.login(sshd.addr(), "root", &no_touch, 0),
        "{}",
        sshd.log()
    );

    // The bastion must agree.
    assert!(
        sk.login(d.ssh, "alice", &touch, SoftSk::USER_PRESENT),
        "{}",
        d.server_log()
    );
    assert!(sk.login(d.ssh, "alice", &no_touch, 0), "{}", d.server_log());
    assert!(
        !sk.login(d.ssh, "alice", &touch, 0),
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
