//! One recorded channel's two directions. What the target sends back is relayed to the
//! client: data (after it is in the recording, and only as fast as the client's window
//! lets it go), EOF, exit status and signal, close, and the target's answers to the
//! requests the handler relayed (in order, to the handler waiting for them). What the
//! client sent, queued by the handler in an [`Outbox`](super::outbox::Outbox), goes to
//! the target as fast as the target's window lets it, and each byte the target has is
//! given back to the client's window.

use std::sync::Arc;

use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig};
use russh::{client, server};
use tokio::sync::mpsc;
use tracing::debug;

use super::outbox::{Inbox, Item};
use super::seam::SftpObserver;
use super::session::SessionCtx;

/// A channel request relayed to the target (with a reply wanted, so the client gets the
/// target's own answer).
pub enum Req {
    Pty {
        term: String,
        size: (u32, u32, u32, u32),
        modes: Vec<(Pty, u32)>,
    },
    Shell,
    Exec(Vec<u8>),
    Subsystem(&'static str),
    Env(String, String),
}

impl Req {
    async fn send(self, t: &ChannelWriteHalf<client::Msg>) -> Result<(), russh::Error> {
        match self {
            Req::Pty { term, size, modes } => {
                t.request_pty(true, &term, size.0, size.1, size.2, size.3, &modes)
                    .await
            }
            Req::Shell => t.request_shell(true).await,
            Req::Exec(command) => t.exec(true, command).await,
            Req::Subsystem(name) => t.request_subsystem(true, name).await,
            Req::Env(name, value) => t.set_env(true, name, value).await,
        }
    }
}

/// What the client sends a channel, other than data, for the target.
pub enum ToTarget {
    Request(Req),
    WindowChange(u32, u32, u32, u32),
    Signal(Sig),
    Eof,
    Close,
}

/// Sends what the client sent one channel to the target, in order, until the channel is
/// closed; each byte of data, once the target has it, is given back to the client's
/// window. After the target's side fails, data is dropped (and still given back) and
/// requests are answered with a failure.
pub(super) async fn client_to_target(
    inbox: Inbox<ToTarget>,
    target: ChannelWriteHalf<client::Msg>,
    handle: server::Handle,
    id: ChannelId,
    replies: mpsc::Sender<bool>,
) {
    let mut broken = false;
    while let Some(item) = inbox.next().await {
        match item {
            Item::Data(data) => {
                let len = data.len();
                if !broken && target.data_bytes(data).await.is_err() {
                    debug!("recorded session: the target's side of a channel is gone");
                    broken = true;
                }
                inbox.taken(len);
                let _ = handle.release_window(id, len as u32);
            }
            Item::Control(ToTarget::Request(req)) => {
                if broken || req.send(&target).await.is_err() {
                    let _ = replies.try_send(false);
                }
            }
            Item::Control(ToTarget::WindowChange(c, r, pw, ph)) if !broken => {
                let _ = target.window_change(c, r, pw, ph).await;
            }
            Item::Control(ToTarget::Signal(sig)) if !broken => {
                let _ = target.signal(sig).await;
            }
            Item::Control(ToTarget::Eof) if !broken => {
                let _ = target.eof().await;
            }
            Item::Control(ToTarget::Close) => {
                let _ = target.close().await;
                return;
            }
            Item::Control(_) => {}
        }
    }
}

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
