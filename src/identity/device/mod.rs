//! Logging in through an identity provider with the OAuth 2.0 device authorization grant
//! (RFC 8628): `POST /v1/device` starts it, `POST /v1/device/token` polls it.
//!
//! drawbridge is the OAuth client (`[[oidc]] client_id`). It keeps the provider's
//! `device_code` to itself and hands out its own: 256 random bits, bound to the provider's,
//! single-use, expiring with the provider's `expires_in` ([`pending`]). A poll sooner than
//! the interval gets `slow_down` and the interval grows by 5 s; only one poll of a code is
//! at the provider at a time, so one login gives one token. The ID token the provider
//! returns is verified exactly as a bearer ID token is (issuer, audience, pinned
//! algorithms, claims: [`Authenticator::verify_provider_token`]).
//!
//! Parts: [`provider`] (the HTTP calls, bounded), [`pending`] (the codes, no I/O).

pub mod pending;
pub mod provider;
pub mod seal;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{AuthError, Authenticator, Identity, Secret};
use crate::audit::RefusalCode;
use crate::config::Config;
use pending::{Ended, Limits, PollGate, PollOutcome, StartRefused};
use provider::{DeviceClient, ProviderError, TokenAnswer};
use store::{DeviceStore, MemoryDevices, StoreDown};

/// Longest `device_code` looked up (ours are 43 characters).
pub const MAX_CODE_LEN: usize = 128;

/// What `POST /v1/device` answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Started {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    /// The provider's, or `verification_uri` when it gives none (the person then types
    /// `user_code`).
    pub verification_uri_complete: String,
    pub interval: u64,
    pub expires_in: u64,
}

/// Why a device login did not (yet) give a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// No `[[oidc]]` entry has a `client_id`.
    NotConfigured,
    Pending,
    SlowDown(Duration),
    Expired,
    Denied,
    /// Unknown, used or refused code; the text is for the audit record.
    InvalidGrant(String),
    /// Start refused by a limit.
    Limit(StartRefused),
    /// The provider could not be reached; the text is for the operator.
    Unavailable(String),
    /// The shared state (PostgreSQL) could not be asked; the text is for the operator.
    StateUnavailable(String),
    /// The provider answered nonsense; the text is for the operator.
    Provider(String),
    /// The ID token was refused.
    Token(AuthError),
}

impl DeviceError {
    pub fn code(&self) -> RefusalCode {
        match self {
            DeviceError::NotConfigured | DeviceError::Unavailable(_) => {
                RefusalCode::DeviceUnavailable
            }
            DeviceError::StateUnavailable(_) => RefusalCode::ApiStateUnavailable,
            DeviceError::Pending => RefusalCode::AuthorizationPending,
            DeviceError::SlowDown(_) => RefusalCode::SlowDown,
            DeviceError::Expired => RefusalCode::ExpiredToken,
            DeviceError::Denied => RefusalCode::AccessDenied,
            DeviceError::InvalidGrant(_) | DeviceError::Token(_) => RefusalCode::InvalidGrant,
            DeviceError::Limit(_) => RefusalCode::DeviceLimit,
            DeviceError::Provider(_) => RefusalCode::IdpError,
        }
    }

    /// HTTP status: RFC 8628's errors are 400; limits 429; the provider's faults 502/503.
    pub fn status(&self) -> u16 {
        match self {
            DeviceError::NotConfigured
            | DeviceError::Unavailable(_)
            | DeviceError::StateUnavailable(_) => 503,
            DeviceError::Limit(_) => 429,
            DeviceError::Provider(_) => 502,
            _ => 400,
        }
    }

