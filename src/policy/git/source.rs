//! Policy from signed Git commits: which commit may be put in force, and its policy.
//!
//! A commit is applied only when, in this order:
//! 1. it descends from the commit in force (a ref moved back to an older commit, or
//!    force-pushed to a history that does not contain the commit in force, is refused:
//!    `not-descendant`);
//! 2. with `allowed_signers`: the commit itself (the head; the commits between the one in
//!    force and it need not be signed, since only the head's tree is read) carries an SSH
//!    signature that verifies, by a key a line of the file allows for the committer, now
//!    (`unsigned`, `bad-commit-signature`, `unknown-signer`);
//! 3. the policy files of its tree load and pass the same checks as a folder
//!    (`invalid-policy`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::repo::{APPLIED, FETCHED, Repo};
use super::run::RunError;
use super::signature::{Refusal, Signed, parse_commit, verify};
use super::signers::AllowedSigners;
use crate::audit::RefusalCode;
use crate::policy::Policy;

/// Where and how the service reads its policy from Git (`[policy]` in the config).
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// The repository: a URL or a path.
    pub url: String,
    pub git_ref: String,
    pub poll: Duration,
    pub allowed_signers: Option<PathBuf>,
    /// The service's own bare clone.
    pub clone_dir: PathBuf,
}

/// A commit that passed every check, with its policy (its version is the commit).
pub struct Accepted {
    pub commit: String,
    pub policy: Policy,
    pub signed: Option<Signed>,
}

/// A commit refused, and every reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub commit: String,
    pub code: RefusalCode,
    pub errors: Vec<String>,
}

impl Rejected {
    fn from(commit: &str, r: Refusal) -> Rejected {
        Rejected {
            commit: commit.to_string(),
            code: r.code,
            errors: vec![r.message],
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "commit {} refused ({}): {}",
            self.commit,
            self.code,
            self.errors.join("; ")
        )
    }
}

pub struct GitSource {
    pub settings: GitSettings,
    pub repo: Repo,
}

impl GitSource {
    pub fn open(settings: GitSettings) -> Result<GitSource, RunError> {
        let repo = Repo::open_or_init(&settings.clone_dir)?;
        Ok(GitSource { settings, repo })
    }

    /// Fetches the configured ref into the clone.
    pub fn fetch(&self) -> Result<(), RunError> {
        self.repo.fetch(&self.settings.url, &self.settings.git_ref)
    }

    /// The commit last fetched, if any.
    pub fn fetched(&self) -> Result<Option<String>, RunError> {
        self.repo.resolve(FETCHED)
    }

    /// The commit last put in force (by this clone, across restarts), if any.
    pub fn applied(&self) -> Result<Option<String>, RunError> {
        self.repo.resolve(APPLIED)
    }

    /// The allowed signers, read now (an edit of the file counts from the next check);
    /// `None` without `allowed_signers`.
    pub fn signers(&self) -> Result<Option<AllowedSigners>, Vec<String>> {
        match &self.settings.allowed_signers {
            None => Ok(None),
            Some(path) => AllowedSigners::load(path).map(Some),
        }
    }

    /// Whether `commit` may replace `in_force`, and its policy when it may.
    pub fn examine(
        &self,
        commit: &str,
        in_force: Option<&str>,
        now: SystemTime,
    ) -> Result<Accepted, Rejected> {
        examine(&self.repo, self.signers(), commit, in_force, now)
    }
}

/// [`GitSource::examine`] for any repository (also `drawbridge policy verify`).
pub fn examine(
    repo: &Repo,
    signers: Result<Option<AllowedSigners>, Vec<String>>,
    commit: &str,
    in_force: Option<&str>,
    now: SystemTime,
) -> Result<Accepted, Rejected> {
    let refuse = |code: RefusalCode, message: String| Rejected {
        commit: commit.to_string(),
        code,
        errors: vec![message],
    };
    if let Some(old) = in_force.filter(|old| *old != commit) {
        let forward = repo.is_ancestor(old, commit).map_err(|e| {
            refuse(
                RefusalCode::NotDescendant,
                format!("cannot tell whether it descends from {old}: {e}"),
            )
        })?;
        if !forward {
            let back = repo.is_ancestor(commit, old).unwrap_or(false);
            let what = if back {
                format!("the ref moved back: {commit} is older than the commit in force {old}")
            } else {
                format!(
                    "the ref was rewritten: {commit} does not descend from the commit in force {old}"
                )
            };
            return Err(refuse(RefusalCode::NotDescendant, what));
        }
    }
    let raw = repo
        .raw_commit(commit)
        .map_err(|e| refuse(RefusalCode::BadCommitSignature, e.to_string()))?;
    let parsed = parse_commit(&raw).map_err(|e| {
        refuse(
            RefusalCode::BadCommitSignature,
            format!("the commit object does not parse: {e}"),
        )
    })?;
    let signed = match signers {
        Ok(None) => None,
        Ok(Some(signers)) => {
            Some(verify(&parsed, &signers, now).map_err(|r| Rejected::from(commit, r))?)
        }
        Err(errors) => {
            return Err(Rejected {
                commit: commit.to_string(),
                code: RefusalCode::UnknownSigner,
                errors: std::iter::once(
                    "the allowed signers file does not load, so no signer is trusted".to_string(),
                )
                .chain(errors)
                .collect(),
            });
        }
    };
    let short = &commit[..commit.len().min(12)];
    let invalid = |e: crate::policy::LoadErrors| Rejected {
        commit: commit.to_string(),
        code: RefusalCode::InvalidPolicy,
        errors: e.0.iter().map(|e| e.to_string()).collect(),
    };
    // The tree named in the bytes just checked, not whatever the ref says now.
    let files = repo.read_tree(&parsed.tree, short).map_err(invalid)?;
    let mut policy = Policy::from_files(&files).map_err(invalid)?;
    policy.version = commit.to_string();
    Ok(Accepted {
        commit: commit.to_string(),
        policy,
        signed,
    })
}
