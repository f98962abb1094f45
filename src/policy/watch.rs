//! The current policy for a running service, swapped atomically on a valid reload.
//!
//! A reload compares the files' content (a hash over paths and bytes) and the version,
//! not only the version: in a Git folder an uncommitted edit must reload too. The watcher
//! polls a cheap fingerprint (paths, sizes, modification times) and reloads only when it
//! changes; the reload itself runs on a blocking thread (it reads files and runs `git`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::load::{content_hash, read_dir_files, version_of};
use super::{LoadErrors, Policy};

/// What a reload did, for the caller to log and audit.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The files changed and the new policy is in force.
    Applied {
        old_version: String,
        new_version: String,
    },
    /// The files changed but do not load; the last good policy stays in force.
    Rejected {
        kept_version: String,
        errors: LoadErrors,
    },
    /// Nothing changed.
    Unchanged,
}

pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwap<Policy>,
    /// Tells subscribers each policy put in force (the bastion re-checks open forwards).
    applied: tokio::sync::watch::Sender<Arc<Policy>>,
    /// What the files looked like when last read.
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    /// Content hash of the policy in force (empty: built in memory).
    content: String,
    /// Fingerprint of the folder at the last read.
    fingerprint: Option<Fingerprint>,
}

/// Paths, sizes and modification times of the policy files: cheap to take, changes
/// whenever a file is added, removed or written.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Takes the fingerprint of the `*.toml` files under `dir` (outside `dir/tests/`).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    fn walk(root: &Path, dir: &Path, out: &mut Fingerprint) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if !(dir == root && name == "tests") {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".toml") {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

impl PolicyStore {
    /// Loads `dir`; an invalid policy at start is an error (nothing to fall back to).
    pub fn open(dir: &Path) -> Result<Arc<PolicyStore>, LoadErrors> {
        let fp = fingerprint(dir);
        let files = read_dir_files(dir)?;
        let mut policy = Policy::from_files(&files)?;
        policy.version = version_of(dir, &files);
        let policy = Arc::new(policy);
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::new(policy.clone()),
            applied: tokio::sync::watch::Sender::new(policy),
            state: Mutex::new(WatchState {
                content: content_hash(&files),
                fingerprint: Some(fp),
            }),
        }))
    }

    /// A store holding a policy built in memory (tests, benchmarks).
    pub fn from_policy(dir: &Path, policy: Policy) -> Arc<PolicyStore> {
        let policy = Arc::new(policy);
        Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::new(policy.clone()),
            applied: tokio::sync::watch::Sender::new(policy),
            state: Mutex::new(WatchState::default()),
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

    /// Re-reads the folder now (SIGHUP, or the watcher saw a change).
    ///
    /// `Applied` when the files or the version differ from the policy in force and the new
    /// policy is valid; `Rejected` (the old policy stays) when they do not load;
    /// `Unchanged` otherwise. Reloads are serialised.
    pub fn reload(&self) -> ReloadOutcome {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.fingerprint = Some(fingerprint(&self.dir));
        let kept_version = self.current.load().version.clone();
        let files = match read_dir_files(&self.dir) {
            Ok(f) => f,
            Err(errors) => {
                return ReloadOutcome::Rejected {
                    kept_version,
                    errors,
                };
            }
        };
        let content = content_hash(&files);
        let version = version_of(&self.dir, &files);
        if content == state.content && version == kept_version {
            return ReloadOutcome::Unchanged;
        }
        match Policy::from_files(&files) {
            Ok(mut policy) => {
                policy.version = version.clone();
                let policy = Arc::new(policy);
                self.current.store(policy.clone());
                self.applied.send_replace(policy);
                state.content = content;
                ReloadOutcome::Applied {
                    old_version: kept_version,
                    new_version: version,
                }
            }
            Err(errors) => ReloadOutcome::Rejected {
                kept_version,
                errors,
            },
        }
    }

    /// Whether the folder's fingerprint differs from the one at the last read.
    fn changed(&self) -> bool {
        let fp = fingerprint(&self.dir);
        match self.state.lock() {
            Ok(s) => s.fingerprint.as_ref() != Some(&fp),
            Err(_) => true,
        }
    }

    /// Polls the folder every `interval` and reloads on change, calling `on_outcome`
    /// for every outcome other than `Unchanged`.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        on_outcome: impl Fn(ReloadOutcome) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        let on_outcome = Arc::new(on_outcome);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let s = Arc::clone(&store);
                let outcome =
                    tokio::task::spawn_blocking(
                        move || {
                            if s.changed() { Some(s.reload()) } else { None }
                        },
                    )
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
