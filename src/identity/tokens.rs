//! drawbridge's own bearer tokens (`POST /v1/login`).
//!
//! A token is a JWT signed with the Ed25519 token key (`<ca dir>/token_key`, PKCS#8 PEM,
//! mode 0600; public half in `token_key.pub`, SPKI PEM). Header `alg` is `EdDSA` (the only
//! algorithm accepted on verify), `kid` names the key (`db-` + 16 hex digits of the SHA-256
//! of the public key). Claims: `iss` = `aud` = `"drawbridge"`, `sub` (the user), `groups`
//! (as asserted when the token was issued: an OIDC user's IdP groups), `iat`, `exp`
//! (`iat` + `login.token_ttl`), `jti` (128 random bits, hex). Tokens are checked without a
//! lookup, so every replica sharing the key accepts them, and they cannot be revoked
//! before `exp`: keep `token_ttl` short.
//!
//! A token that verified is remembered (by the SHA-256 of the whole token, with the
//! identity it carries) until its `exp` + leeway, so a client reusing its token for many
//! certificates pays the Ed25519 verification once. Only the same bytes hit the cache:
//! any edit is a different hash and goes through the full check. `exp` is checked again
//! on every hit. At most [`VERIFIED_CACHE_MAX`] entries: when full, expired ones are
//! dropped, and if none are, the cache is emptied (costing one verification per token).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuthError, AuthMethod, Identity, Secret, jwt_error};
use crate::util::unix_secs;

/// `iss` and `aud` of drawbridge tokens.
pub const ISSUER: &str = "drawbridge";
/// Clock skew allowed on `exp` and `nbf`, for drawbridge and OIDC tokens alike.
pub const LEEWAY_SECS: u64 = 30;
/// Most verified tokens remembered at once (about 100 bytes each, plus names).
pub const VERIFIED_CACHE_MAX: usize = 16_384;

/// The token key, loaded. `Debug` shows only the key id.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A token that passed [`TokenKeys::verify`]: who it names, and until when.
struct Verified {
    id: Identity,
    exp: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    #[serde(default)]
    groups: Vec<String>,
    iat: u64,
    exp: u64,
    jti: String,
}

