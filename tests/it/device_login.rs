//! Logging in through a real identity provider (`oidc-provider`, run by Node) with the
//! device flow, from two curl calls to `ssh -J`; the RFC 8628 answers and refusals; and the
//! TOTP second factor of password users.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::dmz;
use crate::support::drawbridge::{Drawbridge, Resp, post_key};
use crate::support::oidc_provider::OidcProvider;
use crate::support::ssh::cert_info;

fn start_device(d: &Drawbridge) -> Value {
    let r = d.curl("/v1/device", &["-X", "POST"]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn poll(d: &Drawbridge, device_code: &str) -> Resp {
    let body = serde_json::json!({ "device_code": device_code }).to_string();
    d.curl(
        "/v1/device/token",
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    )
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
}

/// Polls until the answer is not `authorization_pending`, honouring the interval.
fn poll_until_done(d: &Drawbridge, device_code: &str, mut interval: u64) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = poll(d, device_code);
        let error = if r.status == 400 {
            r.json()["error"].as_str().unwrap_or_default().to_string()
        } else {
            String::new()
        };
        match error.as_str() {
            "authorization_pending" => {}
            "slow_down" => interval += 5,
            _ => return r,
        }
        assert!(Instant::now() < deadline, "device login never ended");
        std::thread::sleep(Duration::from_secs(interval));
    }
}

/// The whole path a person takes: `curl -X POST /v1/device`, log in at the provider (in
/// group `ops` there, in no policy group here), `curl /v1/device/token`, a certificate
/// with the group's principals, and `ssh -J` through the bastion to web-1. The code works
/// once.
#[test]
fn device_login_from_two_curl_calls_to_ssh_through_the_bastion() {
    let idp = OidcProvider::start(600, 1);
    let Some(b) = dmz::start_configured("", &idp.config(), &[]) else {
        return;
    };
    let d = &b.d;
    let started = start_device(d);
    let code = started["device_code"].as_str().unwrap().to_string();
    let uri = started["verification_uri_complete"].as_str().unwrap();
    assert!(uri.starts_with(&idp.issuer), "{started}");
    assert!(
        started["user_code"].as_str().unwrap().len() >= 8,
        "{started}"
    );
    assert_eq!(started["interval"], 1, "{started}");
    assert_eq!(started["expires_in"], 600, "{started}");
    // Ours: 256 random bits, not the provider's code.
    assert_eq!(code.len(), 43, "{started}");
    assert!(!idp.log().contains(&code));

    idp.approve(uri, "erin", &["ops"]);
    let r = poll_until_done(d, &code, 1);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), d.server_log());
    let token = r.json()["token"].as_str().unwrap().to_string();

    // Groups from the provider's claims become principals.
    let key = b.t.keygen("erin");
    let auth = format!("Authorization: Bearer {token}");
    let cert = post_key(d, &["-H", &auth], &key.public(), "");
    assert_eq!(cert.status, 200, "{}", cert.text());
    let info = cert_info(d.path(), &cert.text());
    assert!(info.contains("web-admin"), "{info}");
    std::fs::write(key.cert(), &cert.body).unwrap();
    let out = b
        .client("erin", &key)
        .run(&["web-1", "echo", "via-device-login"]);
    assert!(out.success(), "{}\n{}", out.stderr, d.server_log());
    assert_eq!(out.stdout.trim(), "via-device-login");

    // The same code again: refused, whatever the provider would say.
    std::thread::sleep(Duration::from_secs(2));
    assert_error(&poll(d, &code), 400, "invalid_grant");

    let started_rec = d.events("device.started");
    assert_eq!(started_rec.len(), 1, "{started_rec:?}");
    assert_eq!(started_rec[0]["issuer"], idp.issuer.as_str());
    let ok = d.events("login.ok");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["user"], "erin");
    assert_eq!(ok[0]["method"], "oidc");
    // The certificate came from the drawbridge token the device login gave.
    let issued = d.events("cert.issued").pop().unwrap();
    assert_eq!(issued["user"], "erin");
    assert_eq!(issued["method"], "token");
    let failed = d.events("login.failed");
    assert!(
        failed
            .iter()
            .any(|r| r["reason"] == "invalid_grant" && r["detail"] == "device_code already used"),
        "{failed:?}"
    );
    // Neither code reaches the log.
    let audit = std::fs::read_to_string(d.audit_path()).unwrap();
    assert!(!audit.contains(&code));
    assert!(!d.server_log().contains(&code));
}

