//! Bearer tokens (docs/threats.md T23–T25): `Authenticator::bearer`, the one entry point the
//! API uses, with drawbridge's token key and one OIDC provider (a file JWKS).
//!
//! Byte 0 picks the mode:
//! - 0: the rest is the token as sent;
//! - 1: header, payload and signature split at 0xFF bytes, each base64url-encoded;
//! - 2: the rest is the payload, signed with drawbridge's token key (header fixed);
//! - 3: the rest is the payload, signed with the identity provider's key.
//!
//! Modes 2 and 3 reach claim validation, which runs only after a good signature: an
//! accepted token must have a numeric `exp` in the future and the right `iss` and `aud`
//! (jsonwebtoken CVE-2026-25537 accepted `exp`/`nbf` of the wrong JSON type).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use drawbridge::config::{Config, OidcConfig};
use drawbridge::identity::{
    AuthMethod, Authenticator, Identity, token_key_path, token_public_key_path,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const IDP: &str = "https://idp.fuzz.test";
const IDP_SEED: [u8; 32] = [7; 32];

struct Fixture {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    auth: Authenticator,
    token_key: EncodingKey,
    token_header: String,
    idp_key: EncodingKey,
    idp_header: String,
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let idp = ssh_key::private::Ed25519Keypair::from_seed(&IDP_SEED);
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1",
            "x": b64(idp.public.as_ref()),
        }]});
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks.to_string()).expect("write jwks");
        let config = Config {
            base_dir: dir.path().to_path_buf(),
            oidc: vec![OidcConfig {
                issuer: IDP.into(),
                audience: "drawbridge".into(),
                jwks: jwks_path.display().to_string(),
                user_claim: "email".into(),
                groups_claim: "groups".into(),
                client_id: None,
                client_secret_file: None,
                device_scope: "openid".into(),
            }],
            ..Config::default()
        };
        std::fs::create_dir_all(config.ca_dir()).expect("mkdir ca");
        drawbridge::issuer::write_token_key(
            &token_key_path(&config),
            &token_public_key_path(&config),
        )
        .expect("token key");
        let auth = Authenticator::new(&config).expect("authenticator");
        let pem = std::fs::read(token_key_path(&config)).expect("read token key");
        let token_key = EncodingKey::from_ed_pem(&pem).expect("token key");
        // The kid is the one in a token we issue.
        let id = Identity {
            user: "fuzz".into(),
            groups: vec![],
            method: AuthMethod::Password,
        };
        let (sample, _) = auth.issue_token(&id, SystemTime::now()).expect("issue");
        let token_header = sample.split('.').next().expect("header").to_string();
        // PKCS#8 v1 for an Ed25519 seed (RFC 8410): fixed prefix, then the 32 bytes.
        let mut der = hex_prefix();
        der.extend_from_slice(&IDP_SEED);
        let idp_key = EncodingKey::from_ed_der(&der);
        let idp_header = b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let f = Fixture {
            _dir: dir,
            rt,
            auth,
            token_key,
            token_header,
            idp_key,
            idp_header,
        };
        // Self-check: modes 2 and 3 sign tokens the verifiers accept, or they would
        // never reach claim validation.
        let far = 4_102_444_800u64;
        let own = serde_json::json!({"iss": "drawbridge", "aud": "drawbridge", "sub": "a",
            "groups": [], "iat": 0, "exp": far, "jti": "00"});
        let idp = serde_json::json!({"iss": IDP, "aud": "drawbridge", "email": "a@b", "exp": far});
        let client: IpAddr = [192, 0, 2, 1].into();
        for (header, key, claims) in [
            (&f.token_header, &f.token_key, own),
            (&f.idp_header, &f.idp_key, idp),
        ] {
            let t = signed(header, claims.to_string().as_bytes(), key);
            f.rt.block_on(f.auth.bearer(&t, client))
                .expect("fixture tokens are accepted");
        }
        f
    })
}

fn hex_prefix() -> Vec<u8> {
    vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]
}

fn signed(header: &str, payload: &[u8], key: &EncodingKey) -> String {
    let message = format!("{header}.{}", b64(payload));
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::EdDSA).expect("EdDSA signs");
    format!("{message}.{sig}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let (token, payload, issuer) = match mode % 4 {
        0 => (String::from_utf8_lossy(rest).into_owned(), None, None),
        1 => {
            let mut parts = rest.splitn(3, |b| *b == 0xff);
            let h = parts.next().unwrap_or_default();
            let p = parts.next().unwrap_or_default();
            let s = parts.next().unwrap_or_default();
            (format!("{}.{}.{}", b64(h), b64(p), b64(s)), None, None)
        }
        2 => (
            signed(&f.token_header, rest, &f.token_key),
            Some(rest),
            Some("drawbridge"),
        ),
        _ => (
            signed(&f.idp_header, rest, &f.idp_key),
            Some(rest),
            Some(IDP),
        ),
    };
    let client: IpAddr = [192, 0, 2, 1].into();
    let Ok(id) = f.rt.block_on(f.auth.bearer(&token, client)) else {
        return;
    };
    assert!(!id.user.is_empty() && !id.user.chars().any(char::is_control));
    assert!(id.groups.iter().all(|g| !g.chars().any(char::is_control)));
    if let (Some(payload), Some(issuer)) = (payload, issuer) {
        let claims: Value = serde_json::from_slice(payload).expect("accepted payload is JSON");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let exp = claims["exp"]
            .as_f64()
            .expect("accepted token has a numeric exp");
        assert!(exp + 30.0 >= now, "accepted an expired token: {claims}");
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().expect("accepted token has a numeric nbf");
            assert!(
                nbf - 30.0 <= now,
                "accepted a token not yet valid: {claims}"
            );
        }
        assert_eq!(claims["iss"], issuer);
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == "drawbridge",
            Value::Array(list) => list.iter().any(|a| a == "drawbridge"),
            _ => false,
        };
        assert!(aud_ok, "accepted a token for another audience: {claims}");
    }
});
