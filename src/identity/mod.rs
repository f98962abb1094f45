//! Who is calling: password users (argon2id), drawbridge tokens, OIDC ID tokens.
//!
//! [`Authenticator`] is the one entry point for the HTTP layer:
//! [`basic`](Authenticator::basic) for `Authorization: Basic`,
//! [`bearer`](Authenticator::bearer) for `Authorization: Bearer` (a drawbridge token or an
//! OIDC ID token, told apart by the unverified `iss`, then verified by the right verifier),
//! and [`issue_token`](Authenticator::issue_token) for `POST /v1/login`.
//!
//! Invariants: no password, token or key reaches `Debug` output, a log or an error message
//! ([`Secret`] wraps them); nothing read from an unverified token is trusted beyond picking
//! the verifier; a password burst cannot starve token logins (the bounded [`HashPool`]).
//!
//! Parts: [`password`] (users file, argon2id, pool), [`limiter`] (failed-login limits),
//! [`tokens`] (drawbridge tokens and the token key), [`oidc`] (identity providers).

pub mod cmd;
pub mod device;
pub mod limiter;
pub mod oidc;
pub mod password;
pub mod provider_url;
pub mod secret;
pub mod tokens;
pub mod totp;
pub mod used_codes;

use crate::audit::RefusalCode;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;

pub use limiter::{LoginLimiter, MemoryLimiter};
pub use oidc::OidcProvider;
pub use password::{HashPool, UserStore};
pub use secret::Secret;
pub use tokens::TokenKeys;
pub use used_codes::{MemoryUsedCodes, UsedCodes};

use crate::config::Config;

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum AuthMethod {
    Password,
    Token,
    Oidc { issuer: String },
}

impl AuthMethod {
    /// `password`, `token` or `oidc` (for audit records and metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Token => "token",
            AuthMethod::Oidc { .. } => "oidc",
        }
    }
}

/// An authenticated caller. `groups` are those asserted by the IdP or carried by the
/// token (empty for password users); the policy adds its own groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
///
/// Serialises flat, for audit records: `{"user":"dave","groups":["ops"],"method":"oidc",
/// "issuer":"https://idp.example.org"}`.
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    #[serde(flatten)]
    pub method: AuthMethod,
}

/// Why authentication failed. `Display` is the message safe to show the client (except
/// [`AuthError::Internal`], whose detail is for logs only: use
/// [`client_message`](AuthError::client_message)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password: one text for both. HTTP 401.
    #[error("invalid user name or password")]
    InvalidCredentials,
    /// Too many failed logins for this user or from this address. HTTP 429 with
    /// `Retry-After`.
    #[error("too many failed logins; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    /// The password hashing pool and its queue are full. HTTP 429.
    #[error("too many logins in progress; retry in a moment")]
    Busy,
    /// The bearer token was refused; the text says why ("token expired", ...). HTTP 401.
    #[error("{0}")]
    InvalidToken(String),
    /// A TOTP user sent the right password without `Drawbridge-OTP`. HTTP 401; counted as a
    /// failed login, as a wrong password is.
    #[error("this user needs a one-time code: send it in the Drawbridge-OTP header")]
    OtpRequired,
    /// A TOTP user's code was wrong, used before or outside ±1 step; the text (for the
    /// audit record only) says which. The client sees the wrong-password text. HTTP 401.
    #[error("invalid user name or password")]
    OtpRefused(String),
    /// `login.require_totp` is on and this password user has no TOTP. HTTP 403.
    #[error(
        "password logins need a second factor here; ask the operator to run `drawbridge user totp NAME`"
    )]
    TotpNotEnrolled,
    /// Our fault (a missing key, a worker that died). HTTP 500; the detail is not for the
    /// client.
    #[error("internal error: {0}")]
    Internal(String),
    /// The shared login limits (PostgreSQL) cannot be read: no password is tried. HTTP 503;
    /// the detail is for the service log.
    #[error("login limits unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidCredentials | AuthError::InvalidToken(_) => 401,
            AuthError::OtpRequired | AuthError::OtpRefused(_) => 401,
            AuthError::TotpNotEnrolled => 403,
            AuthError::RateLimited { .. } | AuthError::Busy => 429,
            AuthError::Internal(_) => 500,
            AuthError::Unavailable(_) => 503,
        }
    }

    /// A short machine code for the JSON error body.
    pub fn code(&self) -> RefusalCode {
        match self {
            AuthError::InvalidCredentials => RefusalCode::InvalidCredentials,
            AuthError::RateLimited { .. } => RefusalCode::RateLimited,
            AuthError::Busy => RefusalCode::Busy,
            AuthError::InvalidToken(_) => RefusalCode::InvalidToken,
            AuthError::OtpRequired => RefusalCode::OtpRequired,
            AuthError::OtpRefused(_) => RefusalCode::InvalidCredentials,
            AuthError::TotpNotEnrolled => RefusalCode::TotpNotEnrolled,
            AuthError::Internal(_) => RefusalCode::Internal,
            AuthError::Unavailable(_) => RefusalCode::ApiStateUnavailable,
        }
    }

    /// The rule that refused, for the audit record (a config key or the built-in check):
    /// the password file for a bad password, `login.max_failures` (with `login.window`)
    /// for the rate limit, `login.hash_queue` when the hashing queue is full, the token
    /// check for a bad token.
    pub fn rule(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "paths.users",
            AuthError::RateLimited { .. } => "login.max_failures",
            AuthError::Busy => "login.hash_queue",
            AuthError::InvalidToken(_) => "token",
            AuthError::OtpRequired | AuthError::OtpRefused(_) => "paths.users",
            AuthError::TotpNotEnrolled => "login.require_totp",
            AuthError::Internal(_) => "internal",
            AuthError::Unavailable(_) => "state.postgres",
        }
    }

    /// The message to show the client (never the detail of an internal error).
    pub fn client_message(&self) -> String {
        match self {
            AuthError::Internal(_) => "internal error; the operator has the details".into(),
            AuthError::Unavailable(_) => {
                "logins are paused: the shared state database cannot be reached; try again \
                 in a moment"
                    .into()
            }
            other => other.to_string(),
        }
    }

    /// `Retry-After` seconds, for the 429s.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::RateLimited { retry_after } => Some(*retry_after),
            AuthError::Busy => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The reason to write in an audit record (`login.failed`): never holds a secret.
    pub fn audit_reason(&self) -> String {
        match self {
            AuthError::InvalidCredentials => "invalid credentials".into(),
            AuthError::RateLimited { retry_after } => {
                format!("rate limited for {} s", retry_after.as_secs().max(1))
            }
            AuthError::Busy => "password hashing pool full".into(),
            AuthError::InvalidToken(why) => why.clone(),
            AuthError::OtpRequired => "one-time code missing".into(),
            AuthError::OtpRefused(why) => why.clone(),
            AuthError::TotpNotEnrolled => "no TOTP enrolled and login.require_totp is on".into(),
            AuthError::Internal(detail) => format!("internal error: {detail}"),
            AuthError::Unavailable(detail) => format!("shared state unavailable: {detail}"),
        }
    }
}

