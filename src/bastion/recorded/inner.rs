//! The SSH server the bastion runs inside a recorded host's `direct-tcpip` channel: the
//! banner, the certificate checked again (it must be the one the outer connection
//! authenticated with), the decision on (principal, host, login), then the session's
//! requests relayed to the target one by one, each answered with the target's answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::client;
use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty, Sig};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::outbox::{self, Outbox};
use super::relay::{self, ChanState, Kind, Req, ToTarget};
use super::seam::SftpObserver;
use super::session::{Refused, SessionCtx};
use super::target;
use crate::audit::RefusalCode;
use crate::bastion::connection::reject;
use crate::bastion::verify::{refusal_rule, security_key_flags, verify_signed_certificate};
use crate::policy::Held;

/// How long a relayed request waits for the target's answer.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest exec command kept in the recording and the logs.
const MAX_COMMAND: usize = 4096;
/// What a channel may have queued for its target: the window it is granted (held until
/// the target has the bytes) and one packet of slack.
const QUEUE_LIMIT: usize = (crate::bastion::russh_config::CHANNEL_WINDOW
    + crate::bastion::russh_config::MAX_CHANNEL_PACKET) as usize;

/// One relayed channel: what goes to the target's side (sent by a writer task of its
/// own), the target's answers to requests, and what the channel carries.
struct Relayed {
    outbox: Outbox<ToTarget>,
    replies: mpsc::Receiver<bool>,
    state: Arc<std::sync::Mutex<ChanState>>,
    writer: AbortHandle,
}

/// The handler of the SSH server inside the channel.
pub(super) struct Inner {
    ctx: Arc<SessionCtx>,
    /// The login decided at authentication, with the principals granting it.
    login: Option<(String, Vec<Held>)>,
    /// The certificate's extensions (what the per-session certificate may carry on).
    extensions: Vec<String>,
    target: Option<target::TargetHandle>,
    channels: HashMap<ChannelId, Relayed>,
    /// Writers of closed channels still delivering what was queued before the close.
    closing: Vec<AbortHandle>,
}

impl Drop for Inner {
    /// The session is over: writers still waiting for a target's window stop with it.
    fn drop(&mut self) {
        for r in self.channels.values() {
            r.writer.abort();
        }
        for w in &self.closing {
            w.abort();
        }
    }
}

impl Inner {
    pub fn new(ctx: Arc<SessionCtx>) -> Inner {
        Inner {
            ctx,
            login: None,
            extensions: Vec::new(),
            target: None,
            channels: HashMap::new(),
            closing: Vec::new(),
        }
    }

    async fn refuse_auth(&self, code: RefusalCode, rule: &str, message: &str, user: &str) -> Auth {
        self.ctx
            .refuse(Some(user), &Refused::new(code, rule, message))
            .await;
        reject()
    }

    /// Refuses a session request, audited, with the reason on the channel's stderr.
    async fn refuse_request(&self, channel: ChannelId, request: &str, session: &mut Session) {
        self.ctx
            .refused(
                request,
                RefusalCode::SessionRefused,
                "bastion.recorded-session",
            )
            .await;
        let _ = session.channel_failure(channel);
    }

