//! [`PolicyStore`] with its policy from Git: the same swap, record-first order and
//! subscribers as the folder, with a fetch and the commit checks in place of reading a
//! folder.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{PolicyStore, ReloadOutcome, WatchState};
use crate::policy::git::source::Accepted;
use crate::policy::git::{GitSettings, GitSource};

impl PolicyStore {
    /// Opens the policy from Git: fetches the ref and puts its head in force when it
    /// passes every check; when it does not (or the fetch fails), the commit this clone
    /// last put in force, checked again. With neither, the start fails with every reason.
    ///
    /// A head refused here is not recorded (the audit log is not open yet): the service
    /// reloads once the log is open, and that reload refuses and records it.
    pub fn open_git(settings: GitSettings) -> Result<Arc<PolicyStore>, String> {
        let clone = settings.clone_dir.display().to_string();
        let what = format!("{} (ref {})", settings.url, settings.git_ref);
        let git = GitSource::open(settings)
            .map_err(|e| format!("cannot prepare the policy clone {clone}: {e}"))?;
        let mut reasons = Vec::new();
        if let Err(e) = git.fetch() {
            tracing::warn!(repository = %what, error = %e, "cannot fetch the policy; trying the commit last applied");
            reasons.push(format!("fetching {what}: {e}"));
        }
        let head = git.fetched().map_err(|e| e.to_string())?;
        let last = git.applied().map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        let mut accepted: Option<Accepted> = None;
        match &head {
            Some(h) => match git.examine(h, last.as_deref(), now) {
                Ok(a) => accepted = Some(a),
                Err(r) => reasons.push(r.to_string()),
            },
            None => reasons.push(format!("{what}: no commit fetched")),
        }
        if accepted.is_none()
            && let Some(l) = &last
        {
            match git.examine(l, None, now) {
                Ok(a) => accepted = Some(a),
                Err(r) => reasons.push(format!("the commit last applied: {r}")),
            }
        }
        let Some(accepted) = accepted else {
            return Err(reasons.join("\n"));
        };
        git.repo
            .set_applied(&accepted.commit)
            .map_err(|e| format!("cannot record the commit applied in {clone}: {e}"))?;
        tracing::info!(commit = %accepted.commit, signed_by = ?accepted.signed.as_ref().map(signed_by), "policy from Git");
        let policy = Arc::new(accepted.policy);
        Ok(Arc::new(PolicyStore {
            dir: git.settings.clone_dir.clone(),
            git_index: None,
            current: arc_swap::ArcSwap::new(policy.clone()),
            applied: tokio::sync::watch::Sender::new(policy),
            state: std::sync::Mutex::new(WatchState::default()),
            git: Some(git),
        }))
    }

    /// How often the Git ref is fetched (`None`: the policy is a folder).
    pub fn git_poll(&self) -> Option<Duration> {
        self.git.as_ref().map(|g| g.settings.poll)
    }

    /// Fetches the ref and puts its head in force if it passes, or refuses it
    /// ([`ReloadOutcome::CommitRejected`]) once per head and allowed signers.
    pub(super) fn reload_git(
        &self,
        git: &GitSource,
        state: &mut WatchState,
        commit: impl FnOnce(&ReloadOutcome) -> Result<(), String>,
    ) -> ReloadOutcome {
        let kept_version = self.current.load().version.clone();
        let unavailable = |reason: String| ReloadOutcome::Unavailable {
            kept_version: kept_version.clone(),
            reason,
        };
        if let Err(e) = git.fetch() {
            return unavailable(e.to_string());
        }
        let head = match git.fetched() {
            Ok(Some(h)) => h,
            Ok(None) => {
                return unavailable(format!("the ref {} has no commit", git.settings.git_ref));
            }
            Err(e) => return unavailable(e.to_string()),
        };
        if head == kept_version {
            state.rejected = None;
            return ReloadOutcome::Unchanged;
        }
        let signers = signers_fingerprint(git);
        if state.rejected.as_ref() == Some(&(head.clone(), signers.clone())) {
            return ReloadOutcome::Unchanged;
        }
        match git.examine(&head, Some(&kept_version), SystemTime::now()) {
            Ok(accepted) => {
                let outcome = ReloadOutcome::Applied {
                    old_version: kept_version.clone(),
                    new_version: accepted.commit.clone(),
                    signed_by: accepted.signed.as_ref().map(signed_by),
                };
                if let Err(reason) = commit(&outcome) {
                    return ReloadOutcome::Refused {
                        kept_version,
                        new_version: accepted.commit,
                        reason,
                    };
                }
                if let Err(e) = git.repo.set_applied(&accepted.commit) {
                    // In force all the same (its record is written); only a restart
                    // would not know it, and would find it a descendant anyway.
                    tracing::error!(error = %e, "cannot record the policy commit applied in the clone");
                }
                let policy = Arc::new(accepted.policy);
                self.current.store(policy.clone());
                self.applied.send_replace(policy);
                state.rejected = None;
                outcome
            }
            Err(rejected) => {
                let outcome = ReloadOutcome::CommitRejected {
                    kept_version,
                    commit: rejected.commit,
                    reason: rejected.code,
                    errors: rejected.errors,
                };
                // Recorded once: a record that could not be written is tried again.
                if commit(&outcome).is_ok() {
                    state.rejected = Some((head, signers));
                }
                outcome
            }
        }
    }
}

fn signed_by(s: &crate::policy::git::signature::Signed) -> String {
    format!("{} ({}, {})", s.principals, s.fingerprint, s.line)
}

/// A hash of the allowed signers file as it is now (empty without one): a refused head
/// is checked again when the file changes.
fn signers_fingerprint(git: &GitSource) -> String {
    match &git.settings.allowed_signers {
        None => String::new(),
        Some(p) => match std::fs::read(p) {
            Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
            Err(e) => format!("unreadable: {e}"),
        },
    }
}
