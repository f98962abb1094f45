//! OIDC ID tokens from trusted identity providers (`[[oidc]]` in the config).
//!
//! # Keys
//!
//! Each provider's JWKS comes from a file (relative to the config) or an `https://` URL.
//! It is re-read every 10 minutes, and at most once per 30 s when a token names an unknown
//! `kid` (key rotation at the IdP). A failed refresh keeps the keys already held. Each key
//! is **pinned to one algorithm** by its type: RSA → RS256 (at least 2048 bits), EC P-256 →
//! ES256, EC P-384 → ES384, OKP Ed25519 → EdDSA. A JWK `alg`, when present, must agree
//! (for RSA it may also name RS384/RS512/PS256/PS384/PS512, which then becomes the pin).
//! Symmetric (`oct`) keys, encryption keys (`use: enc`) and anything else are ignored, so
//! `none` and every `HS*` algorithm can never verify (docs/threats.md T23).
//!
//! # A token is accepted when
//!
//! its header `alg` is exactly the pin of the key its `kid` names (a JWKS holding exactly
//! one key without a `kid` serves any token); its signature verifies; `exp` is present and
//! numeric and not past (30 s leeway); `nbf`, if present, is numeric and not in the future;
//! `iss` equals the provider's issuer; `aud` is or contains the audience. Wrong JSON types
//! for `exp`/`nbf` are refused (docs/threats.md T24). The user is the `user_claim` (a non-empty
//! string), the groups are the `groups_claim` (absent, or an array of strings).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::tokens::LEEWAY_SECS;
use super::{
    AuthError, AuthMethod, Identity, Peek, check_group_claim, check_user_claim, jwt_error,
};
use crate::config::{Config, OidcConfig};

/// JWKS older than this is re-read before use.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// Re-reads for an unknown `kid` (or after a failure) are at least this far apart.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key with the single algorithm it may verify.
#[derive(Clone)]
pub struct PinnedKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Parses a JWKS document into pinned keys; keys that cannot be used are skipped with a
/// reason each. An error if the document is not a JWKS at all.
pub fn parse_jwks(text: &str) -> Result<(Vec<PinnedKey>, Vec<String>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match pin(k) {
            Ok(p) => out.push(p),
            Err(e) => skipped.push(format!("key {i}: {e}")),
        }
    }
    Ok((out, skipped))
}

