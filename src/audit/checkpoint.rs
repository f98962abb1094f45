//! Signed checkpoints: what anchors the end of the log.
//!
//! A hash chain detects an edit, a deletion or a reordering *inside* the file, but not a
//! cut tail (a shorter chain is still a chain) nor a file whose every hash was recomputed
//! after an edit. A checkpoint closes both gaps: the service signs the chain's head
//! (`seq` and `hash` of the last durable record) with a key of its own, writes it into the
//! log as an `audit.checkpoint` record (the very next record, so its `prev` is the signed
//! hash) and appends the same object, one JSON line, to `<log>.checkpoints`. It does so at
//! start, every minute while records are written, and at stop. `drawbridge audit verify
//! FILE --checkpoints` then checks that every signed `(seq, hash)` is in the log and that
//! the log reaches past the last one (see [`super::anchor`]).
//!
//! # The signature, for anyone re-implementing the check
//!
//! The signed message is the canonical JSON (sorted keys, no whitespace: see
//! [`super::record`]) of `{"hash":…,"replica":…,"seq":…,"ts":…}`, signed as an OpenSSH
//! `SSHSIG` (namespace [`NAMESPACE`], SHA-512) with the Ed25519 key `ca/audit_key`; `sig`
//! holds the armored signature. So `ssh-keygen -Y verify -n drawbridge-audit-checkpoint`
//! checks one with nothing but OpenSSH and `ca/audit_key.pub`.
//!
//! A root attacker on the host holds the key and can rewrite both files: the anchor is
//! only as good as the copy of the checkpoints kept elsewhere (each one is also written to
//! the service log, for syslog or journald forwarding). The signature makes that copy
//! unforgeable by whoever can inject log lines but not read `ca/audit_key`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::{Audit, AuditError, record};
use crate::issuer::CaError;
use crate::issuer::files::{self, PRIVATE_MODE, PUBLIC_MODE};

/// The `SSHSIG` namespace of checkpoint signatures.
pub const NAMESPACE: &str = "drawbridge-audit-checkpoint";
/// The checkpoint key in the key folder (OpenSSH Ed25519, mode 0600).
pub const KEY_FILE: &str = "audit_key";
/// Its public half (OpenSSH public key line): what `audit verify --checkpoints` checks with.
pub const KEY_PUB: &str = "audit_key.pub";
/// The record kind of a checkpoint in the log.
pub const EVENT: &str = "audit.checkpoint";

/// `<log>.checkpoints`: where the checkpoints of the log at `log` are appended.
pub fn checkpoints_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".checkpoints");
    PathBuf::from(name)
}

/// The service's checkpoint signing key. `Debug` shows the fingerprint only.
pub struct CheckpointKey {
    key: PrivateKey,
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointKey({})", self.fingerprint())
    }
}

impl CheckpointKey {
    /// Loads `dir/audit_key`, creating it (0600, and `audit_key.pub` 0644) when neither
    /// file exists. A key file group or others may read is refused, as every private key
    /// in the folder is; a lone `audit_key.pub` without its private key is refused too
    /// (a new key would not match what verifiers hold).
    pub fn load_or_create(dir: &Path) -> Result<CheckpointKey, CaError> {
        let path = dir.join(KEY_FILE);
        let pub_path = dir.join(KEY_PUB);
        if !path.exists() {
            if pub_path.exists() {
                return Err(CaError::invalid(
                    &path,
                    format!(
                        "is missing but {} exists: restore the key from a backup (a new key \
                         would not match the one verifiers hold), or move {} away",
                        pub_path.display(),
                        pub_path.display()
                    ),
                ));
            }
            files::create_dir(dir)?;
            let mut key = PrivateKey::random(&mut crate::issuer::rng(), Algorithm::Ed25519)
                .map_err(|e| CaError::Generate {
                    what: "the audit checkpoint key",
                    message: e.to_string(),
                })?;
            key.set_comment("drawbridge audit checkpoints");
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| CaError::Generate {
                    what: "OpenSSH private key text",
                    message: e.to_string(),
                })?;
            let public = key
                .public_key()
                .to_openssh()
                .map_err(|e| CaError::Generate {
                    what: "OpenSSH public key text",
                    message: e.to_string(),
                })?;
            files::write_new(&path, text.as_bytes(), PRIVATE_MODE)?;
            files::write_atomic(&pub_path, format!("{public}\n").as_bytes(), PUBLIC_MODE)?;
            tracing::info!(path = %path.display(), "created the audit checkpoint key");
        }
        let bytes = files::read_private(&path)?;
        let key = PrivateKey::from_openssh(&bytes)
            .map_err(|e| CaError::invalid(&path, format!("not an OpenSSH private key: {e}")))?;
        if key.is_encrypted() || key.algorithm() != Algorithm::Ed25519 {
            return Err(CaError::invalid(
                &path,
                "the audit checkpoint key must be an unencrypted Ed25519 key",
            ));
        }
        Ok(CheckpointKey { key })
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// `SHA256:…`
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Signs the chain position `(seq, hash)` of `replica`'s log at time `ts`.
    pub fn sign(
        &self,
        replica: &str,
        seq: u64,
        hash: &str,
        ts: &str,
    ) -> Result<Checkpoint, String> {
        let mut cp = Checkpoint {
            replica: replica.to_owned(),
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            key: self.fingerprint(),
            sig: String::new(),
        };
        let sig = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, cp.message().as_bytes())
            .map_err(|e| format!("cannot sign a checkpoint: {e}"))?;
        cp.sig = sig
            .to_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode a checkpoint signature: {e}"))?;
        Ok(cp)
    }
}

