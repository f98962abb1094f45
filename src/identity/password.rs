//! Password users: the users file, argon2id hashing, and the bounded hashing pool.
//!
//! # The users file
//!
//! `users.toml` (default `ca/users.toml`, outside Git, mode 0600):
//!
//! ```toml
//! [users.alice]
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! ```
//!
//! Written by `drawbridge user add` (atomically: a temporary file renamed over the old
//! one; comments are not kept). The server re-reads it when its modification time or size
//! changes, checked at each password login; a file that no longer parses is logged and the
//! last good copy is kept.
//!
//! # Hashing
//!
//! argon2id, version 0x13, **m = 19 MiB (19456 KiB), t = 2, p = 1**, 16-byte random salt,
//! 32-byte output: the OWASP minimum, tens of milliseconds per hash on one core. Stored
//! hashes carry their own parameters, so raising them later keeps old hashes valid.
//! Verification runs on `login.hash_workers` threads of its own, at most that many at once
//! with at most `login.hash_queue` waiting; past that a login gets [`AuthError::Busy`]
//! at once (docs/threats.md F10). The threads run at niceness `login.hash_nice` (default 10), so
//! when the CPU is short, certificate issuance for callers who already hold a token and
//! the bastion's forwarding go first and a login storm slows only the logins.
//!
//! An unknown user is checked against a dummy hash made with the same parameters, so it
//! costs the same time as a wrong password (docs/threats.md T29).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AuthError, Secret};

/// argon2 memory cost in KiB (19 MiB).
pub const M_COST_KIB: u32 = 19 * 1024;
/// argon2 passes.
pub const T_COST: u32 = 2;
/// argon2 lanes.
pub const P_COST: u32 = 1;

fn argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(32))
        .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password with the documented parameters and a random salt; returns the PHC
/// string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
pub fn hash_password(password: &Secret<String>) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Internal(format!("random salt: {e}")))?;
    let hash = argon2()?
        .hash_password_with_salt(password.expose().as_bytes(), &salt)
        .map_err(|e| AuthError::Internal(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

/// True when `password` matches the PHC string `hash`. A malformed hash never matches.
pub fn verify_password(password: &Secret<String>, hash: &str) -> bool {
    match argon2() {
        Ok(a) => a
            .verify_password(password.expose().as_bytes(), hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// The users file's shape.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

/// One password user.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// argon2id PHC string.
    pub hash: String,
    /// TOTP secret (base32) when the user has a second factor (`user add --totp`,
    /// `user totp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("hash", &"[redacted]")
            .field("totp", &self.totp.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl UsersFile {
    /// Reads and checks the file; a missing file is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<UsersFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UsersFile::default()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (l, c) = crate::config::line_col(text, s.start);
                    format!("{l}:{c}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", e.message())
        })?;
        for name in file.users.keys() {
            crate::policy::check_name("user", name).map_err(|e| format!("not allowed: {e}"))?;
        }
        Ok(file)
    }

    /// Writes the file atomically (temporary file, fsync, rename, fsync of the folder),
    /// mode 0600, creating the folder if needed.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let file_name = path
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} is not a file path", path.display()))?
            .to_string_lossy()
            .into_owned();
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let tmp = dir.join(format!(".{file_name}.{}.tmp", hex::encode(suffix)));
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            anyhow::bail!("cannot write {}: {e}", path.display());
        }
        Ok(())
    }
}

struct Cached {
    stamp: Option<(SystemTime, u64, u64)>,
    users: Arc<BTreeMap<String, UserEntry>>,
}

/// The users file as the server sees it: re-read when it changes.
pub struct UserStore {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl UserStore {
    pub fn new(path: PathBuf) -> UserStore {
        UserStore {
            path,
            cached: Mutex::new(Cached {
                stamp: None,
                users: Arc::new(BTreeMap::new()),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored hash of `user`, re-reading the file first if it changed.
    pub fn hash_of(&self, user: &str) -> Option<String> {
        self.current().get(user).map(|e| e.hash.clone())
    }

    /// The TOTP secret of `user`, if enrolled (same re-read rule as [`hash_of`](Self::hash_of)).
    pub fn totp_of(&self, user: &str) -> Option<String> {
        self.current().get(user).and_then(|e| e.totp.clone())
    }

    /// The current users, re-reading the file if its mtime, size or inode changed.
    pub fn current(&self) -> Arc<BTreeMap<String, UserEntry>> {
        let meta = std::fs::metadata(&self.path).ok();
        let stamp = meta.as_ref().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        });
        let Ok(mut cached) = self.cached.lock() else {
            return Arc::new(BTreeMap::new());
        };
        if cached.stamp == stamp && stamp.is_some() {
            return Arc::clone(&cached.users);
        }
        match (&meta, UsersFile::load(&self.path)) {
            (None, _) => {
                cached.users = Arc::new(BTreeMap::new());
                cached.stamp = None;
            }
            (Some(_), Ok(file)) => {
                // Warned about, not refused: the file holds hashes, not keys.
                if let Err(e) = crate::issuer::check_private_mode(&self.path) {
                    tracing::warn!(file = %self.path.display(), "the users file: {e}");
                }
                cached.users = Arc::new(file.users);
                cached.stamp = stamp;
            }
            (Some(_), Err(e)) => {
                tracing::error!(error = %e, "users file rejected; keeping the last good copy");
                // Remember the stamp so a bad file is not re-parsed on every login.
                cached.stamp = stamp;
            }
        }
        Arc::clone(&cached.users)
    }
}

/// At most `workers` hashes at once, at most `queue` waiting for a worker.
pub struct HashPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    jobs: std::sync::mpsc::Sender<HashJob>,
}

type HashJob = Box<dyn FnOnce() + Send>;

impl HashPool {
    /// Starts `workers` hashing threads at niceness `nice` (0 leaves it unchanged). A
    /// niceness that cannot be set is logged and the thread runs at the normal priority.
    pub fn new(workers: usize, queue: usize, nice: i32) -> HashPool {
        let workers = workers.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || hash_worker(&rx, nice));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        HashPool {
            permits: Arc::new(Semaphore::new(workers)),
            waiting: AtomicUsize::new(0),
            queue,
            jobs: tx,
        }
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, AuthError> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(AuthError::Busy);
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| AuthError::Internal("hash pool closed".into()))
    }

    /// Checks `password` against `hash` on a hashing thread, within the pool's bounds.
    pub async fn verify(&self, password: &Secret<String>, hash: String) -> Result<bool, AuthError> {
        let permit = self.permit().await?;
        let password = password.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let ok = verify_password(&password, &hash);
            drop(permit);
            let _ = done.send(ok);
        });
        if self.jobs.send(job).is_err() {
            return Err(AuthError::Internal("no password hashing thread".into()));
        }
        result
            .await
            .map_err(|_| AuthError::Internal("password hashing thread stopped".into()))
    }
}

/// One hashing thread: lowers its own priority, then runs jobs until the pool is dropped.
fn hash_worker(jobs: &Mutex<std::sync::mpsc::Receiver<HashJob>>, nice: i32) {
    if nice != 0
        && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
    {
        tracing::warn!(error = %e, nice, "cannot lower the priority of a hashing thread");
    }
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