/// `authorization_pending` until the person is done; polling sooner than the interval gets
/// `slow_down` and the interval grows by 5 s; a person who refuses at the provider gives
/// `access_denied`; a code never handed out is `invalid_grant`.
#[test]
fn device_login_pending_slow_down_access_denied_and_a_guessed_code() {
    let idp = OidcProvider::start(600, 1);
    let d = Drawbridge::start(&idp.config());

    let started = start_device(&d);
    let code = started["device_code"].as_str().unwrap().to_string();
    assert_error(&poll(&d, &code), 400, "authorization_pending");
    let fast = poll(&d, &code);
    assert_error(&fast, 400, "slow_down");
    assert!(
        fast.json()["message"].as_str().unwrap().contains("6 s"),
        "{}",
        fast.text()
    );
    // Still too soon for the grown interval (1 + 5 + 5 s now).
    std::thread::sleep(Duration::from_secs(2));
    assert_error(&poll(&d, &code), 400, "slow_down");
    std::thread::sleep(Duration::from_secs(12));
    assert_error(&poll(&d, &code), 400, "authorization_pending");

    // The person refuses at the provider.
    let other = start_device(&d);
    idp.refuse(other["verification_uri_complete"].as_str().unwrap());
    let other_code = other["device_code"].as_str().unwrap();
    assert_error(&poll_until_done(&d, other_code, 1), 400, "access_denied");

    // A guessed code, and one of the wrong shape.
    assert_error(
        &poll(&d, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        400,
        "invalid_grant",
    );
    assert_error(&poll(&d, &"x".repeat(200)), 400, "invalid_grant");
    assert_error(&poll(&d, &"x".repeat(5000)), 413, "body_too_large");

    let failed = d.events("login.failed");
    assert!(
        failed
            .iter()
            .any(|r| r["reason"] == "access_denied" && r["method"] == "oidc"),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(
            |r| r["reason"] == "invalid_grant" && r["detail"] == "device_code never handed out"
        ),
        "{failed:?}"
    );
    // The waiting answers are not records.
    assert!(
        !failed
            .iter()
            .any(|r| r["reason"] == "slow_down" || r["reason"] == "authorization_pending")
    );
}

/// A code past the provider's `expires_in` is `expired_token`, and stays so when polled
/// again.
#[test]
fn device_login_expires_with_the_providers_expires_in() {
    let idp = OidcProvider::start(3, 1);
    let d = Drawbridge::start(&idp.config());
    let started = start_device(&d);
    assert_eq!(started["expires_in"], 3, "{started}");
    let code = started["device_code"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(3500));
    assert_error(&poll(&d, &code), 400, "expired_token");
    assert_error(&poll(&d, &code), 400, "expired_token");
    let failed = d.events("login.failed");
    assert!(
        failed.iter().any(|r| r["reason"] == "expired_token"),
        "{failed:?}"
    );
}

/// Pending device logins are bounded per source: past `login.device_pending_per_source`
/// a start gets 429 `device_limit`, and nothing is asked of the provider.
#[test]
fn device_logins_per_source_are_bounded() {
    let idp = OidcProvider::start(600, 1);
    let d = Drawbridge::start(&format!(
        "[login]\ndevice_pending_per_source = 2\n\n{}",
        idp.config()
    ));
    start_device(&d);
    start_device(&d);
    let r = d.curl("/v1/device", &["-X", "POST"]);
    assert_error(&r, 429, "device_limit");
    assert!(r.header("retry-after").is_some(), "{}", r.headers);
    let failed = d.events("login.failed");
    assert!(
        failed.iter().any(
            |r| r["reason"] == "device_limit" && r["rule"] == "login.device_pending_per_source"
        ),
        "{failed:?}"
    );
}

/// The provider's ID token is judged as a bearer ID token: one signed by a key drawbridge
/// does not trust (its `jwks` names another key) ends the login with `invalid_grant`, and
/// no token.
#[test]
fn device_login_refuses_an_id_token_the_bearer_check_would_refuse() {
    let idp = OidcProvider::start(600, 1);
    // The provider signs with its own key; drawbridge trusts another one.
    let keys = tempfile::tempdir().unwrap();
    let jwks = keys.path().join("other-jwks.json");
    let other = crate::support::idp::signing_key();
    std::fs::write(&jwks, crate::support::idp::jwks(&[("other", &other)])).unwrap();
    let config = idp.config().replace(
        &format!("jwks = \"{}/jwks\"", idp.issuer),
        &format!("jwks = \"{}\"", jwks.display()),
    );
    let d = Drawbridge::start(&config);
    let started = start_device(&d);
    let code = started["device_code"].as_str().unwrap().to_string();
    idp.approve(
        started["verification_uri_complete"].as_str().unwrap(),
        "erin",
        &["ops"],
    );
    let r = poll_until_done(&d, &code, 1);
    assert_error(&r, 400, "invalid_grant");
    assert!(
        r.json()["message"].as_str().unwrap().contains("token"),
        "{}",
        r.text()
    );
    assert!(d.events("login.ok").is_empty());
    let failed = d.events("login.failed");
    assert!(
        failed
            .iter()
            .any(|r| r["reason"] == "invalid_grant" && r["rule"] == "token"),
        "{failed:?}"
    );
}

/// An `[[oidc]]` whose `audience` is not its `client_id` cannot run device logins (the
/// ID token is addressed to the client): `serve` says so at start.
#[test]
fn device_login_needs_the_audience_to_be_the_client_id() {
    let idp = OidcProvider::start(600, 1);
    let config = idp
        .config()
        .replace("audience = \"drawbridge\"", "audience = \"something-else\"");
    let d = Drawbridge::prepare(&crate::support::drawbridge::FIXTURE_POLICY, &config);
    let (code, out, err) = d.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = d.cli(&["serve"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("must be the client_id"), "{err}");
}

/// A confidential client: the secret comes from `client_secret_file` (0600, else `serve`
/// refuses to start), goes to the provider with HTTP Basic, and reaches no log.
#[test]
fn device_login_with_a_client_secret_that_reaches_no_log() {
    const SECRET: &str = "idp-test-client-secret-4f1c9a";
    let idp = OidcProvider::start(600, 1);
    let config = idp
        .config()
        .replace("\"drawbridge\"", "\"drawbridge-confidential\"")
        + "client_secret_file = \"idp-client-secret\"\n";
    let mut d = Drawbridge::prepare(&crate::support::drawbridge::FIXTURE_POLICY, &config);
    let secret_file = d.path().join("idp-client-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = d.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = d.cli(&["serve"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("client_secret_file"), "{err}");

    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.launch(&[]);
    let started = start_device(&d);
    let code = started["device_code"].as_str().unwrap().to_string();
    idp.approve(
        started["verification_uri_complete"].as_str().unwrap(),
        "erin",
        &["ops"],
    );
    let r = poll_until_done(&d, &code, 1);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), d.server_log());
    assert!(!d.server_log().contains(SECRET));
    assert!(
        !std::fs::read_to_string(d.audit_path())
            .unwrap()
            .contains(SECRET)
    );
}

/// Without an `[[oidc]]` that has a `client_id`, device logins are unavailable (503).
#[test]
fn device_login_without_a_provider_is_unavailable() {
    let d = Drawbridge::start("");
    assert_error(
        &d.curl("/v1/device", &["-X", "POST"]),
        503,
        "device_unavailable",
    );
}

/// A provider that went away: a start is 503 `device_unavailable` with a message that
/// says so, recorded as `login.failed` with what failed (for the operator), and the
/// service keeps answering.
#[test]
fn device_login_with_the_provider_gone_is_unavailable_and_recorded() {
    let idp = OidcProvider::start(600, 1);
    let d = Drawbridge::start(&idp.config());
    drop(idp);
    let r = d.curl("/v1/device", &["-X", "POST"]);
    assert_error(&r, 503, "device_unavailable");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be reached"),
        "{}",
        r.text()
    );
    let failed = d.events("login.failed");
    assert!(
        failed
            .iter()
            .any(|f| f["reason"] == "device_unavailable" && f["method"] == "oidc"),
        "{failed:?}"
    );
    assert_eq!(d.curl("/healthz", &[]).status, 200);
}

