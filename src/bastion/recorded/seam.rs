//! What the recorded path takes from the recording module, the policy and the
//! configuration, in one place: which sessions are recorded and by which rule, the
//! session id, the recorder, the SFTP observer, `[recording]`.

use std::path::PathBuf;

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

pub use crate::recording::sftp::{SftpObserver, SftpOp};
pub use crate::recording::{
    CastMeta, LiveRecording, Recorder, RecordingError, RecordingSummary, SessionId,
};

/// `recording.dir`, resolved against the configuration file's folder.
pub fn recording_dir(config: &crate::config::Config) -> PathBuf {
    config.recording_dir()
}

/// `recording.input`.
pub fn record_input(config: &crate::config::Config) -> bool {
    config.recording.input
}
