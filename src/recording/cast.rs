//! [`Recorder`]: one session's asciicast v2 file, written as the session goes.
//!
//! The file is a header line (`{"version": 2, "width", "height", "timestamp", ...}`) and
//! one JSON array per event: `[seconds, "o", text]` for output, `"i"` for keystrokes (only
//! with `recording.input`), `"r"` for a window resize (`"80x24"`), `"m"` for a marker (the
//! exec command, SFTP operations, the exit status, a cut). Every asciicast v2 player reads
//! it; players skip the kinds they do not know.
//!
//! Output written within [`COALESCE`] of the start of the pending output event joins it
//! (bulk output costs a few bytes of JSON per [`MAX_EVENT_TEXT`] of text; keystroke echo,
//! further apart, keeps its own timing). Events are kept in memory until the last write
//! to the file is [`FLUSH_EVERY`] old, or [`FLUSH_BYTES`] are waiting: a crash of the
//! process loses at most about a second. The file is written with plain `std::fs` calls
//! from the caller's thread: a write to a local disk's page cache takes microseconds, and
//! the folder must be local (a hung network file system would stall the caller).
//! [`Recorder::finish`] syncs the file to disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::text::{Utf8Carry, cut, escape_controls, json_string_into};
use super::{RecordingError, SessionId, recording_path};

/// Output within this long of the pending output event's start joins it.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Text in one output event at most (bytes, before JSON escaping).
pub const MAX_EVENT_TEXT: usize = 32 * 1024;
/// Events reach the file at least this often while the session writes anything, or on
/// [`Recorder::tick`].
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Encoded events waiting in memory at most before they are written.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// A marker's text at most (bytes); longer ones are cut.
pub const MAX_MARKER: usize = 1024;
/// Buffers above this capacity are shrunk after a flush, so an idle recorder is small.
const IDLE_CAPACITY: usize = 4 * 1024;

/// What the header says about the session.
#[derive(Debug, Clone, Default)]
pub struct CastMeta {
    /// The terminal's size at the start (80×24 when the session has no pty).
    pub width: u16,
    pub height: u16,
    /// e.g. `alice@db-1 as root` (cut to 256 bytes).
    pub title: String,
    /// Environment worth keeping (`TERM`, `SHELL`): at most 16 entries of 256 bytes each.
    pub env: Vec<(String, String)>,
    /// The command of an exec (cut to [`MAX_MARKER`] bytes).
    pub command: Option<String>,
    /// Record keystrokes (`recording.input`); off by default.
    pub input: bool,
}

/// A finished recording: what `session.ended` carries and `audit verify` re-hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSummary {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// The pending output event: start time (seconds since the start) and its text.
#[derive(Debug)]
struct Pending {
    at: f64,
    text: String,
}

/// One session's recording. Every method returns an error once the file cannot be
/// written; the caller then cuts the session.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    size: u64,
    start: Instant,
    input: bool,
    out_text: Utf8Carry,
    in_text: Utf8Carry,
    pending: Option<Pending>,
    /// Encoded events not yet written to the file.
    buf: Vec<u8>,
    last_flush: Instant,
    /// Set by the first failed write.
    failed: Option<String>,
}

impl Recorder {
    /// Creates `dir/ID.cast` (mode 0600, never over an existing file or a link; `dir`
    /// created 0700 when missing) and writes its header.
    pub fn create(dir: &Path, id: &SessionId, meta: CastMeta) -> Result<Recorder, RecordingError> {
        create_dir(dir)?;
        let path = recording_path(dir, id);
        let file = open_new(&path).map_err(|source| RecordingError::Create {
            path: path.clone(),
            source,
        })?;
        let now = Instant::now();
        let mut r = Recorder {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
            start: now,
            input: meta.input,
            out_text: Utf8Carry::default(),
            in_text: Utf8Carry::default(),
            pending: None,
            buf: Vec::new(),
            last_flush: now,
            failed: None,
        };
        let header = header(&meta, SystemTime::now());
        r.buf.extend_from_slice(header.as_bytes());
        r.buf.push(b'\n');
        if let Some(c) = &meta.command {
            r.event(
                0.0,
                "m",
                &format!("exec: {}", escape_controls(cut(c, MAX_MARKER))),
            );
        }
        if let Err(e) = r.write_out() {
            // Not even the header fits (a full disk): leave no empty recording behind.
            let _ = std::fs::remove_file(&r.path);
            return Err(e);
        }
        Ok(r)
    }

    /// The recording's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether keystrokes are recorded.
    pub fn records_input(&self) -> bool {
        self.input
    }

    /// Terminal output (the target's stdout and stderr, as the user saw them).
    pub fn output(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.check()?;
        let at = self.now();
        // A large write becomes several events of at most MAX_EVENT_TEXT bytes (the
        // decoder carries a character split between them).
        for piece in bytes.chunks(MAX_EVENT_TEXT) {
            let joins = self.pending.as_ref().is_some_and(|p| {
                at - p.at < COALESCE.as_secs_f64() && p.text.len() < MAX_EVENT_TEXT
            });
            if !joins {
                self.emit_pending();
                self.pending = Some(Pending {
                    at,
                    text: String::new(),
                });
            }
            if let Some(p) = self.pending.as_mut() {
                self.out_text.decode_into(piece, &mut p.text);
            }
            if self.buf.len() >= FLUSH_BYTES {
                self.write_out()?;
            }
        }
        self.maybe_flush()
    }

