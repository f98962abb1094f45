//! Policy from signed Git commits (`[policy] git`): the service keeps its own bare clone,
//! fetches the configured ref, and puts the commit at its head in force only when it
//! descends from the one in force, is signed by an allowed key (with `allowed_signers`),
//! and its policy files load. See [`source`] for the order of the checks.

pub mod config;
pub mod repo;
pub mod run;
pub mod signature;
pub mod signers;
pub mod source;
pub mod verify_cmd;

#[cfg(test)]
mod repo_tests;
#[cfg(test)]
mod signature_tests;

pub use source::{GitSettings, GitSource};