/// Maps a jsonwebtoken error to a client-safe reason.
pub(crate) fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    let why = match e.kind() {
        K::ExpiredSignature => "token expired".to_string(),
        K::ImmatureSignature => "token not yet valid".into(),
        K::InvalidSignature => "token signature invalid".into(),
        K::InvalidIssuer => "token issuer not trusted".into(),
        K::InvalidAudience => "token audience not accepted".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "token algorithm not allowed".into()
        }
        K::MissingRequiredClaim(c) => format!("token claim \"{c}\" missing or of the wrong type"),
        K::InvalidClaimFormat(c) => format!("token claim \"{c}\" of the wrong type"),
        _ => "token malformed".into(),
    };
    AuthError::InvalidToken(why)
}

/// Refuses a user a token names (a drawbridge token's `sub`, an identity provider's user
/// claim) that the policy could not name: the one name rule ([`crate::policy::check_name`])
/// that the policy loader and `user add` apply too.
pub(crate) fn check_user_claim(what: &str, s: &str) -> Result<(), AuthError> {
    crate::policy::check_name("user", s)
        .map_err(|e| AuthError::InvalidToken(format!("{what}: {e}")))
}

/// Refuses a group a token carries that holds control characters or is absurdly long: it
/// ends up in certificates and audit records. (A group the policy cannot name is carried
/// but never matches a policy group; refusing the token for it would lock out a user
/// whose identity provider lists groups drawbridge does not use.)
pub(crate) fn check_group_claim(what: &str, s: &str) -> Result<(), AuthError> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(AuthError::InvalidToken(format!(
            "{what} is empty, too long or holds control characters"
        )));
    }
    Ok(())
}

/// What the unverified header and payload say: used only to choose a verifier.
#[derive(Debug, Clone)]
pub(crate) struct Peek {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: Option<String>,
}

