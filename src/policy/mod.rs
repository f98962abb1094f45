//! The access model: who may reach which DMZ host as which login.
//!
//! Policy lives in Git as TOML (see `docs/policy.md`). [`Policy::load`] reads and
//! validates a folder; evaluation ([`Policy::decide`] and friends) is pure: no I/O, no
//! clock (the time is a parameter). [`watch::PolicyStore`] holds the current policy for
//! `serve` and swaps it atomically on a valid reload.
//!
//! SKELETON: the public API below is the contract the issuer and the bastion code against.
//! The policy work fills in the bodies; it may add to the API but not change these shapes.

pub mod carried;
pub mod cases;
pub mod cmd;
pub mod diff;
pub mod eval;
pub mod folder;
pub mod git;
pub mod ip_like;
mod load;
pub mod model;
pub mod names;
pub mod reach;
pub mod recorded;
mod sections_hosts;
mod sections_people;
pub(crate) mod spanned;
pub mod values;
pub mod watch;

pub use carried::{Carried, Held, Lost};
pub use eval::{PolicyIndex, Unresolved};
pub use folder::SourceFile;
pub use model::*;
pub use names::check_name;
pub use reach::Reach;
pub use recorded::RecordedBy;
pub use values::{parse_address, parse_source, parse_time, revoked_key_fingerprint, selector_text};

use std::path::Path;
use std::time::SystemTime;

/// Every error found while loading a policy folder (all of them, not only the first).
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<LoadError>);

/// One policy error: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A question to the policy.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The identity (a certificate's key id, a login name, an OIDC user claim).
    pub user: &'a str,
    /// Groups asserted by a trusted identity provider, on top of the policy's own.
    pub extra_groups: &'a [String],
    /// An inventory host name.
    pub host: &'a str,
    /// The login on the host; `None` for the bastion, which cannot see the login.
    pub login: Option<&'a str>,
    /// Only these principals count (a certificate's principals); `None` = all held.
    pub within: Option<&'a [String]>,
    pub now: SystemTime,
}

/// How a user holds a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `[users.NAME] principals`.
    User,
    /// A group that lists the user (or that an identity provider asserted).
    Group(String),
    /// A `[[temporary]]` grant, until its expiry.
    Temporary { until: SystemTime, reason: String },
}

/// A principal held by a user, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub principal: String,
    pub via: Via,
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { grant: Grant },
    Deny { reason: String },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl Policy {
    /// Reads and validates every `*.toml` under `dir` except `dir/tests/`.
    ///
    /// Every error is reported (see [`LoadErrors`]), each naming `dir.join(file)`, line
    /// and column. The version names the loaded bytes: the folder's Git commit (plus a
    /// hash of the files when they differ from it) in a Git work tree, where a file Git
    /// does not track is an error; else a hash of the files ([`folder::version_of`]).
    pub fn load(dir: &Path) -> Result<Policy, LoadErrors> {
        let folder = folder::read_folder(dir)?;
        let mut policy = Policy::from_files(&folder.files)?;
        policy.version = folder.version;
        Ok(policy)
    }

    /// Validates policy files already in memory (`policy diff` reads them from Git);
    /// the version is the hash of their contents.
    pub fn from_files(files: &[SourceFile]) -> Result<Policy, LoadErrors> {
        let mut policy = load::parse_files(files)?;
        policy.version = folder::content_hash(files);
        let index = std::sync::Arc::new(PolicyIndex::build(&policy));
        let _ = policy.index.set(index);
        Ok(policy)
    }

    /// A policy from one TOML text, named `file` in messages (for tests of other modules:
    /// `Policy::from_toml("policy.toml", r#"[hosts.web-1] ..."#)`).
    pub fn from_toml(file: &str, text: &str) -> Result<Policy, LoadErrors> {
        Policy::from_files(&[SourceFile {
            rel: file.to_string(),
            display: file.to_string(),
            text: text.to_string(),
        }])
    }

    /// Allow with the deciding grant, or deny with a reason a person can act on.
    ///
    /// The grants considered are those [`Policy::held`] returns (restricted to
    /// `q.within` when set); the first, in that order, whose principal grants the host
    /// and the login (any login when `q.login` is `None`) decides.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        self.decide_impl(q)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_host_key;
#[cfg(test)]
mod tests_issuance_keys;