    /// What to tell the client.
    pub fn message(&self) -> String {
        match self {
            DeviceError::NotConfigured => {
                "no identity provider is set up for device logins here; log in with a password".into()
            }
            DeviceError::Pending => {
                "the login at the identity provider is not finished yet; poll again after `interval` seconds".into()
            }
            DeviceError::SlowDown(d) => format!(
                "polled too soon; wait {} s between polls from now on",
                d.as_secs()
            ),
            DeviceError::Expired => {
                "this device login expired; start a new one with POST /v1/device".into()
            }
            DeviceError::Denied => "the login was refused at the identity provider".into(),
            DeviceError::InvalidGrant(_) => {
                "this device_code is unknown or already used; start a new login with POST /v1/device".into()
            }
            DeviceError::Limit(StartRefused::Full) => {
                "too many device logins in progress; try again in a few minutes".into()
            }
            DeviceError::Limit(_) => {
                "too many device logins from your address; finish or let expire the ones started, then try again".into()
            }
            DeviceError::Unavailable(_) => {
                "the identity provider cannot be reached; try again shortly".into()
            }
            DeviceError::StateUnavailable(_) => {
                "drawbridge's shared state is unavailable, so no device login can start or finish; try again shortly".into()
            }
            DeviceError::Provider(_) => {
                "the identity provider gave an answer drawbridge cannot use; the operator has the details".into()
            }
            DeviceError::Token(e) => format!("the identity provider's token was refused: {e}"),
        }
    }

    /// The reason for the audit record (never a code or token).
    pub fn audit_reason(&self) -> String {
        match self {
            DeviceError::InvalidGrant(why)
            | DeviceError::Unavailable(why)
            | DeviceError::StateUnavailable(why)
            | DeviceError::Provider(why) => why.clone(),
            DeviceError::Token(e) => e.audit_reason(),
            DeviceError::Limit(StartRefused::Full) => "login.device_pending reached".into(),
            DeviceError::Limit(StartRefused::SourceFull) => {
                "login.device_pending_per_source reached".into()
            }
            DeviceError::Limit(StartRefused::TooFast) => {
                "login.device_starts_per_minute reached".into()
            }
            other => other.code().as_str().into(),
        }
    }

    /// The rule that decided, for the audit record.
    pub fn rule(&self) -> &'static str {
        match self {
            DeviceError::Limit(StartRefused::Full) => "login.device_pending",
            DeviceError::Limit(StartRefused::SourceFull) => "login.device_pending_per_source",
            DeviceError::Limit(StartRefused::TooFast) => "login.device_starts_per_minute",
            DeviceError::Token(_) => "token",
            _ => "oidc.client_id",
        }
    }

    /// The normal waiting answers of the protocol, not recorded one by one.
    pub fn is_waiting(&self) -> bool {
        matches!(self, DeviceError::Pending | DeviceError::SlowDown(_))
    }

    /// `Retry-After` for the 429s and 503s.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeviceError::Limit(_) => Some(Duration::from_secs(60)),
            DeviceError::Unavailable(_)
            | DeviceError::StateUnavailable(_)
            | DeviceError::NotConfigured => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// The device login of this process (the first `[[oidc]]` with a `client_id`).
pub struct DeviceLogin {
    client: DeviceClient,
    store: Arc<dyn DeviceStore>,
}

/// The device-login limits of `[login]`.
pub fn limits(config: &Config) -> Limits {
    Limits {
        pending: config.login.device_pending,
        pending_per_source: config.login.device_pending_per_source,
        starts_per_minute: config.login.device_starts_per_minute,
    }
}

