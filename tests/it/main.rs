//! The integration tests: one binary (one link of the crate after a change to `src/`), a
//! module per area, the helpers they share in `support`.
//!
//! Tests that need a real `sshd` fail when it or root is missing (`scripts/test` installs
//! it), unless `DRAWBRIDGE_ALLOW_SKIP=1` is set.

// A step that fails fails the test: panicking is how test code reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod api;
mod audit_cli;
mod audit_trail;
mod bastion;
mod device_login;
mod e2e;
mod exhaustion;
mod faults_http;
mod faults_ssh;
mod identity_cli;
mod issuer_cli;
mod policy_cli;
mod policy_git;
mod recorded;
mod replicas;
mod revocation_bastion;
mod revocation_issuance;
mod session_cli;
mod state;
mod threats_http;
mod threats_ssh;
