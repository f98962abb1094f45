//! The current policy for a running service, swapped atomically on a valid reload.
//!
//! SKELETON: shapes are the contract; the policy work fills in the bodies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

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
}

impl PolicyStore {
    /// Loads `dir`; an invalid policy at start is an error (nothing to fall back to).
    pub fn open(dir: &Path) -> Result<Arc<PolicyStore>, LoadErrors> {
        let policy = Policy::load(dir)?;
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(policy),
        }))
    }

    /// A store holding a policy built in memory (tests, benchmarks).
    pub fn from_policy(dir: &Path, policy: Policy) -> Arc<PolicyStore> {
        Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(policy),
        })
    }

    /// The policy in force now. Cheap; take it once per decision.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the folder now (SIGHUP, or the watcher saw a change).
    pub fn reload(&self) -> ReloadOutcome {
        todo!()
    }

    /// Polls the folder every `interval` and reloads on change, calling `on_outcome`
    /// for every outcome other than `Unchanged`.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        on_outcome: impl Fn(ReloadOutcome) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let _ = (interval, on_outcome);
        todo!()
    }
}