impl DeviceLogin {
    /// From the config: `None` when no `[[oidc]]` has a `client_id`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<DeviceLogin>> {
        let Some(p) = config.oidc.iter().find(|p| p.client_id.is_some()) else {
            return Ok(None);
        };
        let client_id = p.client_id.clone().unwrap_or_default();
        if p.audience != client_id {
            anyhow::bail!(
                "oidc {}: audience {:?} must be the client_id {:?} for the device login \
                 (the provider's ID token is addressed to the client)",
                p.issuer,
                p.audience,
                client_id
            );
        }
        let secret = match &p.client_secret_file {
            None => None,
            Some(file) => {
                let path = config.resolve(file);
                // A secret readable by others is refused, as the CA's private files are.
                crate::issuer::check_private_mode(&path)
                    .map_err(|e| anyhow::anyhow!("oidc {}: client_secret_file: {e}", p.issuer))?;
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!(
                        "oidc {}: cannot read client_secret_file {}: {e}",
                        p.issuer,
                        path.display()
                    )
                })?;
                Some(Secret::new(text.trim().to_string()))
            }
        };
        let client = DeviceClient::new(&p.issuer, &client_id, secret, &p.device_scope)
            .map_err(|e| anyhow::anyhow!("oidc {}: {e}", p.issuer))?;
        Ok(Some(DeviceLogin {
            client,
            store: Arc::new(MemoryDevices::new(limits(config))),
        }))
    }

    /// The same login with its logins in progress kept in `store` (shared by the
    /// replicas with `[state] postgres`).
    pub fn with_store(self, store: Arc<dyn DeviceStore>) -> DeviceLogin {
        DeviceLogin { store, ..self }
    }

    /// The provider's issuer.
    pub fn issuer(&self) -> &str {
        self.client.issuer()
    }

    /// Starts a device login for `source`.
    pub async fn start(&self, source: IpAddr) -> Result<Started, DeviceError> {
        self.store
            .admit(source)
            .await
            .map_err(DeviceError::from)?
            .map_err(DeviceError::Limit)?;
        let auth = self.client.start().await.map_err(from_provider)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| DeviceError::Provider(format!("random device code: {e}")))?;
        let code = URL_SAFE_NO_PAD.encode(bytes);
        let kept = self
            .store
            .insert(
                &code,
                auth.device_code,
                source,
                Duration::from_secs(auth.expires_in),
                Duration::from_secs(auth.interval),
            )
            .await?;
        if !kept {
            return Err(DeviceError::Limit(StartRefused::Full));
        }
        Ok(Started {
            device_code: code,
            user_code: auth.user_code,
            verification_uri_complete: auth
                .verification_uri_complete
                .unwrap_or_else(|| auth.verification_uri.clone()),
            verification_uri: auth.verification_uri,
            interval: auth.interval,
            expires_in: auth.expires_in,
        })
    }

    /// Polls the login `code`; the identity once the person has logged in and the ID token
    /// verifies.
    pub async fn poll(&self, auth: &Authenticator, code: &str) -> Result<Identity, DeviceError> {
        if code.is_empty() || code.len() > MAX_CODE_LEN {
            return Err(DeviceError::InvalidGrant(
                "device_code empty or too long".into(),
            ));
        }
        let gate = self.store.gate(code).await?;
        let provider_code = match gate {
            PollGate::Ask(c) => c,
            PollGate::Unknown => {
                return Err(DeviceError::InvalidGrant(
                    "device_code never handed out".into(),
                ));
            }
            PollGate::Expired => return Err(DeviceError::Expired),
            PollGate::SlowDown(d) => return Err(DeviceError::SlowDown(d)),
            PollGate::Ended(Ended::Used) => {
                return Err(DeviceError::InvalidGrant("device_code already used".into()));
            }
            PollGate::Ended(Ended::Denied) => return Err(DeviceError::Denied),
            PollGate::Ended(Ended::Failed) => return Err(DeviceError::Expired),
        };
        let answer = self.client.poll(&provider_code).await;
        let (outcome, result) = match answer {
            Err(e) => (PollOutcome::Retry, Err(from_provider(e))),
            Ok(TokenAnswer::Pending) => (PollOutcome::Pending, Err(DeviceError::Pending)),
            Ok(TokenAnswer::SlowDown) => (PollOutcome::SlowDown, Err(DeviceError::Pending)),
            Ok(TokenAnswer::Expired) => {
                (PollOutcome::End(Ended::Failed), Err(DeviceError::Expired))
            }
            Ok(TokenAnswer::Denied) => (PollOutcome::End(Ended::Denied), Err(DeviceError::Denied)),
            Ok(TokenAnswer::Refused(what)) => (
                PollOutcome::End(Ended::Failed),
                Err(DeviceError::InvalidGrant(format!(
                    "the provider answered {what}"
                ))),
            ),
            Ok(TokenAnswer::IdToken(token)) => {
                // One token per login, whether its ID token verifies or not.
                let verified = auth
                    .verify_provider_token(self.client.issuer(), token.expose())
                    .await
                    .map_err(DeviceError::Token);
                (PollOutcome::End(Ended::Used), verified)
            }
        };
        let interval = self.store.finish(code, outcome).await?;
        match (outcome, result) {
            (PollOutcome::SlowDown, Err(_)) => Err(DeviceError::SlowDown(interval)),
            (_, r) => r,
        }
    }
}

impl From<StoreDown> for DeviceError {
    fn from(e: StoreDown) -> DeviceError {
        DeviceError::StateUnavailable(e.0)
    }
}

fn from_provider(e: ProviderError) -> DeviceError {
    match e {
        ProviderError::Unreachable(why) => DeviceError::Unavailable(why),
        ProviderError::Invalid(why) => DeviceError::Provider(why),
    }
}
