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

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuthError, AuthMethod, Identity, Secret, jwt_error};
use crate::util::unix_secs;

/// `iss` and `aud` of drawbridge tokens.
pub const ISSUER: &str = "drawbridge";
/// Clock skew allowed on `exp` and `nbf`, for drawbridge and OIDC tokens alike.
pub const LEEWAY_SECS: u64 = 30;

/// Creates a new Ed25519 token key: the private key as PKCS#8 PEM (mode 0600) and the
/// public key as SPKI PEM. Refuses to overwrite either file.
pub fn write_token_key(private_path: &Path, public_path: &Path) -> anyhow::Result<()> {
    for p in [private_path, public_path] {
        if p.exists() {
            anyhow::bail!("{} already exists; refusing to overwrite it", p.display());
        }
    }
    let mut seed = Secret::new([0u8; 32]);
    getrandom::fill(&mut seed.expose_mut()[..]).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let signing = SigningKey::from_bytes(seed.expose());
    let private_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the token key: {e}"))?;
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the token public key: {e}"))?;
    for p in [private_path, public_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    write_new(private_path, private_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(public_path, public_pem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(private_path);
        return Err(e);
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// The token key, loaded. `Debug` shows only the key id.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
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
        let meta = std::fs::metadata(private_path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the token key {}: {e} (run `drawbridge ca init`)",
                private_path.display()
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by group or others: run `chmod 600 {}`",
                private_path.display(),
                private_path.display()
            );
        }
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
    /// required (30 s leeway), `nbf` honoured if present.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
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
        super::check_name("token subject", &c.sub)?;
        for g in &c.groups {
            super::check_name("token group", g)?;
        }
        Ok(Identity {
            user: c.sub,
            groups: c.groups,
            method: AuthMethod::Token,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_files_are_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (
            dir.path().join("ca/token_key"),
            dir.path().join("ca/token_key.pub"),
        );
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
}
