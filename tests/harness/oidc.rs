//! A test identity provider: an Ed25519 key, its JWKS file and ID tokens.
#![allow(dead_code, clippy::unwrap_used)]

use base64::Engine;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const ISS: &str = "https://idp.test";

/// The `[[oidc]]` block for a provider whose JWKS is at `jwks_path`.
pub fn config(jwks_path: &std::path::Path) -> String {
    format!(
        "[[oidc]]\nissuer = \"{ISS}\"\naudience = \"drawbridge\"\njwks = \"{}\"\nuser_claim = \"preferred_username\"\ngroups_claim = \"groups\"\n",
        jwks_path.display()
    )
}

pub fn signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    SigningKey::from_bytes(&seed)
}

pub fn jwks(keys: &[(&str, &SigningKey)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, k)| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes()),
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn token(k: &SigningKey, kid: &str, claims: serde_json::Value) -> String {
    let pem = k.to_pkcs8_pem(Default::default()).unwrap();
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn claims(user: &str, groups: &[&str], exp_in: i64) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": ISS, "aud": "drawbridge", "sub": "id-123",
        "preferred_username": user, "groups": groups,
        "iat": now, "exp": now + exp_in,
    })
}

pub fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
    let e = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!("{}.{}.", e(header), e(claims))
}
