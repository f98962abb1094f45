//! One recorded session's shared state: who, where, the recording, how it ended. The
//! inner server's handler, the relays and the outer task all hold it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;
use tracing::{info, warn};

use super::Setup;
use super::relay::{ChanState, Kind};
use super::seam::{
    CastMeta, LiveRecording, Recorder, RecordingError, RecordingSummary, SessionId, SftpOp,
};
use crate::audit::{
    AuditEvent, Conn, Grant, PeerText, RefusalCode, SessionBase, SessionRefused, SessionStarted,
};
use crate::bastion::shared::Shared;
use crate::bastion::verify::CertIdentity;
use crate::policy::{Held, Host};

/// Why a recorded session is refused: code, rule, what the user is told, what not.
#[derive(Debug, Clone)]
pub(super) struct Refused {
    pub code: RefusalCode,
    pub rule: String,
    pub message: String,
    pub detail: Option<String>,
}

impl Refused {
    pub fn new(code: RefusalCode, rule: &str, message: &str) -> Refused {
        Refused {
            code,
            rule: rule.to_string(),
            message: message.to_string(),
            detail: None,
        }
    }
}

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
    recorder: OnceLock<LiveRecording>,
    /// The login and principals, once the session started.
    pub started: OnceLock<(String, Vec<String>)>,
    /// Turns true when the recording cannot be written: the session is cut.
    failed: Arc<watch::Sender<bool>>,
    exit: Mutex<Option<u32>>,
    signal: Mutex<Option<String>>,
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
            failed: Arc::new(watch::channel(false).0),
            exit: Mutex::new(None),
            signal: Mutex::new(None),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// The fields every record of this session carries once the login is known.
    pub fn base(&self, login: &str, policy_version: &str) -> SessionBase {
        SessionBase {
            conn: self.fields.clone(),
            session: self.id.to_string(),
            target: self.host.name.clone(),
            address: format!("{}:{}", self.host.address, self.host.port),
            login: PeerText::cut(login),
            policy_version: policy_version.to_string(),
        }
    }

    /// The recording's path.
    pub fn recording_path(&self) -> String {
        crate::recording::recording_path(&self.setup.dir, &self.id)
            .display()
            .to_string()
    }

    /// Starts the session: `session.started` on disk, then the recording created.
    /// Nothing has reached the target yet; on error nothing will.
    pub async fn start(&self, login: &str, grants: &[Held]) -> Result<(), Refused> {
        if self.started.get().is_some() {
            return Ok(());
        }
        let policy = self.shared.policy.current();
        let principals: Vec<String> = grants.iter().map(|g| g.principal.clone()).collect();
        let event = AuditEvent::SessionStarted(SessionStarted {
            base: self.base(login, &policy.version),
            principals: principals.clone(),
            grants: Grant::all(grants),
            rule: super::seam::recorded_rule(&policy, &self.host.name, &principals),
            reason: self.identity.reason.clone(),
            recording: self.recording_path(),
            input: self.setup.input,
        });
        if !self.shared.record(event).await {
            return Err(Refused::new(
                RefusalCode::AuditUnavailable,
                crate::bastion::codes::RULE_AUDIT_FIRST,
                "the bastion cannot write its audit log; try again later",
            ));
        }
        let meta = CastMeta {
            width: 80,
            height: 24,
            title: format!(
                "{}@{} as {}",
                crate::util::escape(&self.identity.key_id),
                self.host.name,
                crate::util::escape(login)
            ),
            env: Vec::new(),
            command: None,
            input: self.setup.input,
        };
        let _ = self.started.set((login.to_string(), principals));
        let recorder = Recorder::create(&self.setup.dir, &self.id, meta).map_err(|e| {
            warn!(session = %self.id, error = %e, "cannot create the recording");
            Refused {
                detail: Some(e.to_string()),
                ..Refused::new(
                    RefusalCode::RecordingUnavailable,
                    "recording.dir",
                    "this session must be recorded and the bastion cannot write the recording; \
                     the session is refused",
                )
            }
        })?;
        let live = LiveRecording::start(recorder);
        // A write that fails in the recording's own timer (an idle session) cuts too.
        let mut failure = live.failed();
        let failed = self.failed.clone();
        tokio::spawn(async move {
            if failure.wait_for(Option::is_some).await.is_ok() {
                failed.send_replace(true);
            }
        });
        let _ = self.recorder.set(live);
        Ok(())
    }

    /// Audits a refused session (`session.refused`), `login` when known.
    pub async fn refuse(&self, login: Option<&str>, r: &Refused) {
        self.shared.metrics.refused(r.code);
        let policy = self.shared.policy.current();
        let mut e = SessionRefused::new(
            self.fields.clone(),
            self.id.as_str(),
            r.code,
            &r.message,
            &policy.version,
            &r.rule,
        );
        e.target = Some(self.host.name.clone());
        e.address = Some(format!("{}:{}", self.host.address, self.host.port));
        e.login = login.map(PeerText::cut);
        e.detail = r.detail.clone();
        if r.code == RefusalCode::RecordingUnavailable {
            e.recording = Some(self.recording_path());
        }
        let _ = self.shared.record(AuditEvent::SessionRefused(e)).await;
        info!(session = %self.id, code = %r.code, "recorded session refused");
    }

    /// Audits a refused request inside the session (`ssh.session.refused`).
    pub async fn refused(&self, request: &str, code: RefusalCode, rule: &str) {
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

    /// Runs `f` on the recording; an error when there is none or it cannot write.
    fn with<T>(
        &self,
        f: impl FnOnce(&LiveRecording) -> Result<T, RecordingError>,
    ) -> Result<T, String> {
        match self.recorder.get() {
            Some(rec) => f(rec).map_err(|e| e.to_string()),
            None => Err("the recording is not open".into()),
        }
    }

    /// Whether the recording file was created.
    pub fn recording_started(&self) -> bool {
        self.recorder.get().is_some()
    }

    pub fn mark(&self, label: &str) -> Result<(), String> {
        self.with(|r| r.marker(label))
    }

    pub fn resize(&self, cols: u32, rows: u32) -> Result<(), String> {
        self.with(|r| r.resize(cols, rows))
    }

    /// Records an exec's command.
    pub async fn exec(&self, command: &str) -> Result<(), String> {
        self.with(|r| r.marker(&format!("exec: {command}")))
    }

    /// Records what the client sends on a channel, before it goes to the target:
    /// keystrokes only with `recording.input`, SFTP requests as operations.
    pub fn client_data(&self, state: &Mutex<ChanState>, data: &[u8]) -> Result<(), String> {
        self.bytes_up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        match st.kind {
            Kind::Terminal | Kind::Pending if self.setup.input => self.with(|r| r.input(data)),
            Kind::Sftp => {
                let ops = st
                    .sftp
                    .as_mut()
                    .map(|o| o.client_bytes(data))
                    .unwrap_or_default();
                self.ops(&ops)
            }
            _ => Ok(()),
        }
    }

    /// Records what the target sends on a channel, before the client sees it.
    pub fn target_data(&self, state: &Mutex<ChanState>, data: &[u8]) -> Result<(), String> {
        self.bytes_down
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        match st.kind {
            Kind::Terminal | Kind::Pending => self.with(|r| r.output(data)),
            Kind::Sftp => {
                let ops = st
                    .sftp
                    .as_mut()
                    .map(|o| o.server_bytes(data))
                    .unwrap_or_default();
                self.ops(&ops)
            }
            Kind::Forward => Ok(()),
        }
    }

    /// The target's stderr: in the terminal's output, as the user saw it.
    pub fn target_stderr(&self, state: &Mutex<ChanState>, data: &[u8]) -> Result<(), String> {
        self.bytes_down
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        match st.kind {
            Kind::Forward => Ok(()),
            _ => self.with(|r| r.output(data)),
        }
    }

    /// A channel ended: the SFTP files still open and requests not followed.
    pub fn channel_ended(&self, state: &Mutex<ChanState>) -> Result<(), String> {
        let sftp = state.lock().unwrap_or_else(|e| e.into_inner()).sftp.take();
        match sftp {
            Some(o) => self.ops(&o.finish()),
            None => Ok(()),
        }
    }

    fn ops(&self, ops: &[SftpOp]) -> Result<(), String> {
        for op in ops {
            self.mark(&op.to_string())?;
        }
        Ok(())
    }

    pub fn exit_status(&self, code: u32) {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
    }

    pub fn exit_signal(&self, signal: &russh::Sig) {
        *self.signal.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{signal:?}"));
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

    /// Finishes the recording (exit status written); `None` when none was created.
    pub async fn finish(&self) -> Option<Result<RecordingSummary, String>> {
        let r = self.recorder.get()?;
        let exit = self.exit().map(|c| i32::try_from(c).unwrap_or(i32::MAX));
        Some(r.finish(exit).await.map_err(|e| e.to_string()))
    }

    pub fn exit(&self) -> Option<u32> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exit_signal_name(&self) -> Option<String> {
        self.signal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
