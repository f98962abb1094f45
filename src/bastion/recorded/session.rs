//! One recorded session's shared state: who, where, the recording, how it ended. The
//! inner server's handler, the relays and the outer task all hold it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;
use tracing::warn;

use super::Setup;
use super::relay::Kind;
use super::seam::{CastMeta, Recorder, RecordingSummary, SessionId};
use crate::audit::{AuditEvent, Conn, RefusalCode};
use crate::bastion::shared::Shared;
use crate::bastion::verify::CertIdentity;
use crate::policy::Host;

pub(super) struct SessionCtx {
    pub shared: Arc<Shared>,
    pub setup: Arc<Setup>,
    pub identity: Arc<CertIdentity>,
    /// The client's address (of the outer connection).
    pub peer_ip: IpAddr,
    /// The inventory host, as decided when the channel opened.
    pub host: Host,
    pub id: SessionId,
    /// The outer connection's fields, for this session's records.
    pub fields: Conn,
    recorder: OnceLock<Recorder>,
    /// The login and principals, once the session started.
    pub started: OnceLock<(String, Vec<String>)>,
    /// Turns true when the recording cannot be written: the session is cut.
    failed: watch::Sender<bool>,
    exit: Mutex<Option<u32>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl SessionCtx {
    pub fn new(
        shared: Arc<Shared>,
        setup: Arc<Setup>,
        identity: Arc<CertIdentity>,
        peer_ip: IpAddr,
        host: Host,
        id: SessionId,
        fields: Conn,
    ) -> SessionCtx {
        SessionCtx {
            shared,
            setup,
            identity,
            peer_ip,
            host,
            id,
            fields,
            recorder: OnceLock::new(),
            started: OnceLock::new(),
            failed: watch::channel(false).0,
            exit: Mutex::new(None),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// Starts the session: `session.started` on disk, then the recording created.
    /// Nothing has reached the target yet; on error nothing will.
    pub async fn start(
        &self,
        login: &str,
        principals: &[String],
    ) -> Result<(), (RefusalCode, String)> {
        if self.started.get().is_some() {
            return Ok(());
        }
        let policy = self.shared.policy.current();
        if let Some(event) =
            super::seam::session_started(self, login, principals, &policy.version)
            && !self.shared.record(event).await
        {
            return Err((
                RefusalCode::AuditUnavailable,
                "the bastion cannot write its audit log; try again later".into(),
            ));
        }
        let meta = CastMeta {
            key_id: self.identity.key_id.clone(),
            login: login.to_string(),
            host: self.host.name.clone(),
            cols: 80,
            rows: 24,
        };
        let recorder = Recorder::create(&self.setup.dir, &self.id, &meta).map_err(|e| {
            warn!(session = %self.id, error = %e, "cannot create the recording");
            (
                RefusalCode::RecordingFailed,
                format!(
                    "the bastion cannot write the recording this session needs ({e}); the \
                     session is refused"
                ),
            )
        })?;
        let _ = self.recorder.set(recorder);
        let _ = self
            .started
            .set((login.to_string(), principals.to_vec()));
        Ok(())
    }

    /// Audits a refused start (recording, target host key, login on the target, ...).
    pub async fn fail_start(&self, code: RefusalCode, message: &str) {
        self.refused_with("recorded-session", code, &format!("bastion.recorded: {message}"))
            .await;
    }

    /// Audits a refused request inside the session.
    pub async fn refused(&self, request: &str, code: RefusalCode, rule: &str) {
        self.refused_with(request, code, rule).await
    }

    async fn refused_with(&self, request: &str, code: RefusalCode, rule: &str) {
        self.shared.metrics.refused(code);
        let _ = self
            .shared
            .record(AuditEvent::SshSessionRefused {
                conn: self.fields.clone(),
                request: request.to_string(),
                reason: code,
                policy_version: self.shared.policy.current().version.clone(),
                rule: rule.to_string(),
            })
            .await;
    }

    fn recorder(&self) -> std::io::Result<&Recorder> {
        self.recorder
            .get()
            .ok_or_else(|| std::io::Error::other("the recording is not started"))
    }

    pub fn mark(&self, label: &str) -> std::io::Result<()> {
        self.recorder()?.marker(label)
    }

    pub fn resize(&self, cols: u32, rows: u32) -> std::io::Result<()> {
        self.recorder()?.resize(cols, rows)
    }

    /// Records an exec's command.
    pub async fn exec(&self, command: &str) -> std::io::Result<()> {
        self.recorder()?.marker(&format!("exec {command}"))
    }

    /// Records what the client sends on a channel of `kind` (keystrokes only with
    /// `recording.input`), before it goes to the target.
    pub fn client_data(&self, kind: Kind, data: &[u8]) -> std::io::Result<()> {
        self.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
        match kind {
            Kind::Terminal | Kind::Pending if self.setup.input => self.recorder()?.input(data),
            _ => Ok(()),
        }
    }

    /// Records what the target sends on a channel of `kind`, before the client sees it.
    pub fn target_data(&self, kind: Kind, data: &[u8]) -> std::io::Result<()> {
        self.bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
        match kind {
            Kind::Terminal | Kind::Pending => self.recorder()?.output(data),
            _ => Ok(()),
        }
    }

    pub fn exit_status(&self, code: u32) {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
    }

    pub fn exit_signal(&self, signal: &russh::Sig) {
        if self.mark(&format!("exit-signal {signal:?}")).is_err() {
            self.recording_failed();
        }
    }

    /// The recording cannot be written: the session is cut (fail closed).
    pub fn recording_failed(&self) {
        self.failed.send_replace(true);
    }

    pub fn failed(&self) -> watch::Receiver<bool> {
        self.failed.subscribe()
    }

    /// Finishes the recording (exit status written); `None` when none was started.
    pub fn finish(&self) -> Option<Result<RecordingSummary, String>> {
        let r = self.recorder.get()?;
        let exit = *self.exit.lock().unwrap_or_else(|e| e.into_inner());
        Some(r.finish(exit).map_err(|e| e.to_string()))
    }

    pub fn exit(&self) -> Option<u32> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }
}
