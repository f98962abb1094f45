//! The audit log: one JSON object per line, hash-chained (`prev`, `hash`), appended and
//! flushed to disk before the action it records takes effect.
//!
//! # How a record is written
//!
//! [`Audit::record`] queues the event for one writer thread and waits. The writer takes
//! everything queued at that moment (group commit), gives each event the next `seq`, the
//! current time and the previous hash, appends all the lines with one write, calls
//! `fsync` (`sync_data`) once, and only then answers every caller. So a caller that got
//! `Ok` knows its record is on disk, and thousands of records per second cost a few
//! hundred fsyncs.
//!
//! # Failing closed (docs/threats.md F6)
//!
//! If the write or the fsync fails, every caller of that batch gets
//! [`AuditError::Unavailable`] and [`Audit::healthy`] turns false. The failed lines are not
//! part of the chain (the file is truncated back to its last good length) and the next
//! successful batch continues from the last durable hash; `healthy` then turns true again.
//! A caller never waits longer than [`Audit::timeout`] (1 s by default): a stalled disk
//! also yields `Unavailable` (and `healthy` false). A record whose caller has already given
//! up is not written, so the log never claims an action that was refused for lack of a
//! record. (The reverse can happen only in one narrow case: a batch that became durable
//! just after its caller's timeout expired.)
//!
//! # Opening an existing file
//!
//! [`Audit::open`] continues the chain from the last record. If the file ends in a partial
//! line (a crash in the middle of a write: that record was never acknowledged, so nothing
//! acted on it), the partial line is truncated away and an `audit.recovered` record noting
//! the number of bytes dropped (and their first 256 bytes) is written first. If the last
//! complete record does not parse or its hash does not match, `open` refuses with a message
//! telling the operator to run `drawbridge audit verify`.
//!
//! The file is locked (`flock`, exclusive) while open: each replica writes its own file,
//! and a second process opening the same file is refused.
//!
//! `record` must run inside a tokio runtime with its timer enabled (it bounds the wait).
//!
//! The record format and the verification rule are in [`record`]; signed checkpoints,
//! which anchor the end of the log, in [`checkpoint`] (writing) and [`anchor`] (checking);
//! `audit search` in [`search`].

pub mod anchor;
pub mod budget;
pub mod checkpoint;
pub mod cmd;
pub mod event;
pub mod record;
pub mod refusal;
pub mod search;
pub mod sink;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub use checkpoint::{Checkpoint, CheckpointKey, Checkpointer};
pub use event::{
    AuditEvent, AuthFailed, Conn, Decided, ForwardBase, ForwardRefused, Grant, PeerText,
};
pub use event::{SessionBase, SessionEnded, SessionRefused, SessionStarted};
pub use record::{GENESIS, VerifyFailure, VerifySummary, verify};
pub use refusal::RefusalCode;
pub use sink::{AuditSink, FileSink, MemorySink, Recovery};

/// Why a record could not be written. Callers fail closed on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written: {0}")]
    Unavailable(String),
}

/// One record's kind and fields, as the writer takes them. Built from an [`AuditEvent`]
/// (the schema), the only thing [`Audit::record`] takes; never put a secret in a field.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) kind: String,
    pub(crate) fields: Map<String, Value>,
}

impl From<AuditEvent> for Event {
    fn from(e: AuditEvent) -> Event {
        let (kind, fields) = e.into_fields();
        Event { kind, fields }
    }
}

#[cfg(test)]
impl Event {
    /// A record of any kind with any fields: for tests of the log itself (the product
    /// writes [`AuditEvent`]s only).
    pub fn new(kind: &str) -> Event {
        Event {
            kind: kind.to_string(),
            fields: Map::new(),
        }
    }

    /// Adds a field (later values replace earlier ones of the same name).
    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Event {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.fields.insert(key.to_string(), v);
        self
    }
}

/// Queued events at most; past that `record` fails at once (the disk cannot keep up).
const QUEUE: usize = 65_536;
/// Events written with one fsync at most.
const MAX_BATCH: usize = 4_096;
/// Default bound on a caller's wait.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// While unhealthy, [`Audit::probe`] tries a write at most this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

struct Request {
    event: Event,
    /// A checkpoint: the writer signs the head it appends this record after, and the
    /// record carries the signed checkpoint.
    sign: Option<Arc<CheckpointKey>>,
    ack: oneshot::Sender<Result<Option<Checkpoint>, AuditError>>,
}

