//! The current policy for a running service, swapped atomically on a valid reload.
//!
//! A reload compares the files' content (a hash over paths and bytes) and the version,
//! not only the version: in a Git folder an uncommitted edit must reload too. The watcher
//! polls a cheap fingerprint (paths, sizes, modification times, and in a Git work tree
//! the Git index, which `git add`, `commit` and `checkout` rewrite) and reloads only when it
//! changes; the reload itself runs on a blocking thread (it reads files and runs `git`).
//!
//! # Order
//!
//! A reload's outcome is handed to a `commit` callback (the service writes
//! `policy.reloaded` / `policy.rejected` there, and waits for it to be on disk) *before*
//! the new policy is swapped in: no decision is ever made under a policy whose record is
//! not yet written. A `commit` that fails refuses the swap ([`ReloadOutcome::Refused`]):
//! the old policy stays, and the watcher tries again at its next poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::folder::{content_hash, git_index_path, policy_paths, read_folder};
use super::git::GitSource;
use super::{LoadErrors, Policy};

mod git_reload;

/// What a reload did, for the caller to log and audit.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The files changed and the new policy is in force.
    Applied {
        old_version: String,
        new_version: String,
        /// Policy from Git with `allowed_signers`: who signed the commit now in force
        /// (the allowed_signers principals and the key's fingerprint).
        signed_by: Option<String>,
    },
    /// The files changed but do not load; the last good policy stays in force.
    Rejected {
        kept_version: String,
        errors: LoadErrors,
    },
    /// The files changed and load, but the change could not be recorded (`commit`
    /// failed): the old policy stays in force.
    Refused {
        kept_version: String,
        new_version: String,
        reason: String,
    },
    /// Policy from Git: the commit at the head of the ref is refused (not a descendant,
    /// not signed by an allowed key, or its files do not load); the commit in force stays.
    CommitRejected {
        kept_version: String,
        commit: String,
        reason: crate::audit::RefusalCode,
        errors: Vec<String>,
    },
    /// Policy from Git: the ref could not be fetched or read; the commit in force stays
    /// and the next poll tries again.
    Unavailable {
        kept_version: String,
        reason: String,
    },
    /// Nothing changed.
    Unchanged,
}

pub struct PolicyStore {
    dir: PathBuf,
    /// The Git index of the work tree holding `dir`, if any: part of the fingerprint,
    /// since tracking a file or committing changes the version without touching the files.
    git_index: Option<PathBuf>,
    current: ArcSwap<Policy>,
    /// Tells subscribers each policy put in force (the bastion re-checks open forwards).
    applied: tokio::sync::watch::Sender<Arc<Policy>>,
    /// What the files looked like when last read.
    state: Mutex<WatchState>,
    /// Policy from Git: the clone and the checks (`None`: the folder `dir`).
    git: Option<GitSource>,
}

#[derive(Default)]
struct WatchState {
    /// Content hash of the policy in force (empty: built in memory).
    content: String,
    /// Fingerprint of the folder at the last read.
    fingerprint: Option<Fingerprint>,
    /// Policy from Git: the head last refused, with the allowed signers it was checked
    /// against (refused once, recorded once; checked again when either changes).
    rejected: Option<(String, String)>,
}

/// Paths, sizes and modification times of the policy files: cheap to take, changes
/// whenever a file is added, removed or written.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Takes the fingerprint of the policy files under `dir`: the same files a load reads
/// ([`policy_paths`]).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let (paths, _) = policy_paths(dir);
    paths
        .into_iter()
        .map(|(_, path)| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect()
}

/// [`fingerprint`] plus the size and modification time of `git_index`, when given.
fn fingerprint_with(dir: &Path, git_index: Option<&Path>) -> Fingerprint {
    let mut fp = fingerprint(dir);
    if let Some(index) = git_index {
        let meta = std::fs::metadata(index).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        fp.push((
            index.to_path_buf(),
            len,
            meta.and_then(|m| m.modified().ok()),
        ));
    }
    fp
}

