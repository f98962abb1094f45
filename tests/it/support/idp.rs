//! A test OIDC identity provider: Ed25519 keys, a JWKS file in its own folder (it must
//! exist before the server starts), and tokens signed or forged on demand.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const ISS: &str = "https://idp.test";

pub fn signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("random");
    SigningKey::from_bytes(&seed)
}

pub fn jwks(keys: &[(&str, &SigningKey)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, k)| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes()),
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// An EdDSA token with `kid`, signed by `k`.
pub fn token(k: &SigningKey, kid: &str, claims: serde_json::Value) -> String {
    let pem = k.to_pkcs8_pem(Default::default()).expect("pkcs8");
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).expect("key"),
    )
    .expect("encode")
}

/// Claims naming `user` and `groups`, issued now, expiring `exp_in` seconds from now.
pub fn claims(user: &str, groups: &[&str], exp_in: i64) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    serde_json::json!({
        "iss": ISS, "aud": "drawbridge", "sub": "id-123",
        "preferred_username": user, "groups": groups,
        "iat": now, "exp": now + exp_in,
    })
}

/// A token with an empty signature (for `alg: none`).
pub fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
    let e = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", e(header), e(claims))
}

/// HS256 keyed with the provider's public key (algorithm confusion).
pub fn hmac_with_public_key(k: &SigningKey, kid: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    let x = URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(x.as_bytes())).expect("encode")
}

/// `token` with its payload replaced by `claims` (the signature no longer matches).
pub fn edited(token: &str, claims: serde_json::Value) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

/// A provider with key `k1`, its JWKS written to a folder of its own.
pub struct Idp {
    pub key: SigningKey,
    dir: tempfile::TempDir,
}

impl Idp {
    pub fn new() -> Idp {
        let key = signing_key();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("idp-jwks.json"), jwks(&[("k1", &key)]))
            .expect("write jwks");
        Idp { key, dir }
    }

    /// The `[[oidc]]` config block for this provider.
    pub fn config(&self) -> String {
        format!(
            "[[oidc]]\nissuer = \"{ISS}\"\naudience = \"drawbridge\"\njwks = \"{}\"\nuser_claim = \"preferred_username\"\ngroups_claim = \"groups\"\n",
            self.dir.path().join("idp-jwks.json").display()
        )
    }

    /// A good token for `user` in `groups`, valid for five minutes.
    pub fn good(&self, user: &str, groups: &[&str]) -> String {
        token(&self.key, "k1", claims(user, groups, 300))
    }
}

impl Default for Idp {
    fn default() -> Self {
        Self::new()
    }
}
