//! The handlers. Each refusal is counted, audited with its reason, and answered with a
//! JSON error that says what to do; an issuance is answered only after its audit record
//! is on disk.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::public;
use super::repeats::RepeatKey;
use super::request::{MAX_CERT_BODY, MAX_DRAIN, parse_cert_request, read_body};
use super::ssh_config::{SnippetInput, render, valid_identity_file};
use crate::audit::{AuditEvent, Grant, PeerText, RefusalCode};
use crate::identity::{AuthError, Identity, Secret};
use crate::issuer::plan::{CertRequest, IssueRefusal, TtlCap, plan_from_policy};
use crate::util::{rfc3339, unix_secs};

pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.api.request_timeout;
    Router::new()
        .route("/v1/certs", post(post_certs))
        .route("/v1/login", post(post_login))
        .route("/v1/ca", get(public::get_ca))
        .route("/v1/known_hosts", get(public::get_known_hosts))
        .route("/v1/ssh_config", get(get_ssh_config))
        .route("/v1/krl", get(public::get_krl))
        .route("/v1/device", post(super::device::post_device))
        .route("/v1/device/token", post(super::device::post_device_token))
        .route("/healthz", get(public::get_healthz))
        .route("/metrics", get(public::get_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(move |req, next| {
            request_deadline(req, next, timeout)
        }))
        .with_state(state)
}

async fn request_deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    limit: std::time::Duration,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            RefusalCode::Timeout,
            "the request took too long; send it again",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        RefusalCode::NotFound,
        "no such endpoint; see GET /v1/ca, POST /v1/certs, POST /v1/login, GET /v1/ssh_config",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        RefusalCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

pub(super) fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Longest `Authorization` header read. A password login or an ID token is far shorter;
/// a longer one is refused (431) before it is decoded, hashed or recorded.
pub const MAX_AUTHORIZATION_BYTES: usize = 16 * 1024;

/// Credentials as sent, before they are checked.
enum Credentials {
    Basic {
        user: String,
        password: Secret<String>,
    },
    Bearer(Secret<String>),
}

fn credentials(headers: &HeaderMap, allow_bearer: bool) -> Result<Credentials, ApiError> {
    let how = if allow_bearer {
        "authenticate with a password (curl -u USER) or a bearer token (-H 'Authorization: Bearer TOKEN')"
    } else {
        "authenticate with a password (curl -u USER)"
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(RefusalCode::Unauthenticated, how));
    };
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RefusalCode::AuthorizationTooLarge,
            format!(
                "the Authorization header is {} bytes; at most {MAX_AUTHORIZATION_BYTES} are accepted",
                value.len()
            ),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized(RefusalCode::BadCredentials, how))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| ApiError::unauthorized(RefusalCode::BadCredentials, how))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| ApiError::unauthorized(RefusalCode::BadCredentials, how))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized(RefusalCode::BadCredentials, how))?;
        Ok(Credentials::Basic {
            user: user.to_string(),
            password: Secret::new(password.to_string()),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && allow_bearer {
        Ok(Credentials::Bearer(Secret::new(rest.to_string())))
    } else {
        Err(ApiError::unauthorized(RefusalCode::BadCredentials, how))
    }
}

/// The header a TOTP user's one-time code comes in.
pub const OTP_HEADER: &str = "drawbridge-otp";

/// The `Drawbridge-OTP` code, if sent. A value that is not short printable text is kept
/// as an empty code, which never matches (a code is six digits).
fn otp_header(headers: &HeaderMap) -> Option<Secret<String>> {
    let value = headers.get(OTP_HEADER)?;
    let text = value
        .to_str()
        .ok()
        .filter(|t| t.len() <= 16)
        .unwrap_or_default();
    Some(Secret::new(text.trim().to_string()))
}

fn auth_error(e: &AuthError) -> ApiError {
    match e {
        AuthError::RateLimited { retry_after } => ApiError::too_many(
            RefusalCode::RateLimited,
            "too many failed logins; wait and try again",
            *retry_after,
        ),
        AuthError::Busy => ApiError::too_many(
            RefusalCode::Busy,
            "too many password logins at once; try again in a moment, or use a bearer token",
            std::time::Duration::from_secs(1),
        ),
        AuthError::Internal(detail) => ApiError::internal(detail),
        AuthError::Unavailable(detail) => {
            tracing::warn!(reason = %detail, "login refused: shared state unavailable");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                RefusalCode::ApiStateUnavailable,
                e.client_message(),
            )
        }
        AuthError::TotpNotEnrolled => ApiError::forbidden(e.code(), e.to_string()),
        other => ApiError::unauthorized(other.code(), other.to_string()),
    }
}

