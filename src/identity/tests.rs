#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::password::{UserEntry, UsersFile, hash_password};
use super::*;
use crate::config::OidcConfig;
use crate::issuer::write_token_key;

const IDP: &str = "https://idp.example.org";
const AUD: &str = "drawbridge-test";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn now_secs() -> u64 {
    crate::util::unix_secs(SystemTime::now())
}

struct Env {
    _dir: tempfile::TempDir,
    config: Config,
}

impl Env {
    fn dir(&self) -> &Path {
        &self.config.base_dir
    }
}

/// A config in a temp folder with a token key and the given password users.
fn env(users: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        base_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.paths.users = "users.toml".into();
    std::fs::create_dir(config.ca_dir()).unwrap();
    write_token_key(&token_key_path(&config), &token_public_key_path(&config)).unwrap();
    let mut file = UsersFile::default();
    for (name, pw) in users {
        let hash = hash_password(&Secret::new(pw.to_string())).unwrap();
        file.users
            .insert(name.to_string(), UserEntry { hash, totp: None });
    }
    file.save(&config.users_path()).unwrap();
    Env { _dir: dir, config }
}

// ---------------------------------------------------------------- passwords

#[tokio::test]
async fn password_ok_wrong_and_unknown_user() {
    let e = env(&[("alice", "correct horse")]);
    let auth = Authenticator::new(&e.config).unwrap();
    let id = auth
        .basic(
            "alice",
            &Secret::new("correct horse".into()),
            ip("192.0.2.1"),
        )
        .await
        .unwrap();
    assert_eq!(id.user, "alice");
    assert_eq!(id.method, AuthMethod::Password);
    assert!(id.groups.is_empty());

    let wrong = auth
        .basic("alice", &Secret::new("battery".into()), ip("192.0.2.1"))
        .await
        .unwrap_err();
    let unknown = auth
        .basic("mallory", &Secret::new("battery".into()), ip("192.0.2.1"))
        .await
        .unwrap_err();
    assert_eq!(wrong, AuthError::InvalidCredentials);
    assert_eq!(unknown, AuthError::InvalidCredentials);
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert_eq!(wrong.status(), 401);
    let empty = auth
        .basic("alice", &Secret::new(String::new()), ip("192.0.2.1"))
        .await
        .unwrap_err();
    assert_eq!(empty, AuthError::InvalidCredentials);
}

/// docs/threats.md T29: an unknown user costs about what a wrong password costs.
#[tokio::test]
async fn unknown_user_takes_as_long_as_a_wrong_password() {
    let e = env(&[("alice", "correct horse")]);
    let mut config = e.config.clone();
    config.login.max_failures = 1000;
    let auth = Authenticator::new(&config).unwrap();
    let time = |user: &'static str| {
        let auth = &auth;
        async move {
            let t = Instant::now();
            let _ = auth
                .basic(user, &Secret::new("nope".into()), ip("192.0.2.1"))
                .await;
            t.elapsed()
        }
    };
    // The fastest of several interleaved tries of each: other work on a busy machine only
    // ever adds time, so the minimum is what the login itself costs.
    let (mut wrong, mut unknown) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        wrong = wrong.min(time("alice").await);
        unknown = unknown.min(time("nobody").await);
    }
    eprintln!("fastest wrong password {wrong:?}, fastest unknown user {unknown:?}");
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!((0.5..2.0).contains(&ratio), "ratio {ratio}");
}