impl PolicyStore {
    /// Loads `dir`; an invalid policy at start is an error (nothing to fall back to).
    pub fn open(dir: &Path) -> Result<Arc<PolicyStore>, LoadErrors> {
        let git_index = git_index_path(dir);
        let fp = fingerprint_with(dir, git_index.as_deref());
        let folder = read_folder(dir)?;
        let mut policy = Policy::from_files(&folder.files)?;
        policy.version = folder.version;
        let policy = Arc::new(policy);
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            git_index,
            current: ArcSwap::new(policy.clone()),
            applied: tokio::sync::watch::Sender::new(policy),
            state: Mutex::new(WatchState {
                content: content_hash(&folder.files),
                fingerprint: Some(fp),
                rejected: None,
            }),
            git: None,
        }))
    }

    /// A store holding a policy built in memory (tests, benchmarks).
    pub fn from_policy(dir: &Path, policy: Policy) -> Arc<PolicyStore> {
        let policy = Arc::new(policy);
        Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            git_index: None,
            current: ArcSwap::new(policy.clone()),
            applied: tokio::sync::watch::Sender::new(policy),
            state: Mutex::new(WatchState::default()),
            git: None,
        })
    }

    /// The policy in force now. Cheap; take it once per decision.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Sees every policy put in force from now on (the value is the policy in force).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Policy>> {
        self.applied.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the folder now, with nothing to record ([`PolicyStore::reload_with`]).
    pub fn reload(&self) -> ReloadOutcome {
        self.reload_with(|_| Ok(()))
    }

    /// Re-reads the folder now (SIGHUP, or the watcher saw a change).
    ///
    /// `Applied` when the files or the version differ from the policy in force and the new
    /// policy is valid; `Rejected` (the old policy stays) when they do not load;
    /// `Unchanged` otherwise. Reloads are serialised.
    ///
    /// `commit` sees `Applied` or `Rejected` before it takes effect: for `Applied` the new
    /// policy is swapped in only after `commit` returned `Ok` (the record is on disk); an
    /// `Err` keeps the old policy and turns the outcome into `Refused`.
    pub fn reload_with(
        &self,
        commit: impl FnOnce(&ReloadOutcome) -> Result<(), String>,
    ) -> ReloadOutcome {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(git) = &self.git {
            return self.reload_git(git, &mut state, commit);
        }
        state.fingerprint = Some(fingerprint_with(&self.dir, self.git_index.as_deref()));
        let kept_version = self.current.load().version.clone();
        let folder = match read_folder(&self.dir) {
            Ok(f) => f,
            Err(errors) => {
                let outcome = ReloadOutcome::Rejected {
                    kept_version,
                    errors,
                };
                // Nothing changes either way: a failed record of a rejection is only
                // reported by `commit` itself.
                let _ = commit(&outcome);
                return outcome;
            }
        };
        let content = content_hash(&folder.files);
        let version = folder.version;
        if content == state.content && version == kept_version {
            return ReloadOutcome::Unchanged;
        }
        match Policy::from_files(&folder.files) {
            Ok(mut policy) => {
                policy.version = version.clone();
                let outcome = ReloadOutcome::Applied {
                    old_version: kept_version.clone(),
                    new_version: version.clone(),
                    signed_by: None,
                };
                if let Err(reason) = commit(&outcome) {
                    // Not applied: look again at the next poll even if the files stay.
                    state.fingerprint = None;
                    return ReloadOutcome::Refused {
                        kept_version,
                        new_version: version,
                        reason,
                    };
                }
                let policy = Arc::new(policy);
                self.current.store(policy.clone());
                self.applied.send_replace(policy);
                state.content = content;
                outcome
            }
            Err(errors) => {
                let outcome = ReloadOutcome::Rejected {
                    kept_version,
                    errors,
                };
                let _ = commit(&outcome);
                outcome
            }
        }
    }

    /// Whether the folder's fingerprint differs from the one at the last read.
    fn changed(&self) -> bool {
        if self.git.is_some() {
            // Only a fetch tells: every poll fetches.
            return true;
        }
        let fp = fingerprint_with(&self.dir, self.git_index.as_deref());
        match self.state.lock() {
            Ok(s) => s.fingerprint.as_ref() != Some(&fp),
            Err(_) => true,
        }
    }

    /// Polls the folder every `interval` and reloads on change, calling `on_outcome`
    /// for every outcome other than `Unchanged` (nothing to record before a swap).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        on_outcome: impl Fn(ReloadOutcome) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_watcher_with(interval, |_| Ok(()), on_outcome)
    }

    /// Polls the folder every `interval` and reloads on change. `commit` runs on the
    /// reload's blocking thread before the outcome takes effect
    /// ([`PolicyStore::reload_with`]); `on_outcome` is called for every outcome other than
    /// `Unchanged`, after it took effect (or did not).
    pub fn spawn_watcher_with(
        self: &Arc<Self>,
        interval: Duration,
        commit: impl Fn(&ReloadOutcome) -> Result<(), String> + Send + Sync + 'static,
        on_outcome: impl Fn(ReloadOutcome) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        let commit = Arc::new(commit);
        let on_outcome = Arc::new(on_outcome);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let s = Arc::clone(&store);
                let c = Arc::clone(&commit);
                let outcome = tokio::task::spawn_blocking(move || {
                    if s.changed() {
                        Some(s.reload_with(|o| c(o)))
                    } else {
                        None
                    }
                })
                .await;
                match outcome {
                    Ok(Some(ReloadOutcome::Unchanged)) | Ok(None) => {}
                    Ok(Some(o)) => on_outcome(o),
                    Err(e) => tracing::warn!(error = %e, "policy watcher: reload task failed"),
                }
            }
        })
    }
}
