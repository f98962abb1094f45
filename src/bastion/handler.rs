//! The russh `Handler` for one connection: authentication (certificates only), session
//! requests (`whoami`, `hosts`, refusals) and forwarding requests. Kept thin: the checks
//! live in `verify`, `forward` and `commands`, the state in `connection`.

use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::ssh_key::{self, Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tracing::{info, warn};

use crate::audit::RefusalCode;

use super::BastionMetrics;
use super::codes;
use super::commands;
use super::connection::{Connection, reject, shown_user};
use super::verify::{refusal_rule, security_key_flags, verify_signed_certificate};
use crate::audit::PeerText;
use crate::util::escape;

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Cannot tell a certificate from a bare key here (russh passes only the inner key to this hook): accept both, decide
        // in auth_publickey / auth_openssh_certificate_signed. Only weak algorithms stop here.
        self.ssh_user = shown_user(user);
        self.collect_lib_refusals();
        if matches!(
            offer.algorithm,
            ssh_key::Algorithm::Dsa | ssh_key::Algorithm::Rsa { hash: None }
        ) {
            // Audited like every other refusal (docs/threats.md T13). The key is only offered
            // here, not proven: the record says so by its `offered` field.
            let algorithm = escape(offer.algorithm.as_str());
            let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
            let extra = |f: &mut crate::audit::AuthFailed| {
                f.algorithm = Some(algorithm);
                f.conn.key_fingerprint = Some(fingerprint);
                f.offered = true;
            };
            return Ok(self
                .refuse_auth(
                    codes::WEAK_ALGORITHM,
                    codes::RULE_SIGNATURE_ALGORITHMS,
                    "signature algorithm not accepted (no DSA, no SHA-1 ssh-rsa); use \
                     ssh-ed25519, ecdsa, or RSA with rsa-sha2-256/512",
                    extra,
                )
                .await);
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ssh_user = shown_user(user);
        // The OpenSSH client's fallback after russh refused its certificate: audit that
        // refusal first, with this (signature-checked) key's fingerprint.
        self.audit_lib_refusals(Some(key.public_key)).await;
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let extra = |f: &mut crate::audit::AuthFailed| {
            f.conn.key_fingerprint = Some(fingerprint);
        };
        Ok(self
            .refuse_auth(
                codes::NO_CERTIFICATE,
                codes::RULE_CERTIFICATE_REQUIRED,
                "a plain key is not accepted; get a certificate from drawbridge",
                extra,
            )
            .await)
    }

    // Only this method authenticates certificates: it sees the signature, so a security
    // key's flags are checked. The signature-less `auth_openssh_certificate` keeps russh's
    // default, which refuses.
    async fn auth_openssh_certificate_signed(
        &mut self,
        user: &str,
        cert: &Certificate,
        signature: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ssh_user = shown_user(user);
        self.audit_lib_refusals(None).await;
        let policy = self.shared.policy.current();
        let now = SystemTime::now();
        let sk_flags = security_key_flags(cert, signature.sk.map(|sk| sk.flags));
        let verdict = verify_signed_certificate(
            cert,
            &self.shared.trusted,
            &policy,
            self.peer.ip(),
            now,
            self.shared.max_validity,
            sk_flags,
        );
        let id = match verdict {
            Ok(id) => id,
            Err(refusal) => {
                let key_fingerprint = cert.public_key().fingerprint(HashAlg::Sha256).to_string();
                // A revocation names the `[[revoked]]` entry that matched.
                let rule = refusal_rule(&refusal, &policy, cert, &key_fingerprint);
                let extra = |f: &mut crate::audit::AuthFailed| {
                    f.conn.key_id = Some(PeerText::cut(cert.key_id()));
                    f.conn.serial = Some(cert.serial());
                    f.conn.key_fingerprint = Some(key_fingerprint);
                    f.conn.ca_fingerprint = Some(
                        cert.signature_key()
                            .fingerprint(HashAlg::Sha256)
                            .to_string(),
                    );
                    f.sk_flags = sk_flags;
                };
                return Ok(self
                    .refuse_auth(refusal.code(), &rule, &refusal.to_string(), extra)
                    .await);
            }
        };
        let user_slot = match self.shared.take_user_slot(&id.key_id, self.conn).await {
            Ok(slot) => slot,
            Err(no_place) => {
                let extra = |f: &mut crate::audit::AuthFailed| {
                    f.conn.key_id = Some(PeerText::cut(&id.key_id));
                    f.conn.serial = Some(id.serial);
                    f.conn.key_fingerprint = Some(id.key_fingerprint.clone());
                };
                let (code, rule, message) = match no_place {
                    super::counts::NoPlace::Full => (
                        codes::TOO_MANY_CONNECTIONS,
                        codes::RULE_MAX_CONNECTIONS_PER_USER,
                        "too many connections for this user".to_string(),
                    ),
                    super::counts::NoPlace::Unavailable(why) => {
                        warn!(peer = %self.peer, reason = %why, "SSH login refused: shared state unavailable");
                        // The client reads this as the disconnect message; no retry helps.
                        self.cert_cut.send_replace(Some(
                            "drawbridge: the shared state database cannot be reached; new \
                             connections are refused until it is back"
                                .to_string(),
                        ));
                        (
                            RefusalCode::StateUnavailable,
                            codes::RULE_STATE_POSTGRES,
                            "the shared state database cannot be reached: new connections are \
                             refused until it is back"
                                .to_string(),
                        )
                    }
                };
                return Ok(self.refuse_auth(code, rule, &message, extra).await);
            }
        };
        let id = Arc::new(id);
        self.identity = Some(id.clone());
        // The groups the certificate carries from its issuance are not recorded: the
        // bastion never decides on them (it asks the policy in force).
        let record = crate::audit::AuditEvent::SshAuthOk {
            conn: self.conn_fields(),
            principals: id.principals.clone(),
            valid_before: crate::util::rfc3339(id.valid_before),
            policy_version: policy.version.clone(),
            rule: codes::RULE_CERTIFICATE_ACCEPTED.to_string(),
        };
        if !self.shared.record(record).await {
            self.identity = None;
            self.shared.metrics.refused(codes::AUDIT_UNAVAILABLE);
            return Ok(reject());
        }
        info!(peer = %self.peer, key_id = %crate::util::shown(&id.key_id), serial = id.serial, "SSH certificate accepted");
        self.user_slot = Some(user_slot);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        BastionMetrics::inc(&self.shared.metrics.auth_ok);
        if let Some(u) = &self.unauth {
            u.slot.authenticated();
        }
        self.unauth = None;
        let valid_before = self.identity.as_ref().map(|id| id.valid_before);
        let _ = self.auth_tx.send(valid_before);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(slot) = self.take_channel() else {
            self.shared.metrics.refused(codes::TOO_MANY_CHANNELS);
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 4,
                    reason: "too many channels on this connection".into(),
                })
                .await;
            return Ok(());
        };
        // The session exists only to answer `whoami` and `hosts`; its client data is not
        // read, so the channel handle is dropped (russh discards data for it).
        self.sessions.insert(channel.id(), slot);
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.check_packet_size(data.len(), session)
    }

    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.check_packet_size(data.len(), session)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the slot gives the channel place back.
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        let command = command.trim();
        let Some(id) = self.identity.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let output = match command {
            "whoami" => {
                let now = SystemTime::now();
                let recorded = commands::recorded_line(&id, &self.shared.policy.current(), now);
                commands::whoami(&id, self.peer.ip(), now) + &recorded
            }
            "hosts" => commands::hosts(&id, &self.shared.policy.current(), SystemTime::now()),
            other => {
                let shown: String = escape(other).chars().take(64).collect();
                let msg = format!("command {shown:?} refused: {}", commands::help());
                return self.refuse_session(channel, "exec", &msg, session).await;
            }
        };
        session.channel_success(channel)?;
        session.data(channel, output.into_bytes())?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let msg = format!("shell refused: {}", commands::help());
        self.refuse_session(channel, "shell", &msg, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let shown: String = escape(name).chars().take(64).collect();
        let msg = format!("subsystem {shown:?} refused: {}", commands::help());
        self.refuse_session(channel, "subsystem", &msg, session)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.note_session_refusal("pty").await;
        session.channel_failure(channel)?;
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
        self.note_session_refusal("x11").await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.note_session_refusal("agent").await;
        Ok(false)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Ignored (not audited): harmless, and OpenSSH clients send LANG and friends.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let mut fields = self.forward_refused(codes::REMOTE_FORWARD, codes::RULE_NO_REMOTE_FORWARD);
        fields.kind = Some("remote");
        fields.host = Some(PeerText::cut(address));
        fields.port = Some(*port);
        self.note_forward_refusal(fields).await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let mut fields = self.forward_refused(codes::STREAMLOCAL, codes::RULE_NO_STREAMLOCAL);
        fields.kind = Some("streamlocal-remote");
        fields.path = Some(PeerText::cut(socket_path));
        self.note_forward_refusal(fields).await;
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let mut fields = self.forward_refused(codes::STREAMLOCAL, codes::RULE_NO_STREAMLOCAL);
        fields.kind = Some("streamlocal");
        fields.path = Some(PeerText::cut(socket_path));
        self.note_forward_refusal(fields).await;
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "unix socket forwarding is refused by the bastion".into(),
            })
            .await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Some(slot) = self.take_channel() else {
            let mut fields =
                self.forward_refused(codes::TOO_MANY_CHANNELS, codes::RULE_MAX_CHANNELS);
            fields.host = Some(PeerText::cut(host_to_connect));
            fields.port = Some(port_to_connect);
            fields.message = Some("too many channels on this connection".into());
            self.note_forward_refusal(fields).await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 4,
                    reason: "too many channels on this connection".into(),
                })
                .await;
            return Ok(());
        };
        // Decide, dial and pipe in a task: a slow target must not block this connection.
        tokio::spawn(super::forward::run(super::forward::Request {
            shared: self.shared.clone(),
            identity,
            conn: self.conn,
            cert_cut: self.cert_cut.clone(),
            fields: self.conn_fields(),
            host: host_to_connect.to_string(),
            port: port_to_connect,
            channel,
            reply,
            slot,
            forwards: self.forwards.clone(),
        }));
        Ok(())
    }
}