/// An authenticated caller. Extracted from the headers before any body is read.
pub struct Caller {
    pub identity: Identity,
    pub client: IpAddr,
}

async fn authenticate(
    state: &AppState,
    parts: &Parts,
    allow_bearer: bool,
) -> Result<Caller, ApiError> {
    let client = client_ip(parts);
    let creds = match credentials(&parts.headers, allow_bearer) {
        Ok(c) => c,
        Err(e) => {
            state.metrics.login_failed(e.code.as_str());
            return Err(e);
        }
    };
    let (claimed, result) = match &creds {
        Credentials::Basic { user, password } => (
            Some(user.clone()),
            state
                .auth
                .basic_with_otp(user, password, otp_header(&parts.headers).as_ref(), client)
                .await,
        ),
        Credentials::Bearer(token) => (None, state.auth.bearer(token.expose(), client).await),
    };
    match result {
        Ok(identity) => Ok(Caller { identity, client }),
        Err(e) => {
            state.metrics.login_failed(e.code().as_str());
            let method = if claimed.is_some() {
                "password"
            } else {
                "token"
            };
            // Refusals made without looking at the credential: the first of each second
            // is recorded, the rest counted (see `repeats`).
            if matches!(e, AuthError::Busy | AuthError::RateLimited { .. }) {
                let key = RepeatKey::new(e.code(), e.rule(), client, method);
                if !state
                    .repeats
                    .record_now(key, claimed.as_deref(), Instant::now())
                {
                    tokio::time::sleep(super::repeats::REPEAT_DELAY).await;
                    return Err(auth_error(&e));
                }
            } else if claimed.is_none()
                && !state.token_refusals.record_now(
                    super::repeats::source_of(client),
                    e.code(),
                    Instant::now(),
                )
            {
                // A refused bearer token costs its sender nothing: past the source's
                // budget it is counted, not recorded (see `audit::budget`).
                tokio::time::sleep(super::repeats::REPEAT_DELAY).await;
                return Err(auth_error(&e));
            }
            let ev = AuditEvent::LoginFailed {
                client: client.to_string(),
                reason: e.code(),
                detail: e.audit_reason(),
                method: method.to_string(),
                user: claimed.as_deref().map(PeerText::cut),
                policy_version: state.policy.current().version.clone(),
                rule: e.rule().to_string(),
            };
            if state.audit.record(ev).await.is_err() {
                return Err(ApiError::audit_unavailable());
            }
            Err(auth_error(&e))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, parts, true).await
    }
}

/// A caller authenticated by password only (`POST /v1/login`).
pub struct PasswordCaller(pub Caller);

impl FromRequestParts<Arc<AppState>> for PasswordCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, parts, false).await.map(PasswordCaller)
    }
}

/// The rule of a refusal made before the policy was asked: the request was malformed.
const RULE_REQUEST: &str = "api.request";

async fn refuse(state: &AppState, caller: &Caller, e: ApiError, policy_version: &str) -> ApiError {
    refuse_with(
        state,
        caller,
        e,
        policy_version,
        Refused::rule(RULE_REQUEST),
    )
    .await
}

/// What a `cert.refused` record says beyond the caller and the error: the rule that
/// refused, and for a refusal about the key, which key (and what of a `[[revoked]]`
/// entry matched).
struct Refused {
    rule: String,
    key_fingerprint: Option<String>,
    revoked_by: Option<String>,
}

impl Refused {
    fn rule(rule: &str) -> Refused {
        Refused {
            rule: rule.to_string(),
            key_fingerprint: None,
            revoked_by: None,
        }
    }
}