// TOTP ----------------------------------------------------------------------------------

/// `user add NAME --totp`: the URI and a QR code on stdout once; the secret in the users
/// file (0600). Returns the base32 secret.
fn enrol(d: &Drawbridge, name: &str, password: &str) -> String {
    let (code, out, err) = d.cli(
        &["user", "add", name, "--password-stdin", "--totp"],
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
    let uri = out.lines().next().unwrap();
    assert!(
        uri.starts_with(&format!("otpauth://totp/drawbridge:{name}?")),
        "{out}"
    );
    assert!(out.contains('█') || out.contains('▀'), "no QR code: {out}");
    uri.split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_string()
}

fn totp_code(secret: &str, name: &str, at: u64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .with_account_name(name)
        .build()
        .unwrap();
    totp.generate(at).to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn login(d: &Drawbridge, user: &str, password: &str, otp: Option<&str>) -> Resp {
    let creds = format!("{user}:{password}");
    let header = otp.map(|c| format!("Drawbridge-OTP: {c}"));
    let mut args = vec!["-X", "POST", "-u", creds.as_str()];
    if let Some(h) = &header {
        args.extend(["-H", h.as_str()]);
    }
    d.curl("/v1/login", &args)
}

/// Waits, if needed, until at least 3 s remain in the current 30 s step, so a test's
/// codes and its "two steps ago" are what it thinks they are.
fn early_in_a_step() {
    let left = 30 - now_secs() % 30;
    if left < 4 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

#[test]
fn totp_enrol_then_login_with_a_code_once() {
    let d = Drawbridge::start("");
    let secret = enrol(&d, "tina", "pw-tina");
    let users = d.path().join("ca/users.toml");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains(&secret), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&users).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    early_in_a_step();
    // The right password without a code.
    let r = login(&d, "tina", "pw-tina", None);
    assert_error(&r, 401, "otp_required");
    // A wrong password without a code: the same as for any user.
    assert_error(
        &login(&d, "tina", "wrong", None),
        401,
        "invalid_credentials",
    );
    let now = now_secs();
    let code = totp_code(&secret, "tina", now);
    let ok = login(&d, "tina", "pw-tina", Some(&code));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.json()["token"].is_string());
    // The same code again.
    assert_error(
        &login(&d, "tina", "pw-tina", Some(&code)),
        401,
        "invalid_credentials",
    );
    // The previous step's code is within the skew, once.
    let previous = totp_code(&secret, "tina", now - 30);
    if previous != code {
        assert_eq!(login(&d, "tina", "pw-tina", Some(&previous)).status, 200);
    }
    // A code from two steps ago.
    let old = totp_code(&secret, "tina", now - 60);
    if old != code && old != previous {
        assert_error(
            &login(&d, "tina", "pw-tina", Some(&old)),
            401,
            "invalid_credentials",
        );
    }
    let failed = d.events("login.failed");
    let details: Vec<&str> = failed.iter().filter_map(|r| r["detail"].as_str()).collect();
    assert!(details.contains(&"one-time code missing"), "{details:?}");
    assert!(
        details.contains(&"one-time code already used"),
        "{details:?}"
    );
    assert!(
        details.contains(&"one-time code wrong or outside one step of now"),
        "{details:?}"
    );
    // No code or secret in the log.
    let audit = std::fs::read_to_string(d.audit_path()).unwrap();
    assert!(!audit.contains(&secret));
    assert!(!audit.contains(&format!("\"{code}\"")));

    // A password change without --totp keeps the second factor.
    let (c, out, err) = d.cli(
        &["user", "add", "tina", "--password-stdin"],
        Some("pw-tina-2\n"),
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_error(&login(&d, "tina", "pw-tina-2", None), 401, "otp_required");

    // Re-enrolling gives a new secret: the old one's codes stop working.
    let (c, out, err) = d.cli(&["user", "totp", "tina"], None);
    assert_eq!(c, 0, "{out}{err}");
    assert!(!out.contains(&secret));
    let stored = std::fs::read_to_string(&users).unwrap();
    assert!(!stored.contains(&secret), "{stored}");
    // Only an existing password user can be enrolled.
    let (c, out, err) = d.cli(&["user", "totp", "nobody"], None);
    assert_eq!(c, 1, "{out}{err}");
    assert!(err.contains("no password user nobody"), "{err}");
}

/// Guessing codes with the right password is limited as guessing passwords: failures
/// count in `login.max_failures`, then 429 even for the right code.
#[test]
fn totp_brute_force_reaches_the_login_limit() {
    let d = Drawbridge::start("[login]\nmax_failures = 4\nwindow = \"5m\"\n");
    let secret = enrol(&d, "tom", "pw-tom");
    early_in_a_step();
    let right = totp_code(&secret, "tom", now_secs());
    // A right password without a code counts too.
    let mut statuses = vec![login(&d, "tom", "pw-tom", None).status];
    for guess in 0..5u32 {
        let code = format!("{:06}", (guess * 111_111 + 7) % 1_000_000);
        if code == right {
            continue;
        }
        statuses.push(login(&d, "tom", "pw-tom", Some(&code)).status);
    }
    assert_eq!(&statuses[..4], &[401, 401, 401, 401], "{statuses:?}");
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_error(
        &login(&d, "tom", "pw-tom", Some(&right)),
        429,
        "rate_limited",
    );
}

/// `login.require_totp`: a password user without TOTP is refused even with the right
/// password; one with TOTP logs in.
#[test]
fn require_totp_refuses_password_users_without_it() {
    let d = Drawbridge::start("[login]\nrequire_totp = true\n");
    d.add_user("plain", "pw-plain");
    let r = login(&d, "plain", "pw-plain", None);
    assert_error(&r, 403, "totp_not_enrolled");
    assert!(
        r.json()["message"].as_str().unwrap().contains("user totp"),
        "{}",
        r.text()
    );
    let secret = enrol(&d, "tess", "pw-tess");
    early_in_a_step();
    let ok = login(
        &d,
        "tess",
        "pw-tess",
        Some(&totp_code(&secret, "tess", now_secs())),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

// The login helper ---------------------------------------------------------------------

fn login_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/drawbridge-login")
}

/// The helper in its own session (no terminal to ask on), `HOME` in `home`.
fn helper(d: &Drawbridge, home: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg("sh")
        .arg(login_script())
        .arg("--server")
        .arg(format!("https://{}", d.api))
        .arg("--cacert")
        .arg(d.cacert())
        .args(args)
        .env("HOME", home)
        .env_remove("DRAWBRIDGE_OTP");
    cmd
}

/// `drawbridge-login --oidc` prints the URL and the code, polls while the person logs in
/// at the provider, then gets the certificate, known_hosts and ssh_config as always.
#[test]
fn login_script_oidc_prints_the_url_polls_and_gets_a_certificate() {
    let idp = OidcProvider::start(600, 1);
    let d = Drawbridge::start(&idp.config());
    let home = tempfile::tempdir().unwrap();
    let out_path = home.path().join("out");
    let err_path = home.path().join("err");
    let child = helper(&d, home.path(), &["--oidc"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = crate::support::process::KillOnDrop(child);
    let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
    crate::support::process::wait_until(
        Duration::from_secs(30),
        || read().contains("Open http"),
        || {
            format!(
                "no URL printed: {} {}",
                read(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            )
        },
    );
    let url = read()
        .lines()
        .find_map(|l| l.strip_prefix("Open "))
        .unwrap()
        .to_string();
    assert!(read().contains("shows the code"), "{}", read());
    idp.approve(&url, "erin", &["ops"]);
    crate::support::process::wait_until(
        Duration::from_secs(60),
        || matches!(child.0.try_wait(), Ok(Some(_))),
        || format!("the helper did not finish: {}", read()),
    );
    let status = child.0.wait().unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "{}\n{err}", read());
    assert!(read().contains("logged in as erin"), "{}", read());
    assert!(read().contains("principals: web-deploy"), "{}", read());
    assert!(home.path().join(".ssh/id_ed25519-cert.pub").exists());
    assert!(home.path().join(".ssh/drawbridge/config").exists());
}

/// A TOTP user: the helper sends the code from the second line of standard input; without
/// one (and no terminal to ask on) it says what the server wants.
#[test]
fn login_script_sends_the_one_time_code() {
    let d = Drawbridge::start("");
    let secret = enrol(&d, "alice", "pw-alice");
    let home = tempfile::tempdir().unwrap();
    early_in_a_step();
    let code = totp_code(&secret, "alice", now_secs());
    let out = crate::support::process::run_with_input(
        &mut helper(&d, home.path(), &["--user", "alice", "--password-stdin"]),
        Some(format!("pw-alice\n{code}\n").as_bytes()),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.text());
    assert!(out.stdout.contains("logged in as alice"), "{}", out.text());

    let out = crate::support::process::run_with_input(
        &mut helper(&d, home.path(), &["--user", "alice", "--password-stdin"]),
        Some(b"pw-alice\n"),
        Duration::from_secs(60),
    );
    assert!(!out.success(), "{}", out.text());
    assert!(out.stderr.contains("one-time code"), "{}", out.text());
}