    /// Keystrokes: written only when input recording is on.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.check()?;
        if !self.input {
            return Ok(());
        }
        let at = self.now();
        self.emit_pending();
        let mut text = String::new();
        self.in_text.decode_into(bytes, &mut text);
        if !text.is_empty() {
            self.event(at, "i", &text);
        }
        self.maybe_flush()
    }

    /// The terminal was resized.
    pub fn resize(&mut self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        self.check()?;
        let at = self.now();
        self.emit_pending();
        self.event(at, "r", &format!("{cols}x{rows}"));
        self.maybe_flush()
    }

    /// A marker (asciicast `"m"`): the exec command, an SFTP operation, a cut. Cut to
    /// [`MAX_MARKER`] bytes, control characters escaped. Written to the file at once.
    pub fn marker(&mut self, label: &str) -> Result<(), RecordingError> {
        self.check()?;
        let at = self.now();
        self.emit_pending();
        self.event(at, "m", &escape_controls(cut(label, MAX_MARKER)));
        self.write_out()
    }

    /// Writes what waits when the last write is [`FLUSH_EVERY`] old: call it from a timer
    /// (about every second) so that output followed by silence reaches the file.
    pub fn tick(&mut self) -> Result<(), RecordingError> {
        self.check()?;
        if self.last_flush.elapsed() >= FLUSH_EVERY
            && (self.pending.is_some() || !self.buf.is_empty())
        {
            self.emit_pending();
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes everything now.
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.check()?;
        self.emit_pending();
        self.write_out()
    }

    /// Ends the recording: the exit status (when the session had one) as a marker, every
    /// event written, the file synced. Returns its size and SHA-256.
    pub fn finish(mut self, exit: Option<i32>) -> Result<RecordingSummary, RecordingError> {
        self.check()?;
        let at = self.now();
        // Bytes of an incomplete UTF-8 sequence at the very end.
        if !self.out_text.is_empty() {
            let mut tail = String::new();
            self.out_text.finish_into(&mut tail);
            match self.pending.as_mut() {
                Some(p) => p.text.push_str(&tail),
                None => {
                    self.pending = Some(Pending { at, text: tail });
                }
            }
        }
        self.emit_pending();
        if let Some(code) = exit {
            self.event(at, "m", &format!("exit status {code}"));
        }
        self.write_out()?;
        self.file
            .sync_all()
            .map_err(|source| RecordingError::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(RecordingSummary {
            path: self.path.clone(),
            size: self.size,
            sha256: hex::encode(self.hasher.clone().finalize()),
        })
    }

    /// Memory held by this recorder's buffers (for tests and metrics).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.pending.as_ref().map_or(0, |p| p.text.capacity())
    }

    /// Makes every later write fail as on a full disk (for tests of the callers).
    #[cfg(test)]
    pub(crate) fn break_for_test(&mut self) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
            self.file = f;
        }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn check(&self) -> Result<(), RecordingError> {
        match &self.failed {
            Some(what) => Err(RecordingError::Failed {
                path: self.path.clone(),
                what: what.clone(),
            }),
            None => Ok(()),
        }
    }

    fn emit_pending(&mut self) {
        if let Some(p) = self.pending.take()
            && !p.text.is_empty()
        {
            self.event(p.at, "o", &p.text);
        }
    }

    /// Appends one event line to the buffer.
    fn event(&mut self, at: f64, kind: &str, text: &str) {
        let _ = write!(self.buf, "[{at:.6}, \"{kind}\", ");
        json_string_into(&mut self.buf, text);
        self.buf.extend_from_slice(b"]\n");
    }

    fn maybe_flush(&mut self) -> Result<(), RecordingError> {
        if self.buf.len() >= FLUSH_BYTES || self.last_flush.elapsed() >= FLUSH_EVERY {
            if self.last_flush.elapsed() >= FLUSH_EVERY {
                self.emit_pending();
            }
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the encoded events to the file (and the hash); any error poisons the
    /// recorder.
    fn write_out(&mut self) -> Result<(), RecordingError> {
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(source) = self.file.write_all(&self.buf) {
            self.failed = Some(source.to_string());
            return Err(RecordingError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.hasher.update(&self.buf);
        self.size += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > IDLE_CAPACITY {
            self.buf.shrink_to(IDLE_CAPACITY);
        }
        Ok(())
    }
}

/// The asciicast v2 header line.
fn header(meta: &CastMeta, now: SystemTime) -> String {
    let mut h = serde_json::Map::new();
    h.insert("version".into(), 2.into());
    h.insert("width".into(), meta.width.max(1).into());
    h.insert("height".into(), meta.height.max(1).into());
    h.insert("timestamp".into(), crate::util::unix_secs(now).into());
    if !meta.title.is_empty() {
        h.insert(
            "title".into(),
            escape_controls(cut(&meta.title, 256)).into(),
        );
    }
    if !meta.env.is_empty() {
        let env: serde_json::Map<String, serde_json::Value> = meta
            .env
            .iter()
            .take(16)
            .map(|(k, v)| (cut(k, 256).to_string(), cut(v, 256).into()))
            .collect();
        h.insert("env".into(), env.into());
    }
    if let Some(c) = &meta.command {
        h.insert("command".into(), cut(c, MAX_MARKER).into());
    }
    serde_json::Value::Object(h).to_string()
}

/// Creates `dir` (and its parents) 0700 when missing; refuses a path that is not a folder.
fn create_dir(dir: &Path) -> Result<(), RecordingError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| RecordingError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a folder",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Opens a new file 0600: never an existing file, never through a symbolic link.
fn open_new(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
#[path = "cast_tests.rs"]
mod tests;