impl TokenKeys {
    /// Loads the private key at `private_path` (refused if group or others may read it)
    /// and derives the public half from it.
    pub fn load(private_path: &Path) -> anyhow::Result<TokenKeys> {
        std::fs::metadata(private_path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the token key {}: {e} (run `drawbridge ca init`)",
                private_path.display()
            )
        })?;
        crate::issuer::check_private_mode(private_path)?;
        let pem = Secret::new(std::fs::read_to_string(private_path).map_err(|e| {
            anyhow::anyhow!("cannot read the token key {}: {e}", private_path.display())
        })?);
        let signing = SigningKey::from_pkcs8_pem(pem.expose()).map_err(|_| {
            anyhow::anyhow!(
                "{} is not an Ed25519 private key in PKCS#8 PEM",
                private_path.display()
            )
        })?;
        let encoding = EncodingKey::from_ed_pem(pem.expose().as_bytes()).map_err(|_| {
            anyhow::anyhow!("{} cannot be used to sign tokens", private_path.display())
        })?;
        Ok(Self::from_parts(encoding, &signing))
    }

    fn from_parts(encoding: EncodingKey, signing: &SigningKey) -> TokenKeys {
        let public = signing.verifying_key().to_bytes();
        let decoding = DecodingKey::from_ed_der(&public);
        let kid = format!("db-{}", &hex::encode(Sha256::digest(public))[..16]);
        TokenKeys {
            encoding,
            decoding,
            kid,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The key id written in each token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a token for `id`, valid from `now` for `ttl`. Returns it and its expiry.
    pub fn issue(
        &self,
        id: &Identity,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(String, SystemTime), AuthError> {
        let iat = unix_secs(now);
        let exp = iat.saturating_add(ttl.as_secs().max(1));
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| AuthError::Internal(format!("random: {e}")))?;
        let claims = Claims {
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sub: id.user.clone(),
            groups: id.groups.clone(),
            iat,
            exp,
            jti: hex::encode(jti),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))?;
        Ok((token, SystemTime::UNIX_EPOCH + Duration::from_secs(exp)))
    }

    /// Verifies a drawbridge token: EdDSA only, our key, `iss`/`aud` `drawbridge`, `exp`
    /// required (30 s leeway), `nbf` honoured if present. A token that verified before
    /// and has not expired is answered from the cache (see the module's documentation).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_secs(SystemTime::now()))
    }

    /// [`verify`](Self::verify) with the cache checked against `now` (Unix seconds).
    /// The full check uses the real clock, as jsonwebtoken does.
    fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(id) = self.cached(&digest, now) {
            return Ok(id);
        }
        let (id, exp) = self.verify_uncached(token)?;
        self.remember(digest, &id, exp, now);
        Ok(id)
    }

    /// The identity of a drawbridge token verified before and not expired, without
    /// parsing it again; `None` when it must go through [`verify`](Self::verify).
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.cached(&digest, unix_secs(SystemTime::now()))
    }

    fn cached(&self, digest: &[u8; 32], now: u64) -> Option<Identity> {
        let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let hit = map.get(digest)?;
        if now <= hit.exp.saturating_add(LEEWAY_SECS) {
            return Some(hit.id.clone());
        }
        map.remove(digest);
        None
    }

    fn remember(&self, digest: [u8; 32], id: &Identity, exp: u64, now: u64) {
        let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_CACHE_MAX {
            map.retain(|_, v| now <= v.exp.saturating_add(LEEWAY_SECS));
            if map.len() >= VERIFIED_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(
            digest,
            Verified {
                id: id.clone(),
                exp,
            },
        );
    }

    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.algorithms = vec![Algorithm::EdDSA];
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(jwt_error)?;
        let c = data.claims;
        super::check_user_claim("token subject", &c.sub)?;
        for g in &c.groups {
            super::check_group_claim("token group", g)?;
        }
        let id = Identity {
            user: c.sub,
            groups: c.groups,
            method: AuthMethod::Token,
        };
        Ok((id, c.exp))
    }

    /// How many verified tokens are remembered now (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.verified.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::issuer::write_token_key;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_are_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (
            dir.path().join("ca/token_key"),
            dir.path().join("ca/token_key.pub"),
        );
        std::fs::create_dir(dir.path().join("ca")).unwrap();
        write_token_key(&k, &p).unwrap();
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        let err = write_token_key(&k, &p).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        let keys = TokenKeys::load(&k).unwrap();
        assert!(keys.kid().starts_with("db-"));
        assert!(!format!("{keys:?}").contains("PRIVATE"));
    }

    #[test]
    fn loose_key_file_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (
            dir.path().join("token_key"),
            dir.path().join("token_key.pub"),
        );
        write_token_key(&k, &p).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = TokenKeys::load(&k).unwrap_err().to_string();
        assert!(err.contains(&format!("chmod 600 {}", k.display())), "{err}");
    }

    fn keys_in(dir: &Path) -> TokenKeys {
        std::fs::create_dir_all(dir).unwrap();
        let (k, p) = (dir.join("token_key"), dir.join("token_key.pub"));
        write_token_key(&k, &p).unwrap();
        TokenKeys::load(&k).unwrap()
    }

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            groups: vec!["ops".into()],
            method: AuthMethod::Token,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_in(dir.path());
        let now = SystemTime::now();
        let (token, exp) = keys.issue(&alice(), now, Duration::from_secs(60)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), alice());
        assert_eq!(keys.cached_tokens(), 1);
        assert_eq!(keys.verify(&token).unwrap(), alice());
        assert_eq!(keys.cached_tokens(), 1, "the second check is a cache hit");
        // Past exp + leeway the cached entry no longer answers, and the full check
        // (real clock: still valid) is not what decides here, the cache clock is.
        let exp = unix_secs(exp);
        assert!(
            keys.cached(&Sha256::digest(token.as_bytes()).into(), exp + LEEWAY_SECS)
                .is_some()
        );
        assert!(
            keys.cached(
                &Sha256::digest(token.as_bytes()).into(),
                exp + LEEWAY_SECS + 1
            )
            .is_none()
        );
        assert_eq!(
            keys.cached_tokens(),
            0,
            "an expired entry is dropped when seen"
        );
    }

    #[test]
    fn an_edited_or_expired_token_never_reaches_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_in(dir.path());
        let (token, _) = keys
            .issue(&alice(), SystemTime::now(), Duration::from_secs(60))
            .unwrap();
        keys.verify(&token).unwrap();
        // The same token with one signature character changed: a different hash, so the
        // full check runs and refuses it.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(keys.verify(&forged).is_err());
        // Expired at issue: refused and not remembered.
        let old = SystemTime::now() - Duration::from_secs(3600);
        let (expired, _) = keys.issue(&alice(), old, Duration::from_secs(60)).unwrap();
        assert!(keys.verify(&expired).is_err());
        assert_eq!(keys.cached_tokens(), 1);
        // Another key's token with our kid is refused whatever the cache holds.
        let other = keys_in(&dir.path().join("other"));
        let (theirs, _) = other
            .issue(&alice(), SystemTime::now(), Duration::from_secs(60))
            .unwrap();
        assert!(keys.verify(&theirs).is_err());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_in(dir.path());
        let now = unix_secs(SystemTime::now());
        for i in 0..VERIFIED_CACHE_MAX + 10 {
            let digest: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            keys.remember(digest, &alice(), now + 60, now);
        }
        assert!(keys.cached_tokens() <= VERIFIED_CACHE_MAX);
    }
}
