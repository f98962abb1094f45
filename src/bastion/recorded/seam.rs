//! What the recorded path takes from the recording module and the policy, in one place:
//! which sessions are recorded, the session id, the recorder. Everything else in
//! `recorded` goes through these few names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::policy::{Held, Host, Policy};

/// Whether a session to `host` is recorded for a certificate whose principals `grants`
/// grant it: the host says `record = true`, or one of those principals does.
pub fn records(policy: &Policy, host: &Host, grants: &[Held]) -> bool {
    let names: Vec<&str> = grants.iter().map(|g| g.principal.as_str()).collect();
    policy.records(&host.name, &names)
}

/// The policy rule that asks for the recording (`hosts.NAME.record`, ...).
pub fn recorded_rule(policy: &Policy, host: &str, principals: &[String]) -> String {
    let names: Vec<&str> = principals.iter().map(String::as_str).collect();
    policy
        .recorded_by(host, &names)
        .map(|r| r.rule())
        .unwrap_or_else(|| format!("hosts.{host}.record"))
}

/// A recorded session's id: 16 random hex digits, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    pub fn new() -> Result<SessionId, String> {
        let n = getrandom::u64().map_err(|e| format!("no randomness for a session id: {e}"))?;
        Ok(SessionId(format!("{n:016x}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the recording's header says about the session.
#[derive(Debug, Clone, Default)]
pub struct CastMeta {
    pub key_id: String,
    pub login: String,
    pub host: String,
    pub cols: u32,
    pub rows: u32,
}

/// The recording's file, size and SHA-256 once finished.
#[derive(Debug, Clone)]
pub struct RecordingSummary {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// One session's asciicast v2 file, written and flushed event by event.
pub struct Recorder {
    file: Mutex<Option<std::fs::File>>,
    path: PathBuf,
    start: Instant,
    hash: Mutex<Sha256>,
    size: Mutex<u64>,
}

impl Recorder {
    /// Creates `dir/ID.cast` (new, 0600) and writes the header.
    pub fn create(dir: &Path, id: &SessionId, meta: &CastMeta) -> std::io::Result<Recorder> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("{id}.cast"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let r = Recorder {
            file: Mutex::new(Some(file)),
            path,
            start: Instant::now(),
            hash: Mutex::new(Sha256::new()),
            size: Mutex::new(0),
        };
        let header = serde_json::json!({
            "version": 2,
            "width": meta.cols.max(1),
            "height": meta.rows.max(1),
            "timestamp": crate::util::unix_secs(std::time::SystemTime::now()),
            "title": format!("{}@{} ({})", meta.login, meta.host, meta.key_id),
        });
        r.line(&header.to_string())?;
        Ok(r)
    }

    fn line(&self, text: &str) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = f.as_mut() else {
            return Err(std::io::Error::other("the recording is finished"));
        };
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(b'\n');
        file.write_all(&bytes)?;
        self.hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&bytes);
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) += bytes.len() as u64;
        Ok(())
    }

    fn event(&self, code: &str, data: &str) -> std::io::Result<()> {
        let t = self.start.elapsed().as_secs_f64();
        self.line(&serde_json::json!([t, code, data]).to_string())
    }

    pub fn output(&self, data: &[u8]) -> std::io::Result<()> {
        self.event("o", &String::from_utf8_lossy(data))
    }
    pub fn input(&self, data: &[u8]) -> std::io::Result<()> {
        self.event("i", &String::from_utf8_lossy(data))
    }
    pub fn resize(&self, cols: u32, rows: u32) -> std::io::Result<()> {
        self.event("r", &format!("{cols}x{rows}"))
    }
    pub fn marker(&self, label: &str) -> std::io::Result<()> {
        self.event("m", label)
    }
    /// Writes the exit status as a marker and closes the file.
    pub fn finish(&self, exit: Option<u32>) -> std::io::Result<RecordingSummary> {
        if let Some(code) = exit {
            self.marker(&format!("exit {code}"))?;
        }
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = file {
            f.sync_all()?;
        }
        let sha256 = hex::encode(
            self.hash
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .finalize(),
        );
        Ok(RecordingSummary {
            path: self.path.clone(),
            size: *self.size.lock().unwrap_or_else(|e| e.into_inner()),
            sha256,
        })
    }
}

/// `recording.dir`, resolved against the configuration file's folder.
pub fn recording_dir(config: &crate::config::Config) -> PathBuf {
    config.recording_dir()
}

/// `recording.input`.
pub fn record_input(config: &crate::config::Config) -> bool {
    config.recording.input
}
