//! What the integration tests share: one bounded process runner, the real `drawbridge`
//! binary, a real `sshd`, the OpenSSH client and `ssh-keygen`, the audit log reader, a
//! test identity provider, raw SSH and HTTP/2 clients, API clients that hold a connection
//! idle, Git for policy repositories, and the small network tools (a connection from a
//! chosen source address, a sink server, a held forward, the time a peer takes to close).
//!
//! Every wait is bounded and fails the test, saying what it waited for, when it runs out;
//! every child process is killed on drop.

pub mod audit;
pub mod dmz;
pub mod drawbridge;
pub mod git;
pub mod h2raw;
pub mod haproxy;
pub mod idle_api;
pub mod idp;
pub mod net;
pub mod oidc_provider;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod rawssh;
pub mod rawssh_session;
pub mod signed_git;
pub mod softsk;
pub mod ssh;
pub mod sshd;
pub mod users;
pub mod wire;

/// A name no other call of this process gets: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
