//! drawbridge: a short-lived SSH certificate authority and bastion in one binary.
//!
//! # Layout
//!
//! | module | what it owns | invariants |
//! |---|---|---|
//! | [`config`] | `drawbridge.toml` and the embedded default | unknown keys are errors; paths resolve against the file's folder |
//! | [`policy`] | the access model: load, validate, evaluate, test, diff, watch | evaluation does no I/O; a rejected reload keeps the last good policy |
//! | [`issuer`] | the `ca/` key files and certificate signing | the only code that opens a CA private key; private files are 0600 or refused |
//! | [`identity`] | passwords (argon2id), drawbridge tokens, OIDC ID tokens | no secret implements `Debug` or reaches a log |
//! | [`audit`] | the hash-chained JSON-lines log and `audit verify` | a record is on disk before the action it records takes effect |
//! | [`api`] | the HTTPS API (axum) | callers are authenticated before any body is read |
//! | [`bastion`] | the SSH front (russh): certificate check, `direct-tcpip` forwarding | forwards only to inventory addresses the current policy allows |
//! | [`recording`] | recorded sessions: the asciicast file, SFTP operations, `session list/play/watch` | a recording is 0600, never over a file or link; a write error fails every later call (the session is cut) |
//! | [`serve`] | wiring of the above for `drawbridge serve` | |
//! | [`cli`] | the command line | exit 0 success, 1 failure, 2 bad usage |
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod bastion;
pub mod cli;
pub mod config;
pub mod identity;
pub mod issuer;
pub mod policy;
pub mod recording;
pub mod serve;
pub mod state;
pub mod util;
