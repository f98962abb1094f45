//! The `ca/` key files and certificate signing: the only code that opens a CA private key.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | [`files`] | 0600/0644/0700 files, atomic writes, [`check_private_mode`] |
//! | [`keys`] | the `ca/` folder: [`keys::init`], [`keys::ensure`], [`IssuerKeys`], [`BastionKeys`], TLS, rotation |
//! | [`accept`] | [`accept_user_key`]: which public keys we sign, with a reason for each refusal |
//! | [`plan`] | [`plan_user_cert`]: what goes into a user certificate (pure: no I/O, no clock) |
//! | [`sign`] | [`sign_user_cert`], [`sign_host_cert`] |
//! | [`krl`] | [`krl::build_krl`]: the OpenSSH KRL of `revoked.toml` |
//!
//! # Invariants
//!
//! - A private key file is read only after [`check_private_mode`] accepted it (0600 or
//!   stricter); private files are created with their mode, never chmod-ed afterwards.
//! - No type holding private key material prints it: [`CaKey`] and [`BastionKeys`]
//!   implement `Debug` with the fingerprint only.
//! - A user certificate always names at least one principal (an empty list would be a
//!   "golden ticket" valid for every login, docs/threats.md T5), is of type user, has a
//!   finite validity window, and carries no critical option but `source-address`.
//! - The signed key is never itself a certificate (docs/threats.md T10).

pub mod accept;
pub mod cert_fields;
pub mod cmd;
pub mod files;
pub mod keys;
pub mod krl;
pub mod plan;
pub mod sign;

use std::path::{Path, PathBuf};

pub use accept::{KeyError, accept_user_key};
pub use files::check_private_mode;
pub use keys::{
    BastionKeys, CaKey, InitOutcome, IssuerKeys, ca_public_lines, ensure, known_hosts_line,
    load_tls, write_token_key,
};
pub use plan::{
    CertPlan, CertRequest, IssueRefusal, PlanInput, TtlCap, plan_from_policy, plan_user_cert,
};
pub use sign::{SignError, SignedCert, sign_host_cert, sign_user_cert};

/// What went wrong with the key folder.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A private key file is readable or writable by group or others.
    #[error(
        "{} is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    InsecureMode { path: PathBuf, mode: u32 },
    /// `ca init` (or a rotation) would overwrite an existing key file.
    #[error("{} already exists; refusing to overwrite a key file (move it away first)", .0.display())]
    Exists(PathBuf),
    /// Some key files are there, others are missing.
    #[error(
        "{} holds only some of drawbridge's key files; missing: {}. Restore them from a backup, or move the folder away and run `drawbridge ca init`",
        dir.display(),
        missing.join(", ")
    )]
    Incomplete { dir: PathBuf, missing: Vec<String> },
    /// A key file that does not hold what it should.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Generating a key or certificate failed.
    #[error("cannot generate {what}: {message}")]
    Generate { what: &'static str, message: String },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl CaError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CaError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Self {
        CaError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The random number generator ssh-key wants (the operating system's).
pub(crate) fn rng() -> ssh_key::rand_core::UnwrapErr<ssh_key::getrandom::SysRng> {
    ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng)
}
