//! Certificate refusals made inside russh, before any `Handler` method runs.
//!
//! russh 0.65 checks a certificate's validity window and its signature itself, in
//! `server_read_auth_request_pk`, and refuses it with only a `log` WARN ("Certificate is
//! expired or not yet valid", "Certificate signature is invalid"): the handler never sees
//! that certificate. To audit those refusals anyway:
//!
//! 1. [`capture_layer`] is a `tracing` layer (with its own per-layer filter, so the printed
//!    log's filter cannot hide the event from it) that recognises those two russh events —
//!    `log` records reach it through `tracing-log`'s `LogTracer`, which
//!    `SubscriberInitExt::try_init` installs — and notes them under the id of the tokio
//!    task that logged them ([`tokio::task::try_id`]).
//! 2. russh runs each connection's session, auth checks and handler calls included, inside
//!    one task (`run_stream` spawns `session.run(stream, handler)`), so the handler takes
//!    the notes filed under *its own* task id ([`take_current`]) on its next call, or when
//!    it is dropped at the end of the session (still inside that task), and audits them.
//!
//! The log line carries nothing about the certificate (no key id, serial, window or key),
//! so neither can the audit record; see `connection.rs` for what it does carry.
//!
//! The notes live in one process-wide map, bounded: at most [`MAX_PER_TASK`] per task and
//! [`MAX_TASKS`] tasks; entries older than [`MAX_AGE`] are pruned when the map is full,
//! then the oldest. A task with no drawbridge handler (another russh server in the same
//! process) leaves notes that only ever get pruned.

use crate::audit::RefusalCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::task::Id as TaskId;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Notes kept per task at most (russh closes a connection after `max_auth_attempts`
/// refusals anyway).
pub const MAX_PER_TASK: usize = 16;
/// Tasks with notes kept at most.
pub const MAX_TASKS: usize = 4096;
/// Age past which a note may be pruned when the map is full.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// A certificate refusal russh made on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibRefusal {
    /// Outside its validity window: expired *or not yet valid* (russh does not say which).
    Expired,
    /// The certificate's signature does not verify against the key embedded in it.
    BadSignature,
}

impl LibRefusal {
    /// The audit/metrics reason code (the same codes as [`super::Refusal::code`]).
    pub fn code(self) -> RefusalCode {
        match self {
            LibRefusal::Expired => RefusalCode::Expired,
            LibRefusal::BadSignature => RefusalCode::BadSignature,
        }
    }

    /// The rule that refused: the SSH library's own check.
    pub fn rule(self) -> &'static str {
        match self {
            LibRefusal::Expired => "russh.certificate-validity",
            LibRefusal::BadSignature => "russh.certificate-signature",
        }
    }

    /// One line for the audit record.
    pub fn message(self) -> &'static str {
        match self {
            LibRefusal::Expired => {
                "certificate outside its validity window (expired or not yet valid), \
                 refused by the SSH library before drawbridge could read it"
            }
            LibRefusal::BadSignature => {
                "certificate signature invalid, refused by the SSH library before \
                 drawbridge could read it"
            }
        }
    }

    /// The russh log message that announces this refusal.
    fn from_log_message(message: &str) -> Option<LibRefusal> {
        match message.trim() {
            "Certificate is expired or not yet valid" => Some(LibRefusal::Expired),
            "Certificate signature is invalid" => Some(LibRefusal::BadSignature),
            _ => None,
        }
    }
}

struct Notes {
    first: Instant,
    refusals: Vec<LibRefusal>,
}

static NOTES: LazyLock<Mutex<HashMap<TaskId, Notes>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Set once a dispatcher carrying [`capture_layer`] has been built.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Recognised refusals that could not be filed: logged outside a tokio task, or over
/// [`MAX_PER_TASK`].
static UNFILED: AtomicU64 = AtomicU64::new(0);

