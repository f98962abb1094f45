//! `audit verify`'s second half: every recording a `session.ended` record names is
//! re-hashed and compared with the size and SHA-256 written there, so a recording edited,
//! cut or removed after its session is named.
//!
//! The file is found by the record's session id in the recordings folder (never by the
//! path written in the record: a session id cannot name another file).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::sessions::sessions_in_log;
use super::{SessionId, recording_path};

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordingsCheck {
    /// Recordings re-hashed that match their record.
    pub matched: usize,
    /// One line per recording that does not: `PATH: what` (with the log line).
    pub problems: Vec<String>,
    /// Sessions started and not ended in the log (live, or the service stopped first):
    /// there is no hash to check them against.
    pub unfinished: Vec<String>,
}

/// Re-hashes the recordings in `dir` that the log at `log` names.
pub fn check_recordings(log: &Path, dir: &Path) -> std::io::Result<RecordingsCheck> {
    let sessions = sessions_in_log(std::fs::File::open(log)?)?;
    let mut out = RecordingsCheck::default();
    for s in sessions.values() {
        let Ok(id) = SessionId::parse(&s.id) else {
            continue;
        };
        let path = recording_path(dir, &id);
        let Some(ended) = &s.ended else {
            out.unfinished.push(s.id.clone());
            continue;
        };
        let (Some(size), Some(sha)) = (ended.size, ended.sha256.as_deref()) else {
            // The session could not finish its recording (`end` says why): nothing to check.
            continue;
        };
        let at = format!("session.ended at line {} of {}", ended.line, log.display());
        match hash_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.problems.push(format!(
                "{}: recording removed (named by {at})",
                path.display()
            )),
            Err(e) => out.problems.push(format!(
                "{}: cannot read the recording: {e}",
                path.display()
            )),
            Ok((now_size, now_sha)) => {
                if now_size == size && now_sha == sha {
                    out.matched += 1;
                } else if now_size < size {
                    out.problems.push(format!(
                        "{}: recording cut: {now_size} bytes of the {size} in {at}",
                        path.display()
                    ));
                } else {
                    out.problems.push(format!(
                        "{}: recording edited: SHA-256 {now_sha} ({now_size} bytes), {at} says {sha} ({size} bytes)",
                        path.display()
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Size and SHA-256 (hex) of a file, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// The recordings folder `audit verify` uses: `--recordings DIR`, else the config's.
pub fn recordings_dir(flag: Option<PathBuf>, config: &crate::config::Config) -> PathBuf {
    flag.unwrap_or_else(|| config.recording_dir())
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
