//! The HTTPS API (axum): login, certificate issuance, CA and host-trust material.
//!
//! Invariant: callers are authenticated (a `FromRequestParts` extractor) before any body is
//! read, so an anonymous request with a bad body gets 401, not 400 or 413.

pub mod error;
pub mod metrics;
pub mod request;
pub mod server;
pub mod ssh_config;
