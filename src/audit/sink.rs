//! Where records go: a trait, the append-only file, and an in-memory sink for tests.
//!
//! The PostgreSQL sink (`state::audit_sink::PgSink`, `[state] postgres`) sits behind
//! [`AuditSink`] too, without touching the callers of [`super::Audit`]: it appends a batch
//! in one transaction and reports the last durable `(seq, hash)` of this replica's chain.
//! All three pass [`contract`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::record::parse_line;

/// Durable storage for one replica's chain. Called from the audit writer thread only.
pub trait AuditSink: Send {
    /// The last durable record's `(seq, hash)`, or `None` for an empty chain.
    fn last(&mut self) -> io::Result<Option<(u64, String)>>;

    /// Appends complete lines (each ending in `\n`) and returns once they are durable.
    /// On error none of them may remain part of the chain: the sink rolls back what it
    /// wrote (a file truncates back to its last good length).
    fn append(&mut self, lines: &[String]) -> io::Result<()>;
}

/// What [`FileSink::open`] repaired: a record cut off by a crash mid-write (never
/// acknowledged to its caller, so nothing acted on it) that was truncated away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes removed from the end of the file.
    pub dropped_bytes: u64,
    /// The start of what was removed (at most 256 bytes, lossy UTF-8), kept for the record.
    pub dropped_prefix: String,
}

/// The append-only JSON-lines file (mode 0600 when created).
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Length of the durable, complete part of the file.
    len: u64,
    /// A failed write could not be rolled back yet: roll back before the next append.
    dirty: bool,
}

impl FileSink {
    /// Opens or creates the file (and its parent folders). A partial last line, left by a
    /// crash in the middle of a write, is truncated away and reported.
    pub fn open(path: &Path) -> io::Result<(FileSink, Option<Recovery>)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        lock_exclusive(&file, path)?;
        let len = file.metadata()?.len();
        let mut sink = FileSink {
            path: path.to_owned(),
            file,
            len,
            dirty: false,
        };
        let recovery = sink.drop_partial_line()?;
        Ok((sink, recovery))
    }

    fn drop_partial_line(&mut self) -> io::Result<Option<Recovery>> {
        if self.len == 0 {
            return Ok(None);
        }
        let (tail, start) = self.tail_from_newlines(1)?;
        if tail.last() == Some(&b'\n') {
            return Ok(None);
        }
        // Everything after the last newline is a partial record.
        let cut = tail
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| start + i as u64 + 1)
            .unwrap_or(0);
        let dropped = &tail[(cut - start) as usize..];
        let prefix = String::from_utf8_lossy(&dropped[..dropped.len().min(256)]).into_owned();
        let dropped_bytes = self.len - cut;
        self.file.set_len(cut)?;
        self.file.sync_data()?;
        self.len = cut;
        Ok(Some(Recovery {
            dropped_bytes,
            dropped_prefix: prefix,
        }))
    }

    /// Reads backwards from the end until the buffer holds `want` newlines before the
    /// final byte (or the whole file). Returns the bytes and their offset in the file.
    fn tail_from_newlines(&self, want: usize) -> io::Result<(Vec<u8>, u64)> {
        const CHUNK: u64 = 64 * 1024;
        let mut start = self.len;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let newlines = buf
                .iter()
                .take(buf.len().saturating_sub(1))
                .filter(|&&b| b == b'\n')
                .count();
            if newlines >= want || start == 0 {
                return Ok((buf, start));
            }
            let from = start.saturating_sub(CHUNK);
            let mut chunk = vec![0u8; (start - from) as usize];
            self.file.read_exact_at(&mut chunk, from)?;
            chunk.extend_from_slice(&buf);
            buf = chunk;
            start = from;
        }
    }

    fn invalid(&self, what: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {what}; run `drawbridge audit verify {}`",
                self.path.display(),
                self.path.display()
            ),
        )
    }
}

/// One writer per file: two processes appending to one chain would fork it. A handle of
/// this process that is just closing gets a moment to let go.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if waited < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked by another process: each replica needs its own audit file",
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