/// Reads the unverified header and `iss` of a JWT. Refuses `none` and HMAC algorithms
/// outright (no key we hold is a shared secret) and any `crit` header. Header keys that
/// carry key material (`jwk`, `jku`, `x5u`, `x5c`) are never used: keys come only from
/// our key file and the configured JWKS.
pub(crate) fn peek(token: &str) -> Result<Peek, AuthError> {
    let malformed = || AuthError::InvalidToken("token malformed".into());
    if token.len() > 16 * 1024 {
        return Err(AuthError::InvalidToken("token too long".into()));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let part = |b64: &str| -> Result<Value, AuthError> {
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| malformed())?;
        serde_json::from_slice(&bytes).map_err(|_| malformed())
    };
    let header = part(h)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?
        .to_string();
    if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
        return Err(AuthError::InvalidToken(
            "token algorithm not allowed".into(),
        ));
    }
    if header.get("crit").is_some() {
        // RFC 7515 4.1.11: extensions we do not understand make the token unusable.
        return Err(AuthError::InvalidToken(
            "token header has critical extensions".into(),
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    let payload = part(p)?;
    let iss = payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Peek { alg, kid, iss })
}

/// Authenticates callers of the HTTP API. Build one per process with
/// [`Authenticator::new`]; share it behind an `Arc`.
pub struct Authenticator {
    users: UserStore,
    pool: HashPool,
    limiter: Arc<dyn LoginLimiter>,
    tokens: TokenKeys,
    oidc: Vec<OidcProvider>,
    token_ttl: Duration,
    dummy_hash: String,
    used_codes: Arc<dyn UsedCodes>,
    require_totp: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.path())
            .field("token_kid", &self.tokens.kid())
            .field(
                "oidc",
                &self.oidc.iter().map(|p| &p.issuer).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// From the config: the users file (`paths.users`), the token key
    /// (`<paths.ca>/token_key`, which must exist and be 0600), the `[[oidc]]` providers
    /// (file JWKS read now), and the `[login]` limits, with an in-memory limiter.
    pub fn new(config: &Config) -> anyhow::Result<Authenticator> {
        let limiter = Arc::new(MemoryLimiter::new(
            config.login.max_failures,
            config.login.window,
        ));
        Self::with_limiter(config, limiter)
    }

    /// Like [`new`](Self::new) with another (e.g. shared) limiter.
    pub fn with_limiter(
        config: &Config,
        limiter: Arc<dyn LoginLimiter>,
    ) -> anyhow::Result<Authenticator> {
        Self::with_shared(config, limiter, Arc::new(MemoryUsedCodes::new()))
    }

    /// Like [`with_limiter`](Self::with_limiter), with another store of used one-time codes
    /// (shared by replicas with `[state] postgres`).
    pub fn with_shared(
        config: &Config,
        limiter: Arc<dyn LoginLimiter>,
        used_codes: Arc<dyn UsedCodes>,
    ) -> anyhow::Result<Authenticator> {
        let tokens = TokenKeys::load(&token_key_path(config))?;
        let mut oidc = Vec::new();
        for p in &config.oidc {
            if p.issuer == tokens::ISSUER {
                anyhow::bail!(
                    "oidc issuer {:?} is reserved for drawbridge's own tokens",
                    p.issuer
                );
            }
            oidc.push(OidcProvider::new(p, config)?);
        }
        let dummy_hash = password::hash_password(&Secret::new(
            "drawbridge: no such user, equal timing".to_string(),
        ))
        .map_err(|e| anyhow::anyhow!("{}", e.audit_reason()))?;
        Ok(Authenticator {
            users: UserStore::new(config.users_path()),
            pool: HashPool::new(
                config.login.hash_workers,
                config.login.hash_queue,
                config.login.hash_nice,
            ),
            limiter,
            tokens,
            oidc,
            token_ttl: config.login.token_ttl,
            dummy_hash,
            used_codes,
            require_totp: config.login.require_totp,
        })
    }

    /// Checks a user name and password (`Authorization: Basic`).
    ///
    /// Order: rate limit, which counts this attempt at once (no hashing when over), the
    /// bounded hashing pool (`Busy` when full; the attempt is given back), then argon2id
    /// against the stored hash, or a dummy hash for an unknown user.
    pub async fn basic(
        &self,
        user: &str,
        password: &Secret<String>,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        self.basic_with_otp(user, password, None, client).await
    }

    /// [`basic`](Self::basic) with the `Drawbridge-OTP` header's code, if any.
    ///
    /// The password is checked first, whatever the code (so the time is that of a password
    /// check). For a user with TOTP, a right password without a code is
    /// [`AuthError::OtpRequired`], and with a code that does not match (±1 step) or whose
    /// step this user already used, [`AuthError::OtpRefused`]; both stay counted as failed
    /// logins. A code is claimed only after the password matched, so a stranger cannot
    /// spend a user's codes. With `login.require_totp`, a right password of a user without
    /// TOTP is [`AuthError::TotpNotEnrolled`].
    pub async fn basic_with_otp(
        &self,
        user: &str,
        password: &Secret<String>,
        otp: Option<&Secret<String>>,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let now = SystemTime::now();
        // Bounded memory in the limiter whatever length the client sends.
        let limit_key = user_key(user);
        // Counted now, before hashing (see `limiter`), given back on success.
        let attempt = match self.limiter.reserve(limit_key, client, now).await {
            Ok(a) => a,
            Err(limiter::Refused::RetryAfter(retry_after)) => {
                return Err(AuthError::RateLimited { retry_after });
            }
            Err(limiter::Refused::Unavailable(why)) => return Err(AuthError::Unavailable(why)),
        };
        let stored = if crate::policy::check_name("user", user).is_ok() {
            self.users.hash_of(user)
        } else {
            None
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = match self.pool.verify(password, hash).await {
            Ok(ok) => ok,
            Err(e) => {
                if matches!(e, AuthError::Busy) {
                    // Not tried: the client may try again without losing a guess.
                    self.limiter.refund(&attempt).await;
                }
                return Err(e);
            }
        };
        if ok && known && !password.expose().is_empty() {
            match (self.users.totp_of(user), otp) {
                (Some(secret), Some(code)) => {
                    let secs = now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let Some(step) = totp::matching_step(user, &secret, code.expose(), secs) else {
                        return Err(AuthError::OtpRefused(
                            "one-time code wrong or outside one step of now".into(),
                        ));
                    };
                    if !self.used_codes.claim(user, step).await {
                        return Err(AuthError::OtpRefused("one-time code already used".into()));
                    }
                }
                (Some(_), None) => return Err(AuthError::OtpRequired),
                (None, _) if self.require_totp => return Err(AuthError::TotpNotEnrolled),
                (None, _) => {}
            }
            self.limiter.success(&attempt).await;
            Ok(Identity {
                user: user.to_owned(),
                groups: Vec::new(),
                method: AuthMethod::Password,
            })
        } else {
            Err(AuthError::InvalidCredentials)
        }
    }

    /// Checks a bearer token: a drawbridge token (`iss` = `drawbridge`) or an ID token of
    /// a configured OIDC provider. `client` is for future per-address limits.
    pub async fn bearer(&self, token: &str, client: IpAddr) -> Result<Identity, AuthError> {
        let _ = client;
        if let Some(id) = self.tokens.lookup(token) {
            return Ok(id);
        }
        let peek = peek(token)?;
        match peek.iss.as_deref() {
            Some(tokens::ISSUER) => self.tokens.verify(token),
            Some(iss) => match self.oidc.iter().find(|p| p.issuer == iss) {
                Some(provider) => provider.verify(token, &peek).await,
                None => Err(AuthError::InvalidToken("token issuer not trusted".into())),
            },
            None => Err(AuthError::InvalidToken("token has no issuer".into())),
        }
    }

    /// Verifies an ID token that the provider `issuer` gave drawbridge itself (the device
    /// login), exactly as a bearer ID token of that provider is verified; a token naming
    /// another issuer is refused.
    pub async fn verify_provider_token(
        &self,
        issuer: &str,
        token: &str,
    ) -> Result<Identity, AuthError> {
        let peek = peek(token)?;
        if peek.iss.as_deref() != Some(issuer) {
            return Err(AuthError::InvalidToken("token issuer not trusted".into()));
        }
        match self.oidc.iter().find(|p| p.issuer == issuer) {
            Some(provider) => provider.verify(token, &peek).await,
            None => Err(AuthError::InvalidToken("token issuer not trusted".into())),
        }
    }

    /// Signs a drawbridge token for `id`, valid for `login.token_ttl` from `now`.
    /// Returns the token and when it expires.
    pub fn issue_token(
        &self,
        id: &Identity,
        now: SystemTime,
    ) -> Result<(String, SystemTime), AuthError> {
        self.tokens.issue(id, now, self.token_ttl)
    }

    /// The token lifetime from the config.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }
}

/// Most bytes of a claimed user name kept in a key of per-user state (the failure limiter,
/// the repeated-refusal windows): the name is the client's, of any length.
pub(crate) const USER_KEY_BYTES: usize = 128;

/// `user` cut to at most [`USER_KEY_BYTES`] bytes on a character boundary: the key of
/// per-user state, so its memory stays bounded whatever the client sends.
pub(crate) fn user_key(user: &str) -> &str {
    crate::util::cut(user, USER_KEY_BYTES)
}

/// `<ca dir>/token_key`.
pub fn token_key_path(config: &Config) -> PathBuf {
    config.ca_dir().join("token_key")
}

/// `<ca dir>/token_key.pub`.
pub fn token_public_key_path(config: &Config) -> PathBuf {
    config.ca_dir().join("token_key.pub")
}

#[cfg(test)]
mod tests;
