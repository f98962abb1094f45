//! The HTTPS API (axum).
//!
//! SKELETON.
