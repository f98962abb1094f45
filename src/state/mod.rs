//! Shared state of several replicas in PostgreSQL (`[state] postgres`).
//!
//! Without `[state]` every part below stays in this process (files and memory). With it,
//! each part has a PostgreSQL implementation behind the same trait as its in-process one:
//!
//! | part | trait | here |
//! |---|---|---|
//! | the audit chain of this replica | `audit::AuditSink` | [`audit_sink::PgSink`] |
//! | failed-login limits | `identity::LoginLimiter` | [`limiter::PgLimiter`] |
//! | connections per user | `bastion::counts::ConnectionCounts` | [`counts::PgCounts`] |
//! | open forwards, with leases | `bastion::registry::ForwardRegistry` | [`forwards::PgRegistry`] |
//! | TOTP codes already used | `identity::UsedCodes` | [`used_codes::PgUsedCodes`] |
//!
//! [`connect`] turns the config into a connection (never a password in the URL);
//! [`db::Db`] is the shared, self-healing connection with a bound on every wait;
//! [`migrate`] creates and migrates the schema at start (`migrations/`, refinery);
//! [`lease`] renews this replica's rows and expires those of replicas that died.
//!
//! # Failing closed
//!
//! Every call waits at most [`db::OP_WAIT`] (connecting included), so when the database is
//! unreachable a login, an issuance (its record cannot be committed) or a new SSH
//! connection is refused well within a second, with a reason. Nothing is cached in place of
//! the database: an answer it did not give is a refusal. Open forwards are not touched. The
//! next call after the database is back reconnects by itself.

pub mod audit_sink;
pub mod cmd;
pub mod connect;
pub mod counts;
pub mod db;
pub mod device_logins;
pub mod forwards;
pub mod lease;
pub mod limiter;
pub mod migrate;
pub mod sessions;
pub mod used_codes;
pub mod wiring;

/// What went wrong with the shared state.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// `[state]` is wrong: the service does not start.
    #[error("[state]: {0}")]
    Config(String),
    /// The database did not answer in time, or refused: the action is refused.
    #[error("the shared state database is unavailable: {0}")]
    Unavailable(String),
}
