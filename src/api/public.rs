//! The endpoints that need no login: the CA keys, `known_hosts`, the KRL, health and
//! metrics. None of them reads a request body or writes an audit record.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::routes::text;
use crate::audit::RefusalCode;

pub(super) async fn get_ca(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let lines = state
        .issuer_keys()
        .ca_public_lines()
        .map_err(ApiError::internal)?;
    Ok(text(lines))
}

pub(super) async fn get_known_hosts(
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let line = state
        .issuer_keys()
        .known_hosts_line()
        .map_err(ApiError::internal)?;
    Ok(text(line))
}

pub(super) async fn get_krl(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let policy = state.policy.current();
    let krl = state.krl_for(&policy).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], krl).into_response())
}

pub(super) async fn get_healthz(State(state): State<Arc<AppState>>) -> Response {
    // The shared state first: while the database is away logins and new connections are
    // refused, and the load balancer should send no one here.
    if let Some(db) = &state.shared_state
        && let Err(e) = db.ping().await
    {
        tracing::warn!(error = %e, "healthz: shared state unavailable");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RefusalCode::ApiStateUnavailable,
            "the shared state database (PostgreSQL) cannot be reached; issuance, logins \
                 and new connections are refused, open forwards go on",
        )
        .into_response();
    }
    // While unhealthy this tries one write (at most once a second), so health returns when
    // the disk does even if nothing else is sent our way.
    if state.audit.probe().await {
        let mut body = "ok\n".to_string();
        if let Some(warning) = super::disk::audit_disk_warning(&state.config.audit_path()) {
            body.push_str(&format!("warning: {warning}\n"));
        }
        text(body)
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RefusalCode::ApiAuditUnavailable,
            "the audit log cannot be written; issuance and new connections are refused",
        )
        .into_response()
    }
}

pub(super) async fn get_metrics(State(state): State<Arc<AppState>>) -> Response {
    let audit = state.config.audit_path();
    let size = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    state.metrics.observe_audit_log(size, Instant::now());
    if let Some(free) = super::disk::free_space(&audit) {
        state
            .metrics
            .audit_disk_free_bytes
            .set(i64::try_from(free.available).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
