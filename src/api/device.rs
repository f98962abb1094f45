//! `POST /v1/device` and `POST /v1/device/token`: the device login through an identity
//! provider (see `identity::device`). Neither needs credentials.
//!
//! Records: a start is `device.started`; a token handed out is `login.ok` (method `oidc`);
//! a refused start or poll is `login.failed` (method `oidc`), the first of each second per
//! source, reason and rule recorded and the rest counted (`login.failed.repeated`), so
//! guessed codes cannot fill the log. `authorization_pending` and `slow_down` are the
//! protocol's waiting answers and are not recorded.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::repeats::RepeatKey;
use super::request::read_body;
use super::routes::client_ip;
use crate::audit::AuditEvent;
use crate::identity::device::DeviceError;
use crate::util::{rfc3339, unix_secs};

/// Largest body read: `{"device_code": "..."}` is far shorter.
pub const MAX_DEVICE_BODY: usize = 4 * 1024;

/// Reads a device endpoint's body (at most [`MAX_DEVICE_BODY`] bytes).
async fn device_body(body: axum::body::Body) -> Result<Vec<u8>, ApiError> {
    read_body(body, MAX_DEVICE_BODY).await.map_err(|mut e| {
        if e.code == crate::audit::RefusalCode::BodyTooLarge {
            e.message = format!(
                "the request body is over {MAX_DEVICE_BODY} bytes; send {{\"device_code\": \"...\"}}"
            );
        }
        e
    })
}

fn api_error(e: &DeviceError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut out = ApiError::new(status, e.code(), e.message());
    out.retry_after = e.retry_after();
    out
}

/// Records a refusal (the first of each second per source, reason and rule; the rest
/// counted) and turns it into the answer.
async fn refused(state: &AppState, client: std::net::IpAddr, e: DeviceError) -> ApiError {
    if e.is_waiting() {
        return api_error(&e);
    }
    state.metrics.login_failed(e.code().as_str());
    let key = RepeatKey::new(e.code(), e.rule(), client, "oidc");
    if !state.repeats.record_now(key, None, Instant::now()) {
        return api_error(&e);
    }
    let ev = AuditEvent::LoginFailed {
        client: client.to_string(),
        reason: e.code(),
        detail: e.audit_reason(),
        method: "oidc".to_string(),
        user: None,
        policy_version: state.policy.current().version.clone(),
        rule: e.rule().to_string(),
    };
    if matches!(e, DeviceError::Unavailable(_) | DeviceError::Provider(_)) {
        tracing::warn!(reason = %e.audit_reason(), "device login: identity provider problem");
    }
    if state.audit.record(ev).await.is_err() {
        return ApiError::audit_unavailable();
    }
    api_error(&e)
}

fn json(body: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

pub async fn post_device(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client = client_ip(&parts);
    // Nothing is read from the body; it is only bounded.
    device_body(body).await?;
    let Some(device) = state.device.clone() else {
        return Err(refused(&state, client, DeviceError::NotConfigured).await);
    };
    let started = match device.start(client).await {
        Ok(s) => s,
        Err(e) => return Err(refused(&state, client, e).await),
    };
    let ev = AuditEvent::DeviceStarted {
        client: client.to_string(),
        issuer: device.issuer().to_string(),
        expires_in: started.expires_in,
        policy_version: state.policy.current().version.clone(),
        rule: "oidc.client_id".to_string(),
    };
    if state.audit.record(ev).await.is_err() {
        return Err(ApiError::audit_unavailable());
    }
    Ok(json(
        serde_json::to_value(&started).map_err(ApiError::internal)?,
    ))
}

/// The `device_code` of a JSON body `{"device_code": "..."}` or a form body
/// `device_code=...` (what `curl -d` sends, as RFC 8628's token request).
fn device_code_of(body: &[u8]) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            crate::audit::RefusalCode::BadBody,
            "send {\"device_code\": \"...\"} from POST /v1/device",
        )
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad())?;
        return v
            .get("device_code")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(bad);
    }
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "device_code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(bad)
}

pub async fn post_device_token(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client = client_ip(&parts);
    let body = device_body(body).await?;
    let code = device_code_of(&body)?;
    let Some(device) = state.device.clone() else {
        return Err(refused(&state, client, DeviceError::NotConfigured).await);
    };
    let identity = match device.poll(&state.auth, &code).await {
        Ok(id) => id,
        Err(e) => return Err(refused(&state, client, e).await),
    };
    let now = SystemTime::now();
    let (token, expires) = state
        .auth
        .issue_token(&identity, now)
        .map_err(|e| ApiError::internal(e.audit_reason()))?;
    let ev = AuditEvent::LoginOk {
        user: identity.user.clone(),
        client: client.to_string(),
        method: identity.method.as_str().to_string(),
        token_expires_at: rfc3339(expires),
        policy_version: state.policy.current().version.clone(),
        rule: "oidc.client_id".to_string(),
    };
    if state.audit.record(ev).await.is_err() {
        return Err(ApiError::audit_unavailable());
    }
    state.metrics.logins_ok.inc();
    state.metrics.tokens_issued.inc();
    Ok(json(serde_json::json!({
        "token": token,
        "expires_at": rfc3339(expires),
        "expires_at_unix": unix_secs(expires),
    })))
}