/// [`refuse`] with the rule and key of the refusal.
async fn refuse_with(
    state: &AppState,
    caller: &Caller,
    e: ApiError,
    policy_version: &str,
    extra: Refused,
) -> ApiError {
    state.metrics.refuse(e.code.as_str());
    let ev = AuditEvent::CertRefused {
        user: caller.identity.user.clone(),
        client: caller.client.to_string(),
        method: caller.identity.method.as_str().to_string(),
        reason: e.code,
        message: e.message.clone(),
        policy_version: policy_version.to_string(),
        rule: extra.rule,
        key_fingerprint: extra.key_fingerprint,
        revoked_by: extra.revoked_by,
    };
    if state.audit.record(ev).await.is_err() {
        return ApiError::audit_unavailable();
    }
    e
}

/// Reads and drops what is left of a refused request's body (at most `limit` bytes, for
/// at most a second): a response sent while the client is still sending can be lost to a
/// TCP reset. Nothing of the body is kept or parsed. A body over `limit` is left unread
/// (the connection then closes), so `limit` is [`MAX_DRAIN`], the same bound
/// [`read_body`] drains past its limit: an anonymous client sending a large body must
/// still see its 401, not a reset.
async fn discard_body(body: Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut dropped = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                dropped += data.len();
                if dropped > limit {
                    break;
                }
            }
        }
    })
    .await;
}

async fn post_certs(
    State(state): State<Arc<AppState>>,
    caller: Result<Caller, ApiError>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Authentication was decided from the headers alone; the body is not looked at.
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            discard_body(body, MAX_DRAIN).await;
            return Err(e);
        }
    };
    let policy = state.policy.current();
    let version = policy.version.clone();
    let body = match read_body(body, MAX_CERT_BODY).await {
        Ok(b) => b,
        Err(e) => return Err(refuse(&state, &caller, e, &version).await),
    };
    let req = match parse_cert_request(&uri, &headers, body) {
        Ok(r) => r,
        Err(e) => return Err(refuse(&state, &caller, e, &version).await),
    };
    let key = match crate::issuer::accept::accept_user_key(&req.public_key) {
        Ok(k) => k,
        Err(e) => {
            let e = ApiError::bad_request(RefusalCode::BadKey, e.to_string());
            let rule = Refused::rule("issuer.accepted_keys");
            return Err(refuse_with(&state, &caller, e, &version, rule).await);
        }
    };
    let now = SystemTime::now();
    let id = &caller.identity;
    let key_fingerprint = key.fingerprint(Default::default()).to_string();
    let request = CertRequest {
        ttl: req.ttl,
        principals: req.principals.as_deref(),
        reason: req.reason.as_deref(),
        key_fingerprint: &key_fingerprint,
    };
    let plan = match plan_from_policy(
        &policy,
        &id.user,
        &id.groups,
        &request,
        &state.config.certs,
        &state.config.ssh.egress_addresses,
        now,
    ) {
        Ok(p) => p,
        Err(r) => {
            let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN);
            let e = ApiError::new(status, r.code(), r.to_string());
            let mut extra = Refused {
                rule: r.rule(&id.user),
                key_fingerprint: Some(key_fingerprint.clone()),
                revoked_by: None,
            };
            if let IssueRefusal::Revoked { by, .. } = &r {
                // What of the [[revoked]] entry (the rule) matched.
                extra.revoked_by = Some(by.as_str().to_string());
            }
            return Err(refuse_with(&state, &caller, e, &version, extra).await);
        }
    };
    let keys = state.issuer_keys();
    let started = Instant::now();
    let signed = crate::issuer::sign::sign_user_cert(&keys.user_ca, &key, &plan)
        .map_err(ApiError::internal)?;
    state
        .metrics
        .signing_seconds
        .observe(started.elapsed().as_secs_f64());
    let line = signed.openssh_line().map_err(ApiError::internal)?;
    let deciding: Vec<Grant> = policy
        .held(&id.user, &id.groups, now)
        .iter()
        .filter(|g| plan.principals.contains(&g.principal))
        .map(|g| Grant::new(&g.principal, &g.via))
        .collect();
    let ev = AuditEvent::CertIssued {
        user: id.user.clone(),
        client: caller.client.to_string(),
        method: id.method.as_str().to_string(),
        serial: signed.serial,
        key_id: plan.key_id.clone(),
        principals: plan.principals.clone(),
        grants: deciding,
        valid_after: plan.valid_after,
        valid_before: plan.valid_before,
        ttl_secs: plan.ttl.as_secs(),
        ttl_capped_by: plan
            .capped_by
            .as_ref()
            .map(|c| cap_text(c, &policy, &id.user)),
        reason: req.reason.clone(),
        key_type: key.algorithm().as_str().to_string(),
        key_fingerprint: key.fingerprint(Default::default()).to_string(),
        ca_fingerprint: keys.user_ca.fingerprint(),
        policy_version: version.clone(),
    };
    if state.audit.record(ev).await.is_err() {
        return Err(ApiError::audit_unavailable());
    }
    state.metrics.certs_issued.inc();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response())
}