/// Files one refusal under the current tokio task.
fn note(refusal: LibRefusal) {
    let Some(task) = tokio::task::try_id() else {
        UNFILED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = Instant::now();
    let mut notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    if !notes.contains_key(&task) && notes.len() >= MAX_TASKS {
        notes.retain(|_, n| now.duration_since(n.first) < MAX_AGE);
        if notes.len() >= MAX_TASKS
            && let Some(oldest) = notes.iter().min_by_key(|(_, n)| n.first).map(|(k, _)| *k)
        {
            notes.remove(&oldest);
        }
    }
    let entry = notes.entry(task).or_insert_with(|| Notes {
        first: now,
        refusals: Vec::new(),
    });
    if entry.refusals.len() < MAX_PER_TASK {
        entry.refusals.push(refusal);
    } else {
        UNFILED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Takes the refusals russh made in the current tokio task (empty outside a task).
pub fn take_current() -> Vec<LibRefusal> {
    let Some(task) = tokio::task::try_id() else {
        return Vec::new();
    };
    let mut notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    notes.remove(&task).map(|n| n.refusals).unwrap_or_default()
}

/// Recognised refusals that could not be filed under a task since start.
pub fn unfiled() -> u64 {
    UNFILED.load(Ordering::Relaxed)
}

/// The layer proper; use [`capture_layer`], which adds its filter.
#[derive(Debug, Default, Clone, Copy)]
pub struct RusshRefusalCapture;

/// The events it looks at: WARN and above from russh (its `log` records keep their real
/// target in the filter metadata `tracing-log` builds).
fn capture_filter() -> Targets {
    Targets::new().with_target("russh", LevelFilter::WARN)
}

/// The capture layer with its own (per-layer) filter: add it to a `Registry` beside the
/// printing layer, whose filter must be per-layer too (a global filter would hide
/// russh's WARN from this layer when the printed log leaves russh out).
pub fn capture_layer<S>() -> Filtered<RusshRefusalCapture, Targets, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    RusshRefusalCapture.with_filter(capture_filter())
}

/// Whether a dispatcher with [`capture_layer`] has been built in this process.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Makes sure the capture runs: if no dispatcher with [`capture_layer`] was built (an
/// embedder or a test that set up no tracing), installs a global subscriber made of the
/// capture layer alone (it prints nothing), with the `log` bridge. Returns whether the
/// capture is (believed to be) in place; when it cannot be, logs why once. Idempotent.
pub fn ensure_installed() -> bool {
    static TRIED: std::sync::Once = std::sync::Once::new();
    TRIED.call_once(|| {
        if installed() {
            return;
        }
        if let Err(e) = tracing_subscriber::registry()
            .with(capture_layer())
            .try_init()
        {
            tracing::warn!(
                error = %e,
                "cannot capture the SSH library's own certificate refusals; expired and \
                 badly signed certificates will be audited only through the client's fallback \
                 to its bare key (no-certificate)"
            );
        }
    });
    installed()
}

#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "log.target" => self.log_target = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for RusshRefusalCapture {
    fn on_register_dispatch(&self, _subscriber: &Dispatch) {
        INSTALLED.store(true, Ordering::SeqCst);
    }

    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        if *event.metadata().level() != Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // A `log` record arrives with the target "log" and its real one in `log.target`.
        let target = fields
            .log_target
            .as_deref()
            .unwrap_or(event.metadata().target());
        if target != "russh" && !target.starts_with("russh::") {
            return;
        }
        if let Some(refusal) = LibRefusal::from_log_message(&fields.message) {
            note(refusal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` inside a tokio task on a current-thread runtime, with a subscriber made of
    /// the capture layer and a printing-like layer filtered to nothing (as with
    /// `DRAWBRIDGE_LOG=off`).
    fn in_task<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let subscriber = tracing_subscriber::registry().with(capture_layer()).with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(LevelFilter::OFF),
        );
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async { tokio::spawn(async move { f() }).await.expect("task") })
        })
    }

    #[test]
    fn russh_refusals_are_filed_under_their_task_only() {
        let (mine, other, second) = in_task(|| {
            tracing::warn!(target: "russh::server::encrypted", "Certificate is expired or not yet valid");
            tracing::warn!(target: "russh::server::encrypted", "Certificate signature is invalid");
            // Not russh, not the message, not WARN: ignored.
            tracing::warn!(target: "elsewhere", "Certificate is expired or not yet valid");
            tracing::warn!(target: "russh::server", "something else");
            tracing::info!(target: "russh::server::encrypted", "Certificate is expired or not yet valid");
            let other = std::thread::spawn(take_current).join().expect("thread");
            let mine = take_current();
            (mine, other, take_current())
        });
        assert_eq!(mine, vec![LibRefusal::Expired, LibRefusal::BadSignature]);
        assert!(other.is_empty(), "taken outside the task: {other:?}");
        assert!(second.is_empty(), "taken twice: {second:?}");
        assert!(installed());
    }

    #[test]
    fn notes_per_task_are_bounded() {
        let (got, unfiled_before, unfiled_after) = in_task(|| {
            let before = unfiled();
            for _ in 0..MAX_PER_TASK + 5 {
                tracing::warn!(target: "russh::server::encrypted", "Certificate is expired or not yet valid");
            }
            (take_current(), before, unfiled())
        });
        assert_eq!(got.len(), MAX_PER_TASK);
        assert!(unfiled_after >= unfiled_before + 5);
    }

    #[test]
    fn codes_match_the_verifier() {
        assert_eq!(
            LibRefusal::Expired.code(),
            super::super::Refusal::Expired.code()
        );
        assert_eq!(
            LibRefusal::BadSignature.code(),
            super::super::Refusal::BadSignature.code()
        );
        for r in [LibRefusal::Expired, LibRefusal::BadSignature] {
            assert!(!r.message().contains('\n'));
        }
    }
}