struct Shared {
    replica: String,
    healthy: AtomicBool,
    /// When [`Audit::probe`] last tried a write.
    last_probe: Mutex<Option<Instant>>,
    /// Last durable `(seq, hash)`.
    head: Mutex<(u64, String)>,
}

/// A cheap, cloneable handle on the audit log. The writer thread ends when the last
/// handle is dropped; every acknowledged record is already on disk, so there is nothing
/// to flush at shutdown.
#[derive(Clone)]
pub struct Audit {
    tx: SyncSender<Request>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Audit {
    /// Opens (or creates, with its parent folders, mode 0600) the log at `path`,
    /// continuing its chain. See the module docs for a partial last line.
    pub fn open(path: &Path, replica: &str) -> Result<Audit, AuditError> {
        let fail = |e: std::io::Error| {
            AuditError::Unavailable(format!("cannot open {}: {e}", path.display()))
        };
        let (mut sink, recovery) = FileSink::open(path).map_err(fail)?;
        let mut head = sink
            .last()
            .map_err(|e| AuditError::Unavailable(e.to_string()))?;
        if let Some(r) = recovery {
            let (seq, prev) = next_of(&head);
            let event = Event::from(AuditEvent::AuditRecovered {
                reason: "partial record at the end of the file truncated".into(),
                dropped_bytes: r.dropped_bytes,
                dropped_prefix: r.dropped_prefix,
            });
            let (line, hash) =
                record::build_line(seq, &now_ts(), replica, &event.kind, &event.fields, &prev);
            sink.append(&[line]).map_err(fail)?;
            head = Some((seq, hash));
        }
        Ok(Self::start(Box::new(sink), replica, head))
    }

    /// Runs the log on any sink (`state::audit_sink::PgSink`, [`MemorySink`] in tests).
    pub fn with_sink(mut sink: Box<dyn AuditSink>, replica: &str) -> Result<Audit, AuditError> {
        let head = sink
            .last()
            .map_err(|e| AuditError::Unavailable(e.to_string()))?;
        Ok(Self::start(sink, replica, head))
    }

    fn start(sink: Box<dyn AuditSink>, replica: &str, head: Option<(u64, String)>) -> Audit {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            replica: replica.to_owned(),
            healthy: AtomicBool::new(true),
            last_probe: Mutex::new(None),
            head: Mutex::new(head.unwrap_or_else(|| (0, GENESIS.to_string()))),
        });
        let writer_shared = Arc::clone(&shared);
        // A thread of its own: fsync blocks, and must never stall the async runtime.
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(sink, rx, writer_shared));
        if let Err(e) = spawned {
            // Without a writer every record fails (the channel is closed): fail closed.
            tracing::error!(error = %e, "cannot start the audit writer thread");
            shared.healthy.store(false, Ordering::SeqCst);
        }
        Audit {
            tx,
            shared,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same log with another bound on each caller's wait (default 1 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Audit {
        self.timeout = timeout;
        self
    }

    /// The bound on each caller's wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The replica name written in every record.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// The last durable record's `(seq, hash)` (`(0, GENESIS)` for an empty log). Keep it
    /// elsewhere to detect records deleted from the end of the file.
    pub fn head(&self) -> (u64, String) {
        self.shared
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| (0, String::new()))
    }

    /// Appends `event` and returns once it is durably on disk (fsync, batched across
    /// concurrent callers). An error means nothing may proceed on its behalf.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.submit(event.into(), None).await.map(|_| ())
    }

    /// [`record`](Self::record) of any kind and fields, for tests of the log itself.
    #[cfg(test)]
    pub(crate) async fn record_raw(&self, event: Event) -> Result<(), AuditError> {
        self.submit(event, None).await.map(|_| ())
    }

    /// Writes an `audit.checkpoint` record carrying `key`'s signature over the chain's
    /// head just before it (so the record's `prev` is the signed hash), and returns the
    /// checkpoint once the record is on disk. See [`checkpoint`].
    pub async fn checkpoint(&self, key: Arc<CheckpointKey>) -> Result<Checkpoint, AuditError> {
        match self
            .submit(AuditEvent::AuditCheckpoint {}.into(), Some(key))
            .await?
        {
            Some(cp) => Ok(cp),
            None => Err(AuditError::Unavailable(
                "the checkpoint was not signed".into(),
            )),
        }
    }

    async fn submit(
        &self,
        event: Event,
        sign: Option<Arc<CheckpointKey>>,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let (ack, done) = oneshot::channel();
        match self.tx.try_send(Request { event, sign, ack }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.healthy.store(false, Ordering::SeqCst);
                return Err(AuditError::Unavailable(
                    "too many records waiting for the disk".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.healthy.store(false, Ordering::SeqCst);
                return Err(AuditError::Unavailable(
                    "the audit writer has stopped".into(),
                ));
            }
        }
        match tokio::time::timeout(self.timeout, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                self.shared.healthy.store(false, Ordering::SeqCst);
                Err(AuditError::Unavailable(
                    "the audit writer has stopped".into(),
                ))
            }
            Err(_) => {
                self.shared.healthy.store(false, Ordering::SeqCst);
                Err(AuditError::Unavailable(format!(
                    "no write confirmed within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// False while writes are failing (for `/healthz`); true again after a write succeeds.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    /// [`healthy`](Self::healthy), but while writes are failing it first tries one record
    /// (`audit.resumed`), at most once per [`PROBE_EVERY`] across callers. `/healthz` calls
    /// it, so health comes back when the disk does even with no other traffic: a load
    /// balancer that took this replica out on a 503 sends none, and without the probe the
    /// replica would stay out for good. The record also marks the end of the gap in the log.
    pub async fn probe(&self) -> bool {
        if self.healthy() {
            return true;
        }
        let now = Instant::now();
        {
            let Ok(mut last) = self.shared.last_probe.lock() else {
                return false;
            };
            if last.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        let event = AuditEvent::AuditResumed {
            reason: "a write succeeded again after failures (probed by /healthz)".into(),
        };
        self.record(event).await.is_ok()
    }
}

fn next_of(head: &Option<(u64, String)>) -> (u64, String) {
    match head {
        Some((seq, hash)) => (seq.saturating_add(1), hash.clone()),
        None => (1, GENESIS.to_string()),
    }
}

fn now_ts() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The writer thread: group commit until every handle is gone.
fn writer(mut sink: Box<dyn AuditSink>, rx: Receiver<Request>, shared: Arc<Shared>) {
    let mut head = shared
        .head
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| (0, GENESIS.to_string()));
    let mut batch: Vec<Request> = Vec::with_capacity(256);
    let mut lines: Vec<String> = Vec::with_capacity(256);
    let mut results: Vec<Result<Option<Checkpoint>, AuditError>> = Vec::with_capacity(256);
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // A caller that gave up (timeout) has already been told "no": do not record an
        // action that did not happen.
        batch.retain(|r| !r.ack.is_closed());
        if batch.is_empty() {
            continue;
        }
        let ts = now_ts();
        lines.clear();
        results.clear();
        let (mut seq, mut prev) = (head.0, head.1.clone());
        for r in &batch {
            let mut fields = std::borrow::Cow::Borrowed(&r.event.fields);
            let mut signed = None;
            if let Some(key) = &r.sign {
                // Signs the head this record follows: `seq` and `prev` here.
                match key.sign(&shared.replica, seq, &prev, &ts) {
                    Ok(cp) => {
                        let mut f = r.event.fields.clone();
                        f.insert(
                            "checkpoint".into(),
                            serde_json::to_value(&cp).unwrap_or(Value::Null),
                        );
                        fields = std::borrow::Cow::Owned(f);
                        signed = Some(cp);
                    }
                    Err(e) => {
                        results.push(Err(AuditError::Unavailable(e)));
                        continue;
                    }
                }
            }
            seq = seq.saturating_add(1);
            let (line, hash) =
                record::build_line(seq, &ts, &shared.replica, &r.event.kind, &fields, &prev);
            lines.push(line);
            prev = hash;
            results.push(Ok(signed));
        }
        let result = if lines.is_empty() {
            Ok(())
        } else {
            sink.append(&lines)
        };
        let failure = match result {
            Ok(()) => {
                head = (seq, prev);
                if let Ok(mut h) = shared.head.lock() {
                    *h = head.clone();
                }
                shared.healthy.store(true, Ordering::SeqCst);
                None
            }
            Err(e) => {
                shared.healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, records = batch.len(), "audit write failed");
                Some(AuditError::Unavailable(e.to_string()))
            }
        };
        for (r, own) in batch.drain(..).zip(results.drain(..)) {
            let answer = match (&failure, own) {
                (_, Err(e)) => Err(e),
                (Some(e), Ok(_)) => Err(e.clone()),
                (None, Ok(cp)) => Ok(cp),
            };
            let _ = r.ack.send(answer);
        }
    }
}

#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod tests;