/// What capped the TTL, for `cert.issued`; a temporary grant with where it stands.
fn cap_text(cap: &TtlCap, policy: &crate::policy::Policy, user: &str) -> String {
    let TtlCap::Temporary {
        principal, until, ..
    } = cap
    else {
        return cap.to_string();
    };
    match policy
        .temporary
        .iter()
        .find(|t| t.user == user && &t.principal == principal && t.until == *until)
    {
        Some(t) => format!("{cap} at {}", t.origin),
        None => cap.to_string(),
    }
}

async fn post_login(
    State(state): State<Arc<AppState>>,
    caller: Result<PasswordCaller, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = match caller {
        Ok(PasswordCaller(c)) => c,
        Err(e) => {
            discard_body(body, MAX_DRAIN).await;
            return Err(e);
        }
    };
    let now = SystemTime::now();
    let (token, expires) = state
        .auth
        .issue_token(&caller.identity, now)
        .map_err(|e| auth_error(&e))?;
    let ev = AuditEvent::LoginOk {
        user: caller.identity.user.clone(),
        client: caller.client.to_string(),
        method: caller.identity.method.as_str().to_string(),
        token_expires_at: rfc3339(expires),
        policy_version: state.policy.current().version.clone(),
        rule: AuthError::InvalidCredentials.rule().to_string(),
    };
    if state.audit.record(ev).await.is_err() {
        return Err(ApiError::audit_unavailable());
    }
    state.metrics.logins_ok.inc();
    state.metrics.tokens_issued.inc();
    let body = serde_json::json!({
        "token": token,
        "expires_at": rfc3339(expires),
        "expires_at_unix": unix_secs(expires),
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response())
}

pub(super) fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SshConfigQuery {
    identity_file: Option<String>,
}

async fn get_ssh_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: SshConfigQuery = match uri.query() {
        None | Some("") => SshConfigQuery::default(),
        Some(_) => axum::extract::Query::<SshConfigQuery>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| ApiError::bad_request(RefusalCode::BadQuery, e.body_text()))?,
    };
    let identity_file = q
        .identity_file
        .unwrap_or_else(|| "~/.ssh/id_ed25519".to_string());
    if !valid_identity_file(&identity_file) {
        return Err(ApiError::bad_request(
            RefusalCode::BadIdentityFile,
            "identity_file must be a plain path such as ~/.ssh/id_ed25519",
        ));
    }
    let policy = state.policy.current();
    let now = SystemTime::now();
    let id = &caller.identity;
    let hosts = policy.reachable(&id.user, &id.groups, None, now);
    let bastion_host = state
        .config
        .ssh
        .host_names
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let generated = rfc3339(now);
    // The certificate drawbridge-login fetches next carries every principal held, so a
    // host is recorded when it or any principal granting it says so.
    let recorded: Vec<&str> = hosts
        .iter()
        .filter(|r| policy.records(r.host, &r.principals))
        .map(|r| r.host)
        .collect();
    let snippet = render(&SnippetInput {
        user: &id.user,
        bastion_host: &bastion_host,
        bastion_port: state.config.ssh.listen.port(),
        identity_file: &identity_file,
        hosts: &hosts,
        generated_at: &generated,
        recorded: &recorded,
    });
    Ok(text(snippet))
}
