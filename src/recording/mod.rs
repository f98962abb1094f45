//! Recorded sessions: the asciicast v2 file of a session ([`Recorder`]), the session id
//! ([`SessionId`]), SFTP operations seen in a subsystem channel ([`sftp::SftpObserver`]),
//! reading recordings back (`read`, for `session play|watch` and `audit verify`) and the
//! `session` command line (`cmd`).
//!
//! Invariants:
//! - a recording is created 0600 in a folder created 0700, never over an existing file
//!   and never through a symbolic link;
//! - every [`Recorder`] method returns an error once the file cannot be written, and keeps
//!   returning it: the caller cuts the session (a recording that cannot be written fails
//!   the session closed);
//! - output reaches the file at most about a second after it happened ([`Recorder::tick`]);
//! - memory per recorder is bounded (buffers are cut and shrunk after each flush);
//! - every string a peer chose (paths, commands, titles) is bounded before it is written.

mod cast;
pub mod cmd;
mod live;
pub mod read;
mod session_id;
pub mod sessions;
pub mod sftp;
mod text;
pub mod verify;

pub use cast::{CastMeta, Recorder, RecordingSummary};
pub use live::LiveRecording;
pub use session_id::{SessionId, SessionIdError};

use std::path::PathBuf;

/// Why a recording could not be created or written. Any of them means the caller cuts
/// (or refuses) the session.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The recording folder cannot be created, or is not a folder.
    #[error("recording folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The recording file cannot be created (it exists already, the disk is full, ...).
    #[error("cannot create recording {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write or flush failed.
    #[error("cannot write recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An earlier write failed: the recording is incomplete and takes nothing more.
    #[error("recording {path} failed earlier: {what}")]
    Failed { path: PathBuf, what: String },
}

/// The path of session `id`'s recording in `dir`.
pub fn recording_path(dir: &std::path::Path, id: &SessionId) -> PathBuf {
    dir.join(format!("{}.cast", id.as_str()))
}