/// One signed checkpoint: the log of `replica` had `seq` records, the last with `hash`,
/// at `ts`. The same object is the `checkpoint` field of an `audit.checkpoint` record and
/// one line of `<log>.checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub replica: String,
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    /// Fingerprint (`SHA256:…`) of the key that signed.
    pub key: String,
    /// Armored OpenSSH signature (`-----BEGIN SSH SIGNATURE-----`) of [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    /// What is signed: the canonical JSON of `hash`, `replica`, `seq` and `ts`.
    pub fn message(&self) -> String {
        let mut m = Map::new();
        m.insert("hash".into(), Value::from(self.hash.clone()));
        m.insert("replica".into(), Value::from(self.replica.clone()));
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("ts".into(), Value::from(self.ts.clone()));
        record::canonical(&Value::Object(m))
    }

    /// Checks the signature against one of `keys` (chosen by the `key` fingerprint).
    pub fn verify(&self, keys: &[PublicKey]) -> Result<(), String> {
        let Some(key) = keys
            .iter()
            .find(|k| k.fingerprint(HashAlg::Sha256).to_string() == self.key)
        else {
            let given: Vec<String> = keys
                .iter()
                .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
                .collect();
            return Err(format!(
                "signed by {}, not by the key given ({})",
                self.key,
                given.join(", ")
            ));
        };
        let sig = SshSig::from_pem(self.sig.as_bytes())
            .map_err(|e| format!("the signature is not an SSH signature: {e}"))?;
        key.verify(NAMESPACE, self.message().as_bytes(), &sig)
            .map_err(|_| "the signature does not verify: the checkpoint was altered".to_string())
    }

    /// The checkpoint as one JSON line (canonical form, no newline).
    pub fn to_line(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        record::canonical(&value)
    }
}

/// `<log>.checkpoints`, appended one line per checkpoint and flushed to disk.
struct CheckpointFile {
    path: PathBuf,
    file: File,
}

impl CheckpointFile {
    fn open(path: &Path) -> std::io::Result<CheckpointFile> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(CheckpointFile {
            path: path.to_owned(),
            file,
        })
    }

    fn append(&mut self, cp: &Checkpoint) -> std::io::Result<()> {
        let mut line = cp.to_line();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()
    }
}

/// Writes checkpoints of one log: into the log, into `<log>.checkpoints`, and to the
/// service log (target `drawbridge::audit::checkpoint`) for shipping off the host.
#[derive(Clone)]
pub struct Checkpointer {
    audit: Audit,
    key: Arc<CheckpointKey>,
    file: Arc<Mutex<CheckpointFile>>,
    /// The last checkpoint written (its record is `seq + 1`).
    last: Arc<Mutex<Option<Checkpoint>>>,
}

impl Checkpointer {
    /// Checkpoints for `audit`, whose file is `log`.
    pub fn new(audit: Audit, key: CheckpointKey, log: &Path) -> std::io::Result<Checkpointer> {
        let path = checkpoints_path(log);
        let file = CheckpointFile::open(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        Ok(Checkpointer {
            audit,
            key: Arc::new(key),
            file: Arc::new(Mutex::new(file)),
            last: Arc::new(Mutex::new(None)),
        })
    }

    /// Signs the log's head now, writes the `audit.checkpoint` record, then appends the
    /// checkpoint to `<log>.checkpoints` (in that order: a checkpoint in the file always
    /// has its record in the log).
    pub async fn write(&self) -> Result<Checkpoint, AuditError> {
        let cp = self.audit.checkpoint(Arc::clone(&self.key)).await?;
        let file = Arc::clone(&self.file);
        let written = cp.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let mut f = file
                .lock()
                .map_err(|_| std::io::Error::other("checkpoint file lock poisoned"))?;
            f.append(&written)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.path.display())))
        })
        .await
        .map_err(|e| AuditError::Unavailable(format!("checkpoint task failed: {e}")))?;
        appended
            .map_err(|e| AuditError::Unavailable(format!("cannot append a checkpoint: {e}")))?;
        tracing::info!(
            target: "drawbridge::audit::checkpoint",
            replica = %cp.replica,
            seq = cp.seq,
            hash = %cp.hash,
            checkpoint = %cp.to_line(),
            "audit checkpoint"
        );
        if let Ok(mut last) = self.last.lock() {
            *last = Some(cp.clone());
        }
        Ok(cp)
    }

    /// [`Checkpointer::write`], unless nothing but the last checkpoint's own record was
    /// written since it (an idle service does not fill its log with checkpoints).
    pub async fn write_if_new(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (head, _) = self.audit.head();
        let idle = self
            .last
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|c| c.seq.saturating_add(1) == head))
            .unwrap_or(false);
        if idle {
            return Ok(None);
        }
        self.write().await.map(Some)
    }
}