#[tokio::test]
async fn users_file_is_reread_when_it_changes() {
    let e = env(&[("alice", "one")]);
    let auth = Authenticator::new(&e.config).unwrap();
    let pw = |s: &str| Secret::new(s.to_string());
    assert!(
        auth.basic("bob", &pw("two"), ip("192.0.2.1"))
            .await
            .is_err()
    );
    let mut file = UsersFile::load(&e.config.users_path()).unwrap();
    file.users.insert(
        "bob".into(),
        UserEntry {
            hash: hash_password(&pw("two")).unwrap(),
            totp: None,
        },
    );
    file.save(&e.config.users_path()).unwrap();
    assert!(auth.basic("bob", &pw("two"), ip("192.0.2.1")).await.is_ok());
    // A broken file keeps the last good copy.
    std::fs::write(e.config.users_path(), "[users.bob\n").unwrap();
    assert!(auth.basic("bob", &pw("two"), ip("192.0.2.1")).await.is_ok());
}

#[tokio::test]
async fn rate_limit_per_user_then_429_without_hashing() {
    let e = env(&[("alice", "right")]);
    let mut config = e.config.clone();
    config.login.max_failures = 3;
    config.login.window = Duration::from_secs(60);
    let auth = Authenticator::new(&config).unwrap();
    for i in 0..3 {
        // Each failure from another address: the per-user limit trips.
        let r = auth
            .basic(
                "alice",
                &Secret::new("wrong".into()),
                ip(&format!("192.0.2.{i}")),
            )
            .await;
        assert_eq!(r.unwrap_err(), AuthError::InvalidCredentials);
    }
    let started = Instant::now();
    let r = auth
        .basic("alice", &Secret::new("right".into()), ip("198.51.100.1"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "hashed anyway"
    );
    let AuthError::RateLimited { retry_after } = r else {
        panic!("{r:?}")
    };
    assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60));
    assert_eq!(r.status(), 429);
    assert_eq!(r.retry_after(), Some(retry_after));
    // Another user from a fresh address is not affected.
    let e2 = auth
        .basic("bob", &Secret::new("x".into()), ip("203.0.113.5"))
        .await
        .unwrap_err();
    assert_eq!(e2, AuthError::InvalidCredentials);
}

#[tokio::test]
async fn long_claimed_names_are_limited_by_their_first_128_bytes() {
    // A client cannot dodge the per-user limit (or grow its memory) by varying the tail
    // of a very long name: the limiter keys the name cut to `USER_KEY_BYTES`.
    let e = env(&[("alice", "right")]);
    let mut config = e.config.clone();
    config.login.max_failures = 3;
    config.login.window = Duration::from_secs(60);
    let auth = Authenticator::new(&config).unwrap();
    let prefix = "n".repeat(USER_KEY_BYTES);
    for i in 0..3 {
        let name = format!("{prefix}{i}{}", "z".repeat(4096));
        let r = auth
            .basic(&name, &Secret::new("x".into()), ip(&format!("192.0.2.{i}")))
            .await;
        assert_eq!(r.unwrap_err(), AuthError::InvalidCredentials);
    }
    let r = auth
        .basic(
            &format!("{prefix}other"),
            &Secret::new("x".into()),
            ip("198.51.100.9"),
        )
        .await
        .unwrap_err();
    assert!(matches!(r, AuthError::RateLimited { .. }), "{r:?}");
    assert_eq!(user_key(&format!("{prefix}tail")), prefix);
    assert_eq!(user_key("alice"), "alice");
}

#[tokio::test]
async fn rate_limit_per_address() {
    let e = env(&[("alice", "right")]);
    let mut config = e.config.clone();
    config.login.max_failures = 3;
    let auth = Authenticator::new(&config).unwrap();
    for user in ["u1", "u2", "u3"] {
        let r = auth
            .basic(user, &Secret::new("guess".into()), ip("192.0.2.9"))
            .await;
        assert_eq!(r.unwrap_err(), AuthError::InvalidCredentials);
    }
    let r = auth
        .basic("alice", &Secret::new("right".into()), ip("192.0.2.9"))
        .await;
    assert!(matches!(r, Err(AuthError::RateLimited { .. })), "{r:?}");
    // alice herself, from elsewhere, is fine.
    assert!(
        auth.basic("alice", &Secret::new("right".into()), ip("198.51.100.2"))
            .await
            .is_ok()
    );
}

