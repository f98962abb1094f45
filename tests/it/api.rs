//! The HTTPS API against the real binary, with curl as the client and OpenSSH's
//! `ssh-keygen -L` as the judge of certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::drawbridge::{Drawbridge, PW, post_json, post_key, user_key};
use crate::support::process::{COMMAND_TIMEOUT, KillOnDrop, run_ok, run_with_timeout, wait_until};
use crate::support::ssh::{cert_info, keygen, keygen_with};
use base64::Engine;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn password_login_issues_a_certificate_openssh_accepts() {
    let d = Drawbridge::start("");
    d.add_user("alice", PW);
    let key = user_key(&d, "alice_key");
    let r = post_key(&d, &["-u", &format!("alice:{PW}")], &key, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let line = r.text();
    assert!(
        line.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{line}"
    );
    let info = cert_info(d.path(), &line);
    assert!(info.contains("user certificate"), "{info}");
    assert!(info.contains("Key ID: \"alice\""), "{info}");
    assert!(
        info.contains("Principals: \n                web-deploy\n"),
        "{info}"
    );
    assert!(info.contains("permit-pty"), "{info}");
    assert!(info.contains("permit-port-forwarding"), "{info}");
    assert!(info.contains("groups@drawbridge"), "{info}");
    assert!(!info.contains("permit-agent-forwarding"), "{info}");
    assert!(info.contains("Critical Options: (none)"), "{info}");

    // The audit record is there, with the same serial, before the response was sent.
    let issued = d.events("cert.issued");
    assert_eq!(issued.len(), 1);
    let serial = issued[0]["serial"].as_u64().unwrap();
    assert_ne!(serial, 0);
    assert!(info.contains(&format!("Serial: {serial}")), "{info}");
    let va = issued[0]["valid_after"].as_u64().unwrap();
    let vb = issued[0]["valid_before"].as_u64().unwrap();
    assert_eq!(
        vb - va,
        5 * 60 + 60,
        "default 5 min TTL plus 60 s backdating"
    );
    assert!(va <= now() - 59 && va >= now() - 70);
    assert_eq!(issued[0]["user"], "alice");
    assert!(issued[0]["policy_version"].as_str().unwrap().len() > 8);
}

#[test]
fn ttl_is_capped_and_principals_subset_or_403() {
    let d = Drawbridge::start("");
    d.add_user("alice", PW);
    d.add_user("ivy", PW);
    let key = user_key(&d, "k");
    let auth = format!("alice:{PW}");
    // web-deploy's max_ttl is 15m: asking 1h gives 15m.
    let r = post_key(&d, &["-u", &auth], &key, "?ttl=1h");
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = d.events("cert.issued").pop().unwrap();
    assert_eq!(rec["ttl_secs"], 900);
    // Asking for a principal not held is 403, never silently dropped.
    let r = post_key(&d, &["-u", &auth], &key, "?principals=web-deploy,dba");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "principal_not_held");
    assert!(r.json()["message"].as_str().unwrap().contains("dba"));
    let refused = d.events("cert.refused").pop().unwrap();
    assert_eq!(refused["reason"], "principal_not_held");
    // The temporary grant gives ivy dba.
    let r = post_key(&d, &["-u", &format!("ivy:{PW}")], &key, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(cert_info(d.path(), &r.text()).contains("dba"));
    // JSON body form.
    let pubkey = std::fs::read_to_string(&key).unwrap();
    let body = serde_json::json!({"public_key": pubkey, "ttl": "2m"}).to_string();
    let r = post_json(&d, &["-u", &auth], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.events("cert.issued").pop().unwrap()["ttl_secs"], 120);
}

#[test]
fn user_holding_no_principal_gets_403() {
    let d = Drawbridge::start("");
    d.add_user("erin", PW);
    let key = user_key(&d, "k");
    let r = post_key(&d, &["-u", &format!("erin:{PW}")], &key, "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "no_principals");
}

#[test]
fn source_address_from_policy_becomes_a_critical_option() {
    let d = Drawbridge::start("");
    d.add_user("bob", PW);
    let key = user_key(&d, "k");
    let r = post_key(&d, &["-u", &format!("bob:{PW}")], &key, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let info = cert_info(d.path(), &r.text());
    assert!(info.contains("source-address 192.0.2.0/24\n"), "{info}");

    // The DMZ host sees the bastion's address: with the bastion's egress address
    // configured, it is added where the policy limits the user.
    let mut d = Drawbridge::prepare_with_ssh(
        &[
            ("hosts.toml", crate::support::drawbridge::POLICY_HOSTS),
            (
                "principals.toml",
                crate::support::drawbridge::POLICY_PRINCIPALS,
            ),
            ("people.toml", crate::support::drawbridge::POLICY_PEOPLE),
        ],
        "",
        "egress_addresses = [\"10.9.0.5/32\"]",
    );
    d.launch(&[]);
    d.add_user("bob", PW);
    d.add_user("alice", PW);
    let key = user_key(&d, "k");
    let r = post_key(&d, &["-u", &format!("bob:{PW}")], &key, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let info = cert_info(d.path(), &r.text());
    assert!(
        info.contains("source-address 192.0.2.0/24,10.9.0.5/32"),
        "{info}"
    );
    // A user the policy does not limit gets no source-address at all.
    let r = post_key(&d, &["-u", &format!("alice:{PW}")], &key, "");
    assert!(cert_info(d.path(), &r.text()).contains("Critical Options: (none)"));
}

#[test]
fn bearer_token_from_login() {
    let d = Drawbridge::start("");
    d.add_user("alice", PW);
    let r = d.curl("/v1/login", &["-u", &format!("alice:{PW}"), "-X", "POST"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = d.events("login.ok");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(
        (ok[0]["user"].as_str(), ok[0]["rule"].as_str()),
        (Some("alice"), Some("paths.users"))
    );
    assert!(
        ok[0]["policy_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let j = r.json();
    let token = j["token"].as_str().unwrap().to_string();
    assert!(j["expires_at"].as_str().unwrap().ends_with('Z'));
    let key = user_key(&d, "k");
    let bearer = format!("Authorization: Bearer {token}");
    let r = post_key(&d, &["-H", &bearer], &key, "");
    assert_eq!(r.status, 200, "{}", r.text());
    // A token is not a password: /v1/login takes Basic only.
    let r = d.curl("/v1/login", &["-H", &bearer, "-X", "POST"]);
    assert_eq!(r.status, 401);
    // An edited token is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[1])
        .unwrap();
    let edited = String::from_utf8(claims).unwrap().replace("alice", "carol");
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(edited);
    let r = post_key(
        &d,
        &["-H", &format!("Authorization: Bearer {}", parts.join("."))],
        &key,
        "",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // No secret in the audit log.
    let log = std::fs::read_to_string(d.audit_path()).unwrap();
    assert!(!log.contains(PW));
    assert!(!log.contains(&token));
}

#[test]
fn refusals_are_clear_json() {
    let d = Drawbridge::start("");
    d.add_user("alice", PW);
    let key = user_key(&d, "k");
    let auth = format!("alice:{PW}");

    // Wrong password and unknown user: same 401.
    let wrong = post_key(&d, &["-u", "alice:nope"], &key, "");
    let unknown = post_key(&d, &["-u", "zed:nope"], &key, "");
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.json()["message"], unknown.json()["message"]);
    assert!(wrong.header("www-authenticate").is_some());

    // No credentials and a bad body: 401, not 400 (auth comes first).
    let r = d.curl("/v1/certs", &["--data-binary", "garbage"]);
    assert_eq!(r.status, 401, "{}", r.text());

    // Bad key line, RSA-1024, a certificate, two keys: 400 naming the problem.
    let r = d.curl(
        "/v1/certs",
        &["-u", &auth, "--data-binary", "ssh-ed25519 notbase64!"],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let rsa = keygen_with(&d.path().join("rsa1024"), &["-t", "rsa", "-b", "1024"]);
    let r = post_key(&d, &["-u", &auth], &rsa.public(), "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["message"].as_str().unwrap().contains("1024"),
        "{}",
        r.text()
    );
    let two = format!(
        "{}{}",
        std::fs::read_to_string(&key).unwrap(),
        std::fs::read_to_string(&key).unwrap()
    );
    let r = d.curl("/v1/certs", &["-u", &auth, "--data-binary", &two]);
    assert_eq!(r.status, 400, "{}", r.text());

    // Oversized body: 413. Wrong content type: 415.
    let big = d.path().join("big");
    std::fs::write(&big, vec![b'A'; 64 * 1024]).unwrap();
    let r = post_key(&d, &["-u", &auth], &big, "");
    assert_eq!(r.status, 413, "{}", r.text());
    let data = format!("@{}", key.display());
    let r = d.curl(
        "/v1/certs",
        &[
            "-u",
            &auth,
            "-H",
            "Content-Type: image/png",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(r.status, 415, "{}", r.text());

    // Every error is JSON {error, message}.
    for r in [&wrong, &unknown] {
        let j = r.json();
        assert!(j["error"].is_string() && j["message"].is_string());
    }
    // Refusals are audited with their reasons, and the chain verifies.
    let reasons: Vec<String> = d
        .events("cert.refused")
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons.iter().any(|r| r == "body_too_large"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "unsupported_media_type"),
        "{reasons:?}"
    );
    assert!(d.events("login.failed").len() >= 2);
    let (code, out, err) = d.cli(&["audit", "verify", d.audit_path().to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn failed_logins_are_rate_limited_with_retry_after() {
    let d = Drawbridge::start("[login]\nmax_failures = 3\nwindow = \"1m\"\n");
    d.add_user("alice", PW);
    let mut last = None;
    for _ in 0..5 {
        let r = d.curl("/v1/login", &["-u", "alice:bad", "-X", "POST"]);
        last = Some(r);
    }
    let r = last.unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Even the right password is refused while limited.
    let r = d.curl("/v1/login", &["-u", &format!("alice:{PW}"), "-X", "POST"]);
    assert_eq!(r.status, 429);
}

#[test]
fn public_endpoints() {
    let d = Drawbridge::start("");
    let ca = d.curl("/v1/ca", &[]);
    assert_eq!(ca.status, 200);
    assert!(ca.text().starts_with("ssh-ed25519 "), "{}", ca.text());
    let kh = d.curl("/v1/known_hosts", &[]);
    assert_eq!(kh.status, 200);
    assert!(
        kh.text().starts_with("@cert-authority * ssh-ed25519 "),
        "{}",
        kh.text()
    );
    let h = d.curl("/healthz", &[]);
    assert_eq!(h.status, 200);
    let m = d.curl("/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("drawbridge_certs_issued_total"),
        "{}",
        m.text()
    );
    let nf = d.curl("/v1/nothing", &[]);
    assert_eq!(nf.status, 404);
    assert_eq!(nf.json()["error"], "not_found");
    // Plain HTTP to the HTTPS port does not get an answer in clear.
    let out = run_with_timeout(
        std::process::Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://{}/healthz", d.api)),
        COMMAND_TIMEOUT,
    );
    assert_ne!(out.stdout, "200");
}

mod oidc {
    use super::*;
    use crate::support::idp::{
        Idp, claims, edited, hmac_with_public_key, signing_key, token, unsigned,
    };
    use serde_json::json;

    #[test]
    fn oidc_tokens_are_verified() {
        let provider = Idp::new();
        let idp = &provider.key;
        let foreign = signing_key();
        let d = Drawbridge::start(&provider.config());
        let key = user_key(&d, "k");
        let bearer = |t: &str| format!("Authorization: Bearer {t}");

        // frank is in no policy group; the IdP says he is in ops: he gets web-deploy.
        let good = token(idp, "k1", claims("frank", &["ops"], 300));
        let r = post_key(&d, &["-H", &bearer(&good)], &key, "");
        assert_eq!(r.status, 200, "{}", r.text());
        let info = cert_info(d.path(), &r.text());
        assert!(info.contains("Key ID: \"frank\""), "{info}");
        assert!(info.contains("web-deploy"), "{info}");

        let now = now() as i64;
        let cases: Vec<(&str, String)> = vec![
            ("expired", token(idp, "k1", claims("frank", &["ops"], -600))),
            ("other issuer", {
                let mut c = claims("frank", &["ops"], 300);
                c["iss"] = "https://evil.test".into();
                token(idp, "k1", c)
            }),
            ("wrong audience", {
                let mut c = claims("frank", &["ops"], 300);
                c["aud"] = "someone-else".into();
                token(idp, "k1", c)
            }),
            (
                "unknown kid",
                token(idp, "k9", claims("frank", &["ops"], 300)),
            ),
            (
                "foreign key, known kid",
                token(&foreign, "k1", claims("frank", &["ops"], 300)),
            ),
            (
                "alg none",
                unsigned(
                    json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
                    claims("frank", &["ops"], 300),
                ),
            ),
            (
                "hmac with the public key",
                hmac_with_public_key(idp, "k1", claims("frank", &["ops"], 300)),
            ),
            ("exp as a string", {
                let mut c = claims("frank", &["ops"], 300);
                c["exp"] = serde_json::Value::String((now + 300).to_string());
                token(idp, "k1", c)
            }),
            ("missing exp", {
                let mut c = claims("frank", &["ops"], 300);
                c.as_object_mut().unwrap().remove("exp");
                token(idp, "k1", c)
            }),
            (
                "edited claims",
                edited(
                    &token(idp, "k1", claims("frank", &[], 300)),
                    claims("frank", &["ops"], 300),
                ),
            ),
        ];
        for (what, t) in cases {
            let r = post_key(&d, &["-H", &bearer(&t)], &key, "");
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            assert_eq!(r.json()["error"].as_str().map(|_| ()), Some(()), "{what}");
        }
        assert_eq!(d.events("cert.issued").len(), 1);
        assert!(d.events("login.failed").len() >= 10);
    }
}

/// The README's two steps on the embedded default: `drawbridge serve` with no config
/// in a fresh folder holding the example policy, then the README's curl line.
#[test]
fn readme_default_run_and_curl_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    run_ok(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(repo.join("policies"))
            .arg(dir.path()),
    );
    if std::net::TcpListener::bind("127.0.0.1:8443").is_err()
        || std::net::TcpListener::bind("127.0.0.1:2222").is_err()
    {
        panic!("the default ports 8443 and 2222 are taken; stop what uses them to run this test");
    }
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let serve = KillOnDrop(
        std::process::Command::new(crate::support::drawbridge::BIN)
            .arg("serve")
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until(
        Duration::from_secs(30),
        || std::net::TcpStream::connect("127.0.0.1:8443").is_ok(),
        || {
            let log = std::fs::read_to_string(dir.path().join("serve.log"));
            format!("serve did not start: {}", log.unwrap_or_default())
        },
    );
    let (code, out, err) = crate::support::drawbridge::run(
        &["user", "add", "alice", "--password-stdin"],
        dir.path(),
        Some("s3cret-pass\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let key = keygen(&dir.path().join("id_ed25519"), "ed25519").path;
    // The README's line, with the password given to curl instead of typed.
    let out = run_with_timeout(
        std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--cacert",
                "ca/tls.crt",
                "-u",
                "alice:s3cret-pass",
                "--data-binary",
            ])
            .arg(format!("@{}.pub", key.display()))
            .args(["https://127.0.0.1:8443/v1/certs", "-o"])
            .arg(format!("{}-cert.pub", key.display()))
            .current_dir(dir.path()),
        COMMAND_TIMEOUT,
    );
    drop(serve);
    assert!(out.success(), "curl: {}", out.stderr);
    let cert = std::fs::read_to_string(format!("{}-cert.pub", key.display())).unwrap();
    assert!(cert_info(dir.path(), &cert).contains("Key ID: \"alice\""));
}
