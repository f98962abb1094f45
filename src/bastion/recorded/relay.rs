//! What a recorded target sends back on one channel, relayed to the client: data (after
//! it is in the recording, and only as fast as the client's window lets it go), EOF,
//! exit status and signal, close, and the target's answers to the requests the handler
//! relayed (in order, to the handler waiting for them).

use std::sync::Arc;

use russh::server;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::mpsc;
use tracing::debug;

use super::seam::SftpObserver;
use super::session::SessionCtx;

/// What a channel carries, which decides what of it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No shell, exec or subsystem yet.
    Pending,
    /// A shell or an exec: the terminal output is recorded.
    Terminal,
    /// The `sftp` subsystem: file operations are recorded, not the bytes.
    Sftp,
    /// A `-L` forward through the target: opened and closed are recorded.
    Forward,
}

/// One channel's state shared by the handler (client data) and its relay (target data):
/// what it carries, and for `sftp` the observer of its file operations.
#[derive(Debug)]
pub struct ChanState {
    pub kind: Kind,
    pub sftp: Option<Box<SftpObserver>>,
}

/// Relays the target's side of one channel to the client until either closes.
pub(super) async fn target_to_client(
    ctx: Arc<SessionCtx>,
    mut target: ChannelReadHalf,
    client: ChannelWriteHalf<server::Msg>,
    handle: server::Handle,
    replies: mpsc::Sender<bool>,
    state: Arc<std::sync::Mutex<ChanState>>,
) {
    let id = client.id();
    while let Some(msg) = target.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if ctx.target_data(&state, &data).is_err() {
                    ctx.recording_failed();
                    break;
                }
                if client.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                if ctx.target_stderr(&state, &data).is_err() {
                    ctx.recording_failed();
                    break;
                }
                if client.extended_data_bytes(ext, data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = client.eof().await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                ctx.exit_status(exit_status);
                let _ = client.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                ctx.exit_signal(&signal_name);
                let _ = handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
            }
            ChannelMsg::Success => {
                let _ = replies.send(true).await;
            }
            ChannelMsg::Failure => {
                let _ = replies.send(false).await;
            }
            ChannelMsg::Close => break,
            other => debug!(?other, "recorded session: target message not relayed"),
        }
    }
    let _ = client.close().await;
    if ctx.channel_ended(&state).is_err() {
        ctx.recording_failed();
    }
}