/// docs/threats.md F10: a password burst gets Busy past the queue; tokens keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pool_refuses_past_the_queue_and_tokens_still_work() {
    let e = env(&[("alice", "right")]);
    let mut config = e.config.clone();
    config.login.hash_workers = 1;
    config.login.hash_queue = 2;
    config.login.max_failures = 10_000;
    let auth = std::sync::Arc::new(Authenticator::new(&config).unwrap());
    let alice = Identity {
        user: "alice".into(),
        groups: vec![],
        method: AuthMethod::Password,
    };
    let (token, _) = auth.issue_token(&alice, SystemTime::now()).unwrap();

    let mut burst = Vec::new();
    for i in 0..12 {
        let auth = auth.clone();
        burst.push(tokio::spawn(async move {
            auth.basic(
                "alice",
                &Secret::new("wrong".into()),
                ip(&format!("10.0.0.{i}")),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = Instant::now();
    let id = auth.bearer(&token, ip("192.0.2.1")).await.unwrap();
    let token_time = t.elapsed();
    assert_eq!(id.user, "alice");

    let mut busy = 0;
    let mut invalid = 0;
    for h in burst {
        match h.await.unwrap() {
            Err(AuthError::Busy) => busy += 1,
            Err(AuthError::InvalidCredentials) => invalid += 1,
            other => panic!("{other:?}"),
        }
    }
    eprintln!("burst of 12: {invalid} hashed, {busy} busy; token check took {token_time:?}");
    assert!(busy >= 1, "nobody got Busy");
    assert_eq!(busy + invalid, 12);
    assert_eq!(AuthError::Busy.status(), 429);
    assert!(token_time < Duration::from_millis(500), "{token_time:?}");
}

/// The hashing threads run at `login.hash_nice`, so a login storm yields the CPU.
#[tokio::test]
async fn hashing_threads_run_at_the_configured_niceness() {
    let e = env(&[("alice", "right")]);
    let mut config = e.config.clone();
    config.login.hash_workers = 3;
    config.login.hash_nice = 7;
    let auth = Authenticator::new(&config).unwrap();
    // A login runs on one of them; all three exist from the start.
    auth.basic("alice", &Secret::new("right".into()), ip("192.0.2.7"))
        .await
        .unwrap();
    let mut nices = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("hash-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Field 19 is the niceness; fields after the `(comm)` start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
        nices.push(nice);
    }
    // Other tests of this binary may have pools of their own (niceness 10 by default).
    assert!(
        nices.iter().filter(|&&n| n == 7).count() >= 3,
        "hashing threads' niceness: {nices:?}"
    );
    assert!(Config::parse("[login]\nhash_nice = 19\n").is_ok());
    assert!(
        Config::parse("[login]\nhash_nice = 20\n").is_err(),
        "niceness 20 accepted"
    );
}

#[test]
fn argon2_parameters_and_cost() {
    let t = Instant::now();
    let h = hash_password(&Secret::new("pw".into())).unwrap();
    let elapsed = t.elapsed();
    eprintln!("one argon2id hash (m=19 MiB, t=2, p=1): {elapsed:?}");
    assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    assert!(password::verify_password(&Secret::new("pw".into()), &h));
    assert!(!password::verify_password(&Secret::new("pW".into()), &h));
    assert!(!password::verify_password(
        &Secret::new("pw".into()),
        "garbage"
    ));
}

#[test]
fn user_names() {
    assert!(UsersFile::parse("[users.\"a b\"]\nhash = \"x\"\n").is_err());
    assert!(UsersFile::parse("[users.a]\nhash = \"x\"\nextra = 1\n").is_err());
}

/// One name rule: a user name the policy loader accepts, the users file (`user add`) and
/// an identity provider's user claim accept too, and the other way round. (A password
/// user `-bob` could once be created but never named in the policy.)
#[tokio::test]
async fn policy_users_file_and_token_claims_accept_the_same_user_names() {
    let key = idp_key("ed25519", Some("ed"));
    let (_e, auth) = oidc_env(&[&key]);
    let longest = "x".repeat(128);
    let too_long = "x".repeat(129);
    let names: [(&str, bool); 14] = [
        ("alice", true),
        ("a.b_c-d+e@example.org", true),
        ("A9", true),
        (&longest, true),
        ("b-", true),
        ("-bob", false),
        (".", false),
        ("..", false),
        ("a b", false),
        ("al/ice", false),
        ("a,b", false),
        ("é", false),
        ("a\nb", false),
        (&too_long, false),
    ];
    for (name, expected) in names {
        // A JSON string is a TOML basic string too.
        let quoted = serde_json::to_string(name).unwrap();
        let policy = crate::policy::Policy::from_toml(
            "p.toml",
            &format!("[users.{quoted}]\nsource = [\"192.0.2.1\"]\n"),
        )
        .is_ok();
        let users_file = UsersFile::parse(&format!("[users.{quoted}]\nhash = \"x\"\n")).is_ok();
        let mut claims = good_claims();
        claims["email"] = json!(name);
        let token = auth
            .bearer(&key.sign(&claims), ip("192.0.2.1"))
            .await
            .is_ok();
        assert_eq!(
            (policy, users_file, token),
            (expected, expected, expected),
            "{name:?}: (policy, users file, token claim)"
        );
    }
}

// ---------------------------------------------------------------- drawbridge tokens

#[tokio::test]
async fn drawbridge_token_round_trip() {
    let e = env(&[]);
    let auth = Authenticator::new(&e.config).unwrap();
    let id = Identity {
        user: "carol".into(),
        groups: vec!["ops".into()],
        method: AuthMethod::Oidc { issuer: IDP.into() },
    };
    let now = SystemTime::now();
    let (token, exp) = auth.issue_token(&id, now).unwrap();
    let ttl = exp.duration_since(now).unwrap();
    assert!(
        ttl <= e.config.login.token_ttl && ttl > e.config.login.token_ttl - Duration::from_secs(2)
    );
    let back = auth.bearer(&token, ip("192.0.2.1")).await.unwrap();
    assert_eq!(back.user, "carol");
    assert_eq!(back.groups, vec!["ops".to_string()]);
    assert_eq!(back.method, AuthMethod::Token);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["iss"], "drawbridge");
    assert_eq!(claims["aud"], "drawbridge");
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn drawbridge_token_expired_tampered_or_foreign() {
    let e = env(&[]);
    let auth = Authenticator::new(&e.config).unwrap();
    let id = Identity {
        user: "alice".into(),
        groups: vec![],
        method: AuthMethod::Password,
    };
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let (old, _) = auth.issue_token(&id, long_ago).unwrap();
    assert_eq!(
        auth.bearer(&old, ip("192.0.2.1")).await.unwrap_err(),
        AuthError::InvalidToken("token expired".into())
    );

    let (token, _) = auth.issue_token(&id, SystemTime::now()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("root");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    assert_eq!(
        auth.bearer(&forged, ip("192.0.2.1")).await.unwrap_err(),
        AuthError::InvalidToken("token signature invalid".into())
    );

    // A token signed by another drawbridge's key.
    let other = env(&[]);
    let other_auth = Authenticator::new(&other.config).unwrap();
    let (foreign, _) = other_auth.issue_token(&id, SystemTime::now()).unwrap();
    assert_eq!(
        auth.bearer(&foreign, ip("192.0.2.1")).await.unwrap_err(),
        AuthError::InvalidToken("token signature invalid".into())
    );
    assert!(auth.bearer("not.a.token", ip("192.0.2.1")).await.is_err());
    assert!(auth.bearer("", ip("192.0.2.1")).await.is_err());
}

// ---------------------------------------------------------------- OIDC

struct IdpKey {
    kid: Option<String>,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn idp_key(kind: &str, kid: Option<&str>) -> IdpKey {
    let rng = SystemRandom::new();
    let (alg, enc) = match kind {
        "ed25519" => {
            let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
            (Algorithm::EdDSA, EncodingKey::from_ed_der(doc.as_ref()))
        }
        "p256" => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            (Algorithm::ES256, EncodingKey::from_ec_der(doc.as_ref()))
        }
        "rsa" => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
            let pem = pem("PRIVATE KEY", der.as_ref());
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            )
        }
        _ => unreachable!(),
    };
    let mut jwk: Jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = kid.map(str::to_owned);
    jwk.common.key_algorithm = None;
    IdpKey {
        kid: kid.map(str::to_owned),
        alg,
        enc,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

impl IdpKey {
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = self.kid.clone();
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

fn good_claims() -> Value {
    let now = now_secs();
    json!({
        "iss": IDP, "aud": AUD, "sub": "1234", "email": "dave@example.org",
        "groups": ["ops", "dba"], "iat": now, "exp": now + 300,
    })
}

fn write_jwks(path: &Path, keys: &[&IdpKey]) {
    let doc = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

fn oidc_env(keys: &[&IdpKey]) -> (Env, Authenticator) {
    let mut e = env(&[]);
    write_jwks(&e.dir().join("idp-jwks.json"), keys);
    e.config.oidc = vec![OidcConfig {
        issuer: IDP.into(),
        audience: AUD.into(),
        jwks: "idp-jwks.json".into(),
        user_claim: "email".into(),
        groups_claim: "groups".into(),
        client_id: None,
        client_secret_file: None,
        device_scope: "openid".into(),
    }];
    let auth = Authenticator::new(&e.config).unwrap();
    (e, auth)
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn refused(auth: &Authenticator, token: &str) -> String {
    match auth.bearer(token, ip("192.0.2.1")).await {
        Err(AuthError::InvalidToken(why)) => why,
        other => panic!("expected InvalidToken, got {other:?}"),
    }
}

#[tokio::test]
async fn oidc_valid_tokens_for_each_key_type() {
    let ed = idp_key("ed25519", Some("ed"));
    let ec = idp_key("p256", Some("ec"));
    let rsa = idp_key("rsa", Some("rsa"));
    let (_e, auth) = oidc_env(&[&ed, &ec, &rsa]);
    for k in [&ed, &ec, &rsa] {
        let id = auth
            .bearer(&k.sign(&good_claims()), ip("192.0.2.1"))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:?}", k.alg));
        assert_eq!(id.user, "dave@example.org");
        assert_eq!(id.groups, vec!["ops".to_string(), "dba".to_string()]);
        assert_eq!(id.method, AuthMethod::Oidc { issuer: IDP.into() });
    }
    // aud may be a list; groups may be absent; nbf in the past is fine.
    let mut c = good_claims();
    c["aud"] = json!(["other", AUD]);
    c["nbf"] = json!(now_secs() - 10);
    c.as_object_mut().unwrap().remove("groups");
    let id = auth.bearer(&ec.sign(&c), ip("192.0.2.1")).await.unwrap();
    assert!(id.groups.is_empty());
}

/// docs/threats.md T23: `alg: none`, HS256 keyed with the provider's public key, a mismatched alg.
#[tokio::test]
async fn oidc_refuses_algorithm_confusion() {
    let ec = idp_key("p256", Some("ec"));
    let ed = idp_key("ed25519", Some("ed"));
    let (e, auth) = oidc_env(&[&ec, &ed]);

    let none = format!(
        "{}.{}.",
        b64json(&json!({"alg": "none", "kid": "ec", "typ": "JWT"})),
        b64json(&good_claims())
    );
    assert_eq!(refused(&auth, &none).await, "token algorithm not allowed");

    // HS256 with every public form of the key an attacker could pick.
    let jwks_text = std::fs::read(e.dir().join("idp-jwks.json")).unwrap();
    let jwk_text = serde_json::to_vec(&ec.jwk).unwrap();
    let x = URL_SAFE_NO_PAD
        .decode(ec.jwk["x"].as_str().unwrap())
        .unwrap();
    for secret in [jwks_text.as_slice(), jwk_text.as_slice(), x.as_slice()] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ec".into());
        let t =
            jsonwebtoken::encode(&h, &good_claims(), &EncodingKey::from_secret(secret)).unwrap();
        assert_eq!(refused(&auth, &t).await, "token algorithm not allowed");
    }

    // ES256 header on the Ed25519 key's kid.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ed".into());
    let t = jsonwebtoken::encode(&h, &good_claims(), &ec.enc).unwrap();
    assert_eq!(refused(&auth, &t).await, "token algorithm not allowed");
}

/// docs/threats.md T24: `exp`/`nbf` of the wrong JSON type, or no `exp`.
#[tokio::test]
async fn oidc_refuses_bad_time_claims() {
    let ec = idp_key("p256", Some("ec"));
    let (_e, auth) = oidc_env(&[&ec]);
    let mut c = good_claims();
    c["exp"] = json!((now_secs() + 300).to_string());
    let why = refused(&auth, &ec.sign(&c)).await;
    assert!(why.contains("exp"), "{why}");

    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    let why = refused(&auth, &ec.sign(&c)).await;
    assert!(why.contains("exp"), "{why}");

    let mut c = good_claims();
    c["nbf"] = json!("0");
    let why = refused(&auth, &ec.sign(&c)).await;
    assert!(why.contains("nbf"), "{why}");

    let mut c = good_claims();
    c["nbf"] = json!(now_secs() + 600);
    assert_eq!(refused(&auth, &ec.sign(&c)).await, "token not yet valid");

    let mut c = good_claims();
    c["exp"] = json!(now_secs() - 120);
    assert_eq!(refused(&auth, &ec.sign(&c)).await, "token expired");

    // Within the 30 s leeway.
    let mut c = good_claims();
    c["exp"] = json!(now_secs() - 5);
    assert!(auth.bearer(&ec.sign(&c), ip("192.0.2.1")).await.is_ok());
}

/// docs/threats.md T25.
#[tokio::test]
async fn oidc_refuses_wrong_iss_aud_kid_key_and_edits() {
    let ec = idp_key("p256", Some("ec"));
    let (_e, auth) = oidc_env(&[&ec]);

    let mut c = good_claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        refused(&auth, &ec.sign(&c)).await,
        "token issuer not trusted"
    );
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(refused(&auth, &ec.sign(&c)).await, "token has no issuer");

    let mut c = good_claims();
    c["aud"] = json!("someone-else");
    assert_eq!(
        refused(&auth, &ec.sign(&c)).await,
        "token audience not accepted"
    );
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("aud");
    assert!(refused(&auth, &ec.sign(&c)).await.contains("aud"));

    let stranger = idp_key("p256", Some("unknown"));
    assert_eq!(
        refused(&auth, &stranger.sign(&good_claims())).await,
        "token key unknown"
    );

    // A foreign key that claims our kid.
    let impostor = idp_key("p256", Some("ec"));
    assert_eq!(
        refused(&auth, &impostor.sign(&good_claims())).await,
        "token signature invalid"
    );

    // The impostor embeds its own key in the header (jwk) and points jku at itself.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec".into());
    h.jwk = Some(serde_json::from_value(impostor.jwk.clone()).unwrap());
    h.jku = Some("https://evil.example/jwks".into());
    let t = jsonwebtoken::encode(&h, &good_claims(), &impostor.enc).unwrap();
    assert_eq!(refused(&auth, &t).await, "token signature invalid");

    // A critical header extension we do not understand.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec".into());
    h.crit = Some(vec!["exp-ext".into()]);
    let t = jsonwebtoken::encode(&h, &good_claims(), &ec.enc).unwrap();
    assert_eq!(
        refused(&auth, &t).await,
        "token header has critical extensions"
    );

    // Edited claims on a genuine token.
    let token = ec.sign(&good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = good_claims();
    c["groups"] = json!(["admins"]);
    let edited = format!("{}.{}.{}", parts[0], b64json(&c), parts[2]);
    assert_eq!(refused(&auth, &edited).await, "token signature invalid");

    // A token without kid when the JWKS names its keys.
    let nokid = IdpKey {
        kid: None,
        alg: ec.alg,
        enc: ec.enc.clone(),
        jwk: Value::Null,
    };
    assert_eq!(
        refused(&auth, &nokid.sign(&good_claims())).await,
        "token key unknown"
    );

    // Claims of the wrong shape.
    let mut c = good_claims();
    c["groups"] = json!("ops");
    assert!(
        refused(&auth, &ec.sign(&c))
            .await
            .contains("list of strings")
    );
    let mut c = good_claims();
    c["email"] = json!(42);
    assert!(refused(&auth, &ec.sign(&c)).await.contains("email"));
    let mut c = good_claims();
    c["email"] = json!("dave\n{\"evil\":1}");
    assert!(
        refused(&auth, &ec.sign(&c))
            .await
            .contains("invalid character '\\n' in user name")
    );
}

#[tokio::test]
async fn oidc_single_key_without_kid() {
    let ed = idp_key("ed25519", None);
    let (_e, auth) = oidc_env(&[&ed]);
    let id = auth
        .bearer(&ed.sign(&good_claims()), ip("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(id.user, "dave@example.org");
}

#[tokio::test]
async fn oidc_rereads_the_jwks_on_an_unknown_kid_at_most_every_30s() {
    let old = idp_key("ed25519", Some("k1"));
    let (e, auth) = oidc_env(&[&old]);
    let path = e.dir().join("idp-jwks.json");

    let new = idp_key("ed25519", Some("k2"));
    write_jwks(&path, &[&old, &new]);
    assert!(
        auth.bearer(&new.sign(&good_claims()), ip("192.0.2.1"))
            .await
            .is_ok()
    );

    let newer = idp_key("ed25519", Some("k3"));
    write_jwks(&path, &[&old, &new, &newer]);
    assert_eq!(
        refused(&auth, &newer.sign(&good_claims())).await,
        "token key unknown"
    );
}

#[test]
fn jwks_keys_are_pinned_and_unsafe_ones_skipped() {
    let ec = idp_key("p256", Some("ec"));
    let mut disagreeing = ec.jwk.clone();
    disagreeing["alg"] = json!("RS256");
    disagreeing["kid"] = json!("bad-alg");
    let mut enc_use = ec.jwk.clone();
    enc_use["use"] = json!("enc");
    enc_use["kid"] = json!("enc");
    let doc = json!({ "keys": [
        ec.jwk,
        disagreeing,
        enc_use,
        { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256" },
        { "kty": "weird", "kid": "w" },
    ]});
    let (keys, skipped) = oidc::parse_jwks(&doc.to_string()).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].alg, Algorithm::ES256);
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(oidc::parse_jwks("{}").is_err());
}

#[test]
fn oidc_config_errors() {
    let mut e = env(&[]);
    e.config.oidc = vec![OidcConfig {
        issuer: IDP.into(),
        audience: AUD.into(),
        jwks: "http://idp.example.org/jwks".into(),
        user_claim: "email".into(),
        groups_claim: "groups".into(),
        client_id: None,
        client_secret_file: None,
        device_scope: "openid".into(),
    }];
    assert!(
        Authenticator::new(&e.config)
            .unwrap_err()
            .to_string()
            .contains("https")
    );
    std::fs::write(
        e.dir().join("j.json"),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    e.config.oidc[0].jwks = "j.json".into();
    let err = Authenticator::new(&e.config).unwrap_err().to_string();
    assert!(err.contains("no usable signing key"), "{err}");
    e.config.oidc[0].issuer = "drawbridge".into();
    assert!(Authenticator::new(&e.config).is_err());
}

#[test]
fn errors_are_safe_to_show_and_to_audit() {
    let internal = AuthError::Internal("/etc/secret path detail".into());
    assert!(!internal.client_message().contains("secret"));
    assert_eq!(internal.status(), 500);
    assert!(internal.audit_reason().contains("detail"));
    assert_eq!(
        AuthError::InvalidCredentials.audit_reason(),
        "invalid credentials"
    );
    let rl = AuthError::RateLimited {
        retry_after: Duration::from_secs(42),
    };
    assert!(rl.to_string().contains("42"));
    // Debug of the whole authenticator shows no key material.
    let e = env(&[("alice", "pw")]);
    let auth = Authenticator::new(&e.config).unwrap();
    let id = Identity {
        user: "dave".into(),
        groups: vec!["ops".into()],
        method: AuthMethod::Oidc { issuer: IDP.into() },
    };
    assert_eq!(
        serde_json::to_value(&id).unwrap(),
        json!({"user": "dave", "groups": ["ops"], "method": "oidc", "issuer": IDP})
    );
    let id = Identity {
        method: AuthMethod::Password,
        ..id
    };
    assert_eq!(serde_json::to_value(&id).unwrap()["method"], "password");
    let dbg = format!("{auth:?}");
    assert!(!dbg.contains("argon2") && !dbg.contains("PRIVATE"), "{dbg}");
}

/// A JWKS served over HTTPS (a local server with its own CA): fetched on first use,
/// cached, and re-fetched for an unknown kid.
#[tokio::test]
async fn oidc_jwks_over_https() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let k1 = idp_key("p256", Some("k1"));
    let k2 = idp_key("ed25519", Some("k2"));
    let jwks = Arc::new(std::sync::Mutex::new(
        json!({ "keys": [k1.jwk.clone()] }).to_string(),
    ));
    let hits = Arc::new(AtomicUsize::new(0));

    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = ck.cert.der().clone();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (served, counter) = (jwks.clone(), hits.clone());
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (served, counter) = (served.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });

    let e = env(&[]);
    let cfg = OidcConfig {
        issuer: IDP.into(),
        audience: AUD.into(),
        jwks: format!("https://localhost:{port}/jwks"),
        user_claim: "email".into(),
        groups_claim: "groups".into(),
        client_id: None,
        client_secret_file: None,
        device_scope: "openid".into(),
    };
    let client = reqwest::Client::builder()
        .https_only(true)
        .tls_certs_only([reqwest::Certificate::from_der(&cert_der).unwrap()])
        .build()
        .unwrap();
    let provider = OidcProvider::new(&cfg, &e.config)
        .unwrap()
        .with_http_client(client);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a URL is fetched on first use only"
    );

    let t1 = k1.sign(&good_claims());
    let id = provider.verify(&t1, &peek(&t1).unwrap()).await.unwrap();
    assert_eq!(id.user, "dave@example.org");
    let _ = provider.verify(&t1, &peek(&t1).unwrap()).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");

    // The IdP rotates in k2: the unknown kid triggers one re-fetch.
    *jwks.lock().unwrap() = json!({ "keys": [k1.jwk.clone(), k2.jwk.clone()] }).to_string();
    let t2 = k2.sign(&good_claims());
    assert!(provider.verify(&t2, &peek(&t2).unwrap()).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Unknown kids right after do not hammer the IdP.
    let stranger = idp_key("p256", Some("k9"));
    let t9 = stranger.sign(&good_claims());
    assert!(provider.verify(&t9, &peek(&t9).unwrap()).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(provider.keys().await.len(), 2);
    server.abort();
}