impl AuditSink for FileSink {
    fn last(&mut self) -> io::Result<Option<(u64, String)>> {
        if self.len == 0 {
            return Ok(None);
        }
        let (tail, _) = self.tail_from_newlines(1)?;
        let Some((&b'\n', body)) = tail.split_last() else {
            return Err(self.invalid("the file does not end with a complete record".into()));
        };
        let line = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => &body[i + 1..],
            None => body,
        };
        match parse_line(line) {
            Ok(rec) => Ok(Some((rec.seq, rec.hash))),
            Err(e) => Err(self.invalid(format!("the last record is invalid: {e}"))),
        }
    }

    fn append(&mut self, lines: &[String]) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            self.file.sync_data()?;
            self.dirty = false;
        }
        let total: usize = lines.iter().map(String::len).sum();
        let mut buf = Vec::with_capacity(total);
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Whatever reached the file is not part of the chain: cut it off now, or
                // before the next append if even that fails.
                self.dirty = true;
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_ok()
                {
                    self.dirty = false;
                }
                Err(e)
            }
        }
    }
}

#[derive(Default)]
struct MemoryState {
    lines: Vec<String>,
    failing: bool,
    delay: Duration,
}

/// An in-memory sink for tests: holds the lines, and fails or stalls on demand (to prove
/// that callers fail closed). Clones share the same state.
#[derive(Clone, Default)]
pub struct MemorySink {
    state: Arc<Mutex<MemoryState>>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// From now on every append fails (`true`) or succeeds again (`false`).
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.failing = failing;
        }
    }

    /// Every append first sleeps this long (a stalled disk).
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.delay = delay;
        }
    }

    /// The durable lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.lines.clone())
            .unwrap_or_default()
    }

    /// All lines as one text, as a file would hold them.
    pub fn text(&self) -> String {
        self.lines().concat()
    }
}

impl AuditSink for MemorySink {
    fn last(&mut self) -> io::Result<Option<(u64, String)>> {
        let lines = self.lines();
        match lines.last() {
            None => Ok(None),
            Some(line) => parse_line(line.trim_end_matches('\n').as_bytes())
                .map(|r| Some((r.seq, r.hash)))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    fn append(&mut self, lines: &[String]) -> io::Result<()> {
        let delay = self.state.lock().map(|s| s.delay).unwrap_or_default();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self
            .state
            .lock()
            .map_err(|_| io::Error::other("memory sink poisoned"))?;
        if s.failing {
            return Err(io::Error::other("injected write failure"));
        }
        s.lines.extend(lines.iter().cloned());
        Ok(())
    }
}

/// The behaviour every sink must have: run on [`MemorySink`] and [`FileSink`] by the unit
/// tests and on the PostgreSQL sink by `tests/it/state.rs`. `sink` starts empty.
#[doc(hidden)]
pub mod contract {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::AuditSink;
    use crate::audit::record::{GENESIS, build_line};

    fn lines(from: u64, n: u64, mut prev: String) -> (Vec<String>, String) {
        let mut out = Vec::new();
        for seq in from..from + n {
            let mut fields = serde_json::Map::new();
            fields.insert("reason".into(), format!("contract {seq}").into());
            let (line, hash) = build_line(
                seq,
                "2026-12-01T00:00:00.000Z",
                "contract",
                "audit.resumed",
                &fields,
                &prev,
            );
            out.push(line);
            prev = hash;
        }
        (out, prev)
    }

    /// An empty chain has no head; a batch is durable as a whole and the head is its last
    /// record; the next batch continues it.
    pub fn all(sink: &mut dyn AuditSink) {
        assert_eq!(sink.last().unwrap(), None);
        let (batch, head) = lines(1, 3, GENESIS.to_string());
        assert!(batch.iter().all(|l| l.ends_with('\n')));
        sink.append(&batch).unwrap();
        assert_eq!(sink.last().unwrap(), Some((3, head.clone())));
        let (one, head) = lines(4, 1, head);
        sink.append(&one).unwrap();
        assert_eq!(sink.last().unwrap(), Some((4, head.clone())));
        let (many, head) = lines(5, 500, head);
        sink.append(&many).unwrap();
        assert_eq!(sink.last().unwrap(), Some((504, head)));
    }
}

#[cfg(test)]
mod contract_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_memory_sink_keeps_the_contract() {
        super::contract::all(&mut super::MemorySink::new());
    }

    #[test]
    fn the_file_sink_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, recovery) = super::FileSink::open(&dir.path().join("audit.log")).unwrap();
        assert!(recovery.is_none());
        super::contract::all(&mut sink);
    }
}
