//! The audit log: one JSON object per line, hash-chained (`prev`, `hash`), appended and
//! flushed to disk before the action it records takes effect.
//!
//! SKELETON: the shapes below are the contract; the audit work fills in the bodies.

pub mod cmd;

use serde::Serialize;
use serde_json::{Map, Value};

/// Why a record could not be written. Callers fail closed on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written: {0}")]
    Unavailable(String),
}

/// One event to record: `event` names it (`cert.issued`, `ssh.auth.failed`, ...), the
/// fields carry what happened. Never put a secret in a field.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: String,
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        Event {
            kind: kind.to_string(),
            fields: Map::new(),
        }
    }

    /// Adds a field (later values replace earlier ones of the same name).
    pub fn with(mut self, key: &str, value: impl Serialize) -> Event {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.fields.insert(key.to_string(), v);
        self
    }
}

/// A cheap, cloneable handle on the audit log.
#[derive(Clone)]
pub struct Audit {
    _private: (),
}

impl Audit {
    /// Opens (or creates) the log at `path`, continuing its chain.
    pub fn open(path: &std::path::Path, replica: &str) -> Result<Audit, AuditError> {
        let _ = (path, replica);
        todo!()
    }

    /// Appends `event` and returns once it is durably on disk (fsync, batched across
    /// concurrent callers). An error means nothing may proceed on its behalf.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let _ = event;
        todo!()
    }

    /// False while writes are failing (for `/healthz`).
    pub fn healthy(&self) -> bool {
        todo!()
    }
}