fn pin(v: &Value) -> Result<PinnedKey, String> {
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("not a signing key (\"use\" is not \"sig\")".into());
    }
    let stated = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "bad RSA modulus")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits (at least 2048 needed)"));
            }
            match stated {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(other) => return Err(format!("RSA key with alg {other:?}")),
            }
        }
        AlgorithmParameters::EllipticCurve(ec) => match (&ec.curve, stated) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            (curve, alg) => return Err(format!("EC key {curve:?} with alg {alg:?}")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match (&okp.curve, stated) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            (curve, alg) => return Err(format!("OKP key {curve:?} with alg {alg:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never trusted".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(PinnedKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
        }
    }
}

struct Cache {
    keys: Arc<Vec<PinnedKey>>,
    times: Times,
}

#[derive(Clone, Copy, Default)]
struct Times {
    /// Last successful load.
    loaded_at: Option<Instant>,
    /// Last load attempt of any kind.
    last_attempt: Option<Instant>,
    /// Last load attempt caused by an unknown `kid`.
    last_kid_refetch: Option<Instant>,
}

/// One trusted identity provider.
pub struct OidcProvider {
    pub issuer: String,
    audience: String,
    user_claim: String,
    groups_claim: String,
    source: Source,
    cache: RwLock<Cache>,
    refresh_lock: tokio::sync::Mutex<()>,
    http: Option<reqwest::Client>,
}

impl OidcProvider {
    /// Builds the provider; a JWKS file is read now (and must hold a usable key), a URL is
    /// fetched on first use.
    pub fn new(cfg: &OidcConfig, config: &Config) -> anyhow::Result<OidcProvider> {
        let (source, http) = if cfg.jwks.starts_with("https://")
            || (cfg.jwks.starts_with("http://")
                && super::provider_url::check_provider_url(&cfg.jwks).is_ok())
        {
            // Plain http only to a loopback address (see `provider_url`).
            let client = reqwest::Client::builder()
                .https_only(cfg.jwks.starts_with("https://"))
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| anyhow::anyhow!("oidc {}: HTTP client: {e}", cfg.issuer))?;
            (Source::Url(cfg.jwks.clone()), Some(client))
        } else if cfg.jwks.contains("://") {
            anyhow::bail!(
                "oidc {}: jwks {:?} must be a file or an https:// URL (http:// only to 127.0.0.1 or [::1])",
                cfg.issuer,
                cfg.jwks
            );
        } else {
            (
                Source::File(config.resolve(std::path::Path::new(&cfg.jwks))),
                None,
            )
        };
        let provider = OidcProvider {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            user_claim: cfg.user_claim.clone(),
            groups_claim: cfg.groups_claim.clone(),
            source,
            cache: RwLock::new(Cache {
                keys: Arc::new(Vec::new()),
                times: Times::default(),
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            http,
        };
        if let Source::File(path) = &provider.source {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("oidc {}: cannot read {}: {e}", cfg.issuer, path.display())
            })?;
            let keys = provider
                .accept(&text)
                .map_err(|e| anyhow::anyhow!("oidc {}: {}: {e}", cfg.issuer, path.display()))?;
            if let Ok(mut c) = provider.cache.write() {
                c.keys = Arc::new(keys);
                c.times.loaded_at = Some(Instant::now());
            }
        }
        Ok(provider)
    }

    /// Uses `client` to fetch an `https://` JWKS (e.g. one that trusts a private CA).
    pub fn with_http_client(mut self, client: reqwest::Client) -> OidcProvider {
        if matches!(self.source, Source::Url(_)) {
            self.http = Some(client);
        }
        self
    }

    /// The keys held now, after a refresh if they are stale.
    pub async fn keys(&self) -> Arc<Vec<PinnedKey>> {
        self.refresh_if_needed(false).await;
        self.snapshot().0
    }

    fn accept(&self, text: &str) -> Result<Vec<PinnedKey>, String> {
        let (keys, skipped) = parse_jwks(text)?;
        for s in &skipped {
            tracing::warn!(issuer = %self.issuer, "JWKS {s}; ignored");
        }
        if keys.is_empty() {
            return Err("no usable signing key in the JWKS".into());
        }
        Ok(keys)
    }

    async fn fetch(&self) -> Result<String, String> {
        match (&self.source, &self.http) {
            (Source::File(path), _) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            (Source::Url(url), Some(client)) => {
                let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JWKS_BYTES {
                        return Err("JWKS larger than 1 MiB".into());
                    }
                }
                String::from_utf8(body).map_err(|_| "JWKS is not UTF-8".into())
            }
            (Source::Url(_), None) => Err("no HTTP client".into()),
        }
    }

    fn snapshot(&self) -> (Arc<Vec<PinnedKey>>, Times) {
        match self.cache.read() {
            Ok(c) => (Arc::clone(&c.keys), c.times),
            Err(_) => (Arc::new(Vec::new()), Times::default()),
        }
    }

    /// Re-reads the JWKS if it is stale (retrying a failed load every [`MIN_REFETCH`]),
    /// or (`unknown_kid`) if a token named a key we do not hold, at most once per
    /// [`MIN_REFETCH`].
    async fn refresh_if_needed(&self, unknown_kid: bool) {
        let due = |t: Times| {
            let spaced = |at: Option<Instant>| at.is_none_or(|at| at.elapsed() >= MIN_REFETCH);
            if unknown_kid {
                spaced(t.last_kid_refetch)
            } else {
                t.loaded_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) && spaced(t.last_attempt)
            }
        };
        if !due(self.snapshot().1) {
            return;
        }
        let _guard = self.refresh_lock.lock().await;
        if !due(self.snapshot().1) {
            return;
        }
        if let Ok(mut c) = self.cache.write() {
            let now = Some(Instant::now());
            c.times.last_attempt = now;
            if unknown_kid {
                c.times.last_kid_refetch = now;
            }
        }
        match self.fetch().await.and_then(|text| self.accept(&text)) {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "JWKS loaded");
                if let Ok(mut c) = self.cache.write() {
                    c.keys = Arc::new(keys);
                    c.times.loaded_at = Some(Instant::now());
                }
            }
            Err(e) => tracing::warn!(
                issuer = %self.issuer,
                source = %self.source.describe(),
                error = %e,
                "JWKS refresh failed; keeping the keys held"
            ),
        }
    }

    fn select(keys: &[PinnedKey], kid: Option<&str>) -> Option<PinnedKey> {
        if let [only] = keys
            && only.kid.is_none()
        {
            return Some(only.clone());
        }
        let kid = kid?;
        keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned()
    }

    /// Verifies an ID token whose unverified `iss` named this provider.
    pub(crate) async fn verify(&self, token: &str, peek: &Peek) -> Result<Identity, AuthError> {
        self.refresh_if_needed(false).await;
        let (keys, _) = self.snapshot();
        let key = match Self::select(&keys, peek.kid.as_deref()) {
            Some(k) => k,
            None => {
                self.refresh_if_needed(true).await;
                let (keys, _) = self.snapshot();
                Self::select(&keys, peek.kid.as_deref())
                    .ok_or_else(|| AuthError::InvalidToken("token key unknown".into()))?
            }
        };
        if peek.alg != format!("{:?}", key.alg) {
            return Err(AuthError::InvalidToken(
                "token algorithm not allowed".into(),
            ));
        }
        let mut v = Validation::new(key.alg);
        v.algorithms = vec![key.alg];
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(jwt_error)?;
        let claims = data.claims;
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(AuthError::InvalidToken(format!(
                    "token has no string claim \"{}\" naming the user",
                    self.user_claim
                )));
            }
        };
        check_user_claim("token user", &user)?;
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut groups = Vec::with_capacity(items.len());
                for g in items {
                    let Value::String(g) = g else {
                        return Err(AuthError::InvalidToken(format!(
                            "token claim \"{}\" is not a list of strings",
                            self.groups_claim
                        )));
                    };
                    check_group_claim("token group", g)?;
                    groups.push(g.clone());
                }
                groups
            }
            Some(_) => {
                return Err(AuthError::InvalidToken(format!(
                    "token claim \"{}\" is not a list of strings",
                    self.groups_claim
                )));
            }
        };
        Ok(Identity {
            user,
            groups,
            method: AuthMethod::Oidc {
                issuer: self.issuer.clone(),
            },
        })
    }
}