    /// The channel's reply back when the target connection is up (made now if it is the
    /// first channel); otherwise the channel is refused with the reason, which is audited.
    async fn target_or_reject(&mut self, reply: ChannelOpenHandle) -> Option<ChannelOpenHandle> {
        if let Err(r) = self.ensure_target().await {
            let login = self.login.as_ref().map(|(l, _)| l.clone());
            self.ctx.refuse(login.as_deref(), &r).await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 2,
                    reason: r.message,
                })
                .await;
            return None;
        }
        if self.target.is_none() {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return None;
        }
        Some(reply)
    }

    /// The target connection, made on the first channel: `session.started` on disk, the
    /// recording created, then (only then) the target dialled and logged in to.
    async fn ensure_target(&mut self) -> Result<(), Refused> {
        if self.target.is_some() {
            return Ok(());
        }
        let Some((login, grants)) = self.login.clone() else {
            return Err(Refused::new(
                RefusalCode::SessionRefused,
                "bastion.recorded-session",
                "not authenticated",
            ));
        };
        self.ctx.start(&login, &grants).await?;
        let principals: Vec<String> = grants.iter().map(|g| g.principal.clone()).collect();
        let host = &self.ctx.host;
        let keys = &self.ctx.setup.keys;
        let (mut handle, egress) = target::dial(target::Dial {
            name: &host.name,
            address: &host.address,
            port: host.port,
            host_ca: &keys.host_ca,
            pinned: host.host_key.as_deref(),
            connect_timeout: self.ctx.shared.cfg.connect_timeout,
        })
        .await
        .map_err(|e| {
            let (code, rule) = match e {
                target::TargetError::HostKey { .. } => {
                    (RefusalCode::TargetHostKey, "bastion.target-host-key")
                }
                target::TargetError::Timeout { .. } => {
                    (RefusalCode::ConnectTimeout, "ssh.connect_timeout")
                }
                target::TargetError::Connect { .. } => {
                    (RefusalCode::ConnectFailed, "ssh.connect_timeout")
                }
                _ => (RefusalCode::TargetAuthFailed, "bastion.session-certificate"),
            };
            let mut r = Refused::new(code, rule, &e.to_string());
            if let target::TargetError::HostKey { host, why } = &e {
                // The user learns the host is not trusted; the log learns why.
                r.message =
                    format!("{host}: the target's host key is not trusted; the session is refused");
                r.detail = Some(why.clone());
            }
            r
        })?;
        let egress =
            super::session_cert::egress_networks(&self.ctx.shared.cfg.egress_addresses, egress);
        let plan = super::session_cert::plan(
            &self.ctx.identity.key_id,
            &principals,
            &self.extensions,
            self.ctx.id.as_str(),
            &egress,
            SystemTime::now(),
        );
        let (key, cert) =
            super::session_cert::issue(&keys.session_signer, &plan).map_err(|e| Refused {
                detail: Some(e),
                ..Refused::new(
                    RefusalCode::SessionCertificate,
                    "bastion.session-certificate",
                    "the bastion cannot make the session certificate; try again later",
                )
            })?;
        target::login(&mut handle, &host.name, &login, key, cert)
            .await
            .map_err(|e| {
                Refused::new(
                    RefusalCode::TargetAuthFailed,
                    "bastion.session-certificate",
                    &e.to_string(),
                )
            })?;
        info!(session = %self.ctx.id, target = %host.name, login = %login, "recorded session: logged in to the target");
        self.target = Some(handle);
        Ok(())
    }

    /// With the target's side of a channel opened (after the target connection exists),
    /// starts relaying both ways and accepts the client's channel; otherwise refuses it
    /// with the target's reason.
    async fn open_relayed(
        &mut self,
        channel: Channel<Msg>,
        opened: Result<Channel<client::Msg>, russh::Error>,
        kind: Kind,
        handle: russh::server::Handle,
        reply: ChannelOpenHandle,
    ) {
        let target_channel = match opened {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("{}: {e}", self.ctx.host.name);
                reply
                    .reject(ChannelOpenFailure::Other { code: 2, reason })
                    .await;
                return;
            }
        };
        let (target_rx, target_tx) = target_channel.split();
        // Client data reaches us through `Handler::data`; the read half is not needed.
        let (_client_rx, client_tx) = channel.split();
        let (reply_tx, reply_rx) = mpsc::channel(8);
        let state = Arc::new(std::sync::Mutex::new(ChanState { kind, sftp: None }));
        let id = client_tx.id();
        let (outbox, inbox) = outbox::outbox(QUEUE_LIMIT);
        let writer = tokio::spawn(relay::client_to_target(
            inbox,
            target_tx,
            handle.clone(),
            id,
            reply_tx.clone(),
        ))
        .abort_handle();
        tokio::spawn(relay::target_to_client(
            self.ctx.clone(),
            target_rx,
            client_tx,
            handle,
            reply_tx,
            state.clone(),
        ));
        self.channels.insert(
            id,
            Relayed {
                outbox,
                replies: reply_rx,
                state,
                writer,
            },
        );
        reply.accept().await;
    }

    /// Queues a message for a channel's target side; a client that overruns the queue
    /// has its session ended.
    fn queue(
        &self,
        channel: ChannelId,
        item: ToTarget,
        session: &mut Session,
    ) -> Result<bool, russh::Error> {
        let Some(r) = self.channels.get(&channel) else {
            return Ok(false);
        };
        match r.outbox.control(item) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.overrun(&e, session)?;
                Ok(false)
            }
        }
    }

    fn overrun(&self, e: &outbox::Overrun, session: &mut Session) -> Result<(), russh::Error> {
        warn!(session = %self.ctx.id, error = %e, "recorded session: the client overran its channel's queue");
        session.disconnect(russh::Disconnect::ProtocolError, &e.to_string(), "en")
    }

    /// Sends a request to the target and answers the client with the target's answer.
    async fn relay_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        req: Req,
    ) -> Result<(), russh::Error> {
        if !self.queue(channel, ToTarget::Request(req), session)? {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let Some(r) = self.channels.get_mut(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        match tokio::time::timeout(REPLY_WAIT, r.replies.recv()).await {
            Ok(Some(true)) => session.channel_success(channel)?,
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    fn set_kind(&self, channel: ChannelId, kind: Kind) {
        if let Some(r) = self.channels.get(&channel) {
            let mut st = r.state.lock().unwrap_or_else(|e| e.into_inner());
            st.kind = kind;
            if kind == Kind::Sftp && st.sftp.is_none() {
                st.sftp = Some(Box::new(SftpObserver::new()));
            }
        }
    }
}

impl Handler for Inner {
    type Error = russh::Error;

    fn window_held(&mut self, channel: ChannelId) -> bool {
        self.channels.contains_key(&channel)
    }

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(Some(format!(
            "drawbridge: this session is recorded, session {}\r\n",
            self.ctx.id
        )))
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self
            .refuse_auth(
                RefusalCode::NoCertificate,
                crate::bastion::codes::RULE_CERTIFICATE_REQUIRED,
                "a plain key is not accepted; get a certificate from drawbridge",
                user,
            )
            .await)
    }

    async fn auth_openssh_certificate_signed(
        &mut self,
        user: &str,
        cert: &Certificate,
        signature: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let policy = self.ctx.shared.policy.current();
        let now = SystemTime::now();
        let sk_flags = security_key_flags(cert, signature.sk.map(|sk| sk.flags));
        // The same checks as the outer connection's, under the policy in force now, the
        // security key's touch included (this signature is a new one).
        let id = match verify_signed_certificate(
            cert,
            &self.ctx.shared.trusted,
            &policy,
            self.ctx.peer_ip,
            now,
            self.ctx.shared.max_validity,
            sk_flags,
        ) {
            Ok(id) => id,
            Err(refusal) => {
                // A revocation names the `[[revoked]]` entry that matched, as the outer
                // login's refusal does.
                let key_fingerprint = cert
                    .public_key()
                    .fingerprint(ssh_key::HashAlg::Sha256)
                    .to_string();
                let rule = refusal_rule(&refusal, &policy, cert, &key_fingerprint);
                return Ok(self
                    .refuse_auth(refusal.code(), &rule, &refusal.to_string(), user)
                    .await);
            }
        };
        // The very certificate the outer connection authenticated with: same serial,
        // key id, key and CA.
        let outer = &self.ctx.identity;
        if id.serial != outer.serial
            || id.key_id != outer.key_id
            || id.key_fingerprint != outer.key_fingerprint
            || id.ca_fingerprint != outer.ca_fingerprint
        {
            return Ok(self
                .refuse_auth(
                    RefusalCode::OtherCertificate,
                    "bastion.recorded-same-certificate",
                    "use the certificate the connection to the bastion authenticated with",
                    user,
                )
                .await);
        }
        match super::decide::login(&policy, &id, &self.ctx.host.name, user, now) {
            Ok(principals) => {
                self.extensions = cert.extensions().keys().cloned().collect();
                self.login = Some((user.to_string(), principals));
                Ok(Auth::Accept)
            }
            Err(d) => Ok(self.refuse_auth(d.code, &d.rule, &d.message, user).await),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(reply) = self.target_or_reject(reply).await else {
            return Ok(());
        };
        let Some(handle) = self.target.as_ref() else {
            return Ok(());
        };
        let opened = handle.channel_open_session().await;
        self.open_relayed(channel, opened, Kind::Pending, session.handle(), reply)
            .await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // `-L` through a recorded host only where the role permits port forwarding; the
        // target's sshd checks the per-session certificate's extension again.
        if !self
            .extensions
            .iter()
            .any(|e| e == "permit-port-forwarding")
        {
            self.ctx
                .refused(
                    "direct-tcpip",
                    RefusalCode::SessionRefused,
                    "principals.extensions: permit-port-forwarding",
                )
                .await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: "port forwarding is not permitted to your certificate".into(),
                })
                .await;
            return Ok(());
        }
        let Some(reply) = self.target_or_reject(reply).await else {
            return Ok(());
        };
        let Some(handle) = self.target.as_ref() else {
            return Ok(());
        };
        let shown: String = crate::util::escape(host_to_connect)
            .chars()
            .take(256)
            .collect();
        if self
            .ctx
            .mark(&format!("forward {shown}:{port_to_connect}"))
            .is_err()
        {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        }
        let opened = handle
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await;
        self.open_relayed(channel, opened, Kind::Forward, session.handle(), reply)
            .await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if data.len() > crate::bastion::russh_config::MAX_CHANNEL_PACKET as usize {
            return session.disconnect(
                russh::Disconnect::ProtocolError,
                "channel data exceeds the maximum packet size",
                "en",
            );
        }
        let Some(r) = self.channels.get(&channel) else {
            return Ok(());
        };
        // The channel's window is held (`window_held`): these bytes count against it
        // until the writer has given them to the target, or until given back here.
        if self.ctx.client_data(&r.state, data).is_err() {
            // Fail closed: what cannot be recorded does not reach the target.
            self.ctx.recording_failed();
            let _ = session.handle().release_window(channel, data.len() as u32);
            return Ok(());
        }
        // Queued, never awaited: the target's window is the writer's to wait for.
        if let Err(e) = r.outbox.data(data) {
            self.overrun(&e, session)?;
        }
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A client has no standard error to send; what it sends anyway is dropped, and
        // given back to its window.
        if self.channels.contains_key(&channel) {
            let _ = session.handle().release_window(channel, data.len() as u32);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queue(channel, ToTarget::Eof, session)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queue(channel, ToTarget::Close, session)?;
        if let Some(r) = self.channels.remove(&channel) {
            self.closing.retain(|w| !w.is_finished());
            self.closing.push(r.writer);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ctx.resize(col_width, row_height).is_err() {
            self.ctx.recording_failed();
            session.channel_failure(channel)?;
            return Ok(());
        }
        let req = Req::Pty {
            term: term.chars().take(64).collect(),
            size: (col_width, row_height, pix_width, pix_height),
            modes: modes.to_vec(),
        };
        self.relay_request(channel, session, req).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ctx.mark("shell").is_err() {
            self.ctx.recording_failed();
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.set_kind(channel, Kind::Terminal);
        self.relay_request(channel, session, Req::Shell).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        let shown: String = command.chars().take(MAX_COMMAND).collect();
        if self.ctx.exec(&shown).await.is_err() {
            self.ctx.recording_failed();
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.set_kind(channel, Kind::Terminal);
        self.relay_request(channel, session, Req::Exec(data.to_vec()))
            .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            self.refuse_request(channel, "subsystem", session).await;
            return Ok(());
        }
        if self.ctx.mark("subsystem sftp").is_err() {
            self.ctx.recording_failed();
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.set_kind(channel, Kind::Sftp);
        self.relay_request(channel, session, Req::Subsystem("sftp"))
            .await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let req = Req::Env(variable_name.to_string(), variable_value.to_string());
        self.relay_request(channel, session, req).await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ctx.resize(col_width, row_height).is_err() {
            self.ctx.recording_failed();
            return Ok(());
        }
        self.queue(
            channel,
            ToTarget::WindowChange(col_width, row_height, pix_width, pix_height),
            session,
        )?;
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queue(channel, ToTarget::Signal(signal), session)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(channel, "x11", session).await;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.ctx
            .refused(
                "agent",
                RefusalCode::SessionRefused,
                "bastion.recorded-session",
            )
            .await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.ctx
            .refused(
                "tcpip-forward",
                RefusalCode::RemoteForward,
                crate::bastion::codes::RULE_NO_REMOTE_FORWARD,
            )
            .await;
        Ok(false)
    }
}
