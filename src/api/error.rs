//! The API's error type: a status, a stable code and a message that tells the caller what
//! to do. The detail that helps an operator goes to the log, never to the client.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::audit::RefusalCode;

/// An error shown to an API client as `{"error": code, "message": message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, also used as the refusal reason in metrics and audit.
    pub code: RefusalCode,
    /// What went wrong and what to do, safe to show (no secret, no internals).
    pub message: String,
    /// For 429 and 503: when to try again.
    pub retry_after: Option<Duration>,
    /// For 401: ask for credentials.
    pub challenge: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: RefusalCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            challenge: false,
        }
    }

    pub fn bad_request(code: RefusalCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: RefusalCode, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, message);
        e.challenge = true;
        e
    }

    pub fn forbidden(code: RefusalCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn too_many(code: RefusalCode, message: impl Into<String>, retry: Duration) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after = Some(retry);
        e
    }

    /// The audit log cannot be written: nothing is issued (fail closed).
    pub fn audit_unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RefusalCode::ApiAuditUnavailable,
            "the audit log cannot be written, so nothing is issued; try again shortly and tell the operator",
        );
        e.retry_after = Some(Duration::from_secs(5));
        e
    }

    /// An unexpected failure: the detail is logged here and never shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(detail = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            RefusalCode::Internal,
            "internal error; the operator can find the detail in the service log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&Body {
            error: self.code.as_str(),
            message: &self.message,
        })
        .unwrap_or_else(|_| "{\"error\":\"internal\"}".to_string());
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body + "\n",
        )
            .into_response();
        if let Some(retry) = self.retry_after {
            let secs = retry.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"drawbridge\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}
