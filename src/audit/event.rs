//! The audit schema: every record kind the product writes, with its fields as types.
//! (Over the project's usual 600 lines on purpose: the schema is read and reviewed as one
//! whole, beside `docs/audit-events.md`; split, a reader could not see every kind at once.)
//!
//! [`AuditEvent`] is the only thing [`super::Audit::record`] takes. Each variant is one
//! record kind, serialised with its name in `event` (`cert.issued`, `forward.cut`, ...);
//! the writer adds the chain keys (`seq`, `ts`, `replica`, `prev`, `hash`). Field names
//! are those written since the first release, so `audit verify` and `audit search` read
//! old and new logs alike.
//!
//! Three shared shapes:
//! - [`PeerText`]: a string a peer chose (user name, key id, host, path). It can only be
//!   built by cutting ([`PeerText::cut`]): at most 256 bytes, and when cut the record also
//!   carries `<field>_len` and `<field>_sha256` of the whole string.
//! - [`Grant`]: how a principal is held, one rendering everywhere
//!   (`{"principal":"dba","via":"group","group":"ops"}`).
//! - [`RefusalCode`]: the `reason` of every refusal.
//!
//! Every decision record names the policy version in force (`policy_version`) and the
//! rule that decided (`rule`, and `grants` for an allow). `docs/audit-events.md` documents
//! every kind and field; [`samples`] builds one of each kind with every field set, and a
//! unit test compares them with that table.

use std::time::SystemTime;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

pub use super::refusal::RefusalCode;
use crate::policy::Via;

/// A peer-chosen string, bounded: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerText {
    shown: String,
    /// `(full length in bytes, SHA-256)` when `shown` is not all of it.
    cut: Option<(usize, String)>,
}

/// The marker key of a cut [`PeerText`] while an event is turned into a record.
const CUT_MARKER: &str = "$peer_text";

impl PeerText {
    /// `s` escaped and cut to 256 bytes ([`crate::util::shown`], [`crate::util::peer_text`]).
    pub fn cut(s: &str) -> PeerText {
        let t = crate::util::peer_text(s);
        PeerText {
            shown: crate::util::shown(s),
            cut: t.cut,
        }
    }

    /// The text as recorded.
    pub fn as_str(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Display for PeerText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Serialize for PeerText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.cut {
            None => s.serialize_str(&self.shown),
            // Spread into `<field>`, `<field>_len`, `<field>_sha256` by `into_fields`.
            Some((len, sha)) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry(CUT_MARKER, &self.shown)?;
                m.serialize_entry("len", len)?;
                m.serialize_entry("sha256", sha)?;
                m.end()
            }
        }
    }
}

/// How a principal is held: `via` is `user` (`[users.NAME] principals`), `group` (with
/// `group`) or `temporary` (a `[[temporary]]` grant, with `until` and `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub principal: String,
    pub via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Grant {
    pub fn new(principal: &str, via: &Via) -> Grant {
        let mut g = Grant {
            principal: principal.to_string(),
            via: "user",
            group: None,
            until: None,
            reason: None,
        };
        match via {
            Via::User => {}
            Via::Group(name) => {
                g.via = "group";
                g.group = Some(name.clone());
            }
            Via::Temporary { until, reason } => {
                g.via = "temporary";
                g.until = Some(crate::util::rfc3339(*until));
                g.reason = Some(reason.clone());
            }
        }
        g
    }

    /// One grant per way each principal is held.
    pub fn all(held: &[crate::policy::carried::Held]) -> Vec<Grant> {
        held.iter()
            .flat_map(|h| h.via.iter().map(|v| Grant::new(&h.principal, v)))
            .collect()
    }
}

/// The connection fields of every record about an SSH connection (and its forwards).
/// The certificate's fields are there once it has been accepted (or when the refusal
/// concerns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conn {
    /// The connection's number in this process.
    pub conn: u64,
    /// The client's address and port.
    pub peer: String,
    /// The SSH user name the client sent.
    pub ssh_user: PeerText,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<PeerText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// What a forward was decided on: the inventory entry and the grants that allow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    pub target: String,
    pub address: String,
    /// The first granting principal.
    pub principal: String,
    /// Every principal of the certificate that grants the target, and how it is held.
    pub grants: Vec<Grant>,
}

/// A forward's identity in its records: the connection, what was asked, under which
/// policy (for `forward.cut`, the policy that cut).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardBase {
    #[serde(flatten)]
    pub conn: Conn,
    /// The host the client asked for (cut).
    pub host: PeerText,
    pub port: u32,
    pub policy_version: String,
}

/// `ssh.auth.failed`: see `docs/audit-events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthFailed {
    #[serde(flatten)]
    pub conn: Conn,
    pub reason: RefusalCode,
    pub message: String,
    pub policy_version: String,
    pub rule: String,
    /// `russh` when the SSH library refused before drawbridge saw the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The key was only offered, not proven.
    #[serde(skip_serializing_if = "is_false")]
    pub offered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sk_flags: Option<u8>,
}

impl AuthFailed {
    pub fn new(
        conn: Conn,
        reason: RefusalCode,
        message: &str,
        policy_version: &str,
        rule: &str,
    ) -> Self {
        AuthFailed {
            conn,
            reason,
            message: message.to_string(),
            policy_version: policy_version.to_string(),
            rule: rule.to_string(),
            refused_by: None,
            algorithm: None,
            offered: false,
            sk_flags: None,
        }
    }
}

/// `forward.refused`: see `docs/audit-events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardRefused {
    #[serde(flatten)]
    pub conn: Conn,
    /// `remote`, `streamlocal-remote`, `streamlocal`; absent for a local forward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<PeerText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PeerText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    pub reason: RefusalCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub policy_version: String,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub decided: Option<Decided>,
}

impl ForwardRefused {
    pub fn new(conn: Conn, reason: RefusalCode, policy_version: &str, rule: &str) -> Self {
        ForwardRefused {
            conn,
            kind: None,
            host: None,
            path: None,
            port: None,
            reason,
            message: None,
            policy_version: policy_version.to_string(),
            rule: rule.to_string(),
            lost_principal: None,
            detail: None,
            decided: None,
        }
    }
}

/// A recorded session's identity in its records: the connection, the session id, the
/// inventory host and the login asked for inside the channel, under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionBase {
    #[serde(flatten)]
    pub conn: Conn,
    /// The session id (also the recording's file name, `ID.cast`).
    pub session: String,
    /// The inventory host.
    pub target: String,
    /// The inventory address and port dialled.
    pub address: String,
    /// The login the client asked for (peer text).
    pub login: PeerText,
    pub policy_version: String,
}

/// `session.started`: see `docs/audit-events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionStarted {
    #[serde(flatten)]
    pub base: SessionBase,
    /// The certificate principals in the per-session certificate (those that grant the
    /// host and the login).
    pub principals: Vec<String>,
    /// How each is held.
    pub grants: Vec<Grant>,
    /// The rule that asks for the recording (`hosts.NAME.record`, `principals.NAME.record`).
    pub rule: String,
    /// The reason written in the certificate at issuance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The recording's path.
    pub recording: String,
    /// Keystrokes are recorded too (`recording.input`).
    pub input: bool,
}

/// `session.ended`: see `docs/audit-events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionEnded {
    #[serde(flatten)]
    pub base: SessionBase,
    pub duration_ms: u64,
    pub bytes_client_to_target: u64,
    pub bytes_target_to_client: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
    /// `closed`, `cut`, `shutdown`, `recording-failed`, `target-closed`.
    pub end: String,
    /// The rule of a cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The recording's path.
    pub recording: String,
    /// Its size in bytes and SHA-256 (hex) when it was closed; absent when it could not be
    /// finished (`end` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_sha256: Option<String>,
}

impl SessionEnded {
    /// A session that ended `end`, everything optional unset.
    pub fn new(base: SessionBase, recording: &str, end: &str) -> Self {
        SessionEnded {
            base,
            duration_ms: 0,
            bytes_client_to_target: 0,
            bytes_target_to_client: 0,
            exit_status: None,
            exit_signal: None,
            end: end.to_string(),
            rule: None,
            reason: None,
            lost_principal: None,
            message: None,
            recording: recording.to_string(),
            recording_size: None,
            recording_sha256: None,
        }
    }
}

/// `session.refused`: a recorded session refused after its channel was accepted (the
/// recording cannot be written, the target's host key is not trusted, the login is not
/// granted, ...). See `docs/audit-events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRefused {
    #[serde(flatten)]
    pub conn: Conn,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<PeerText>,
    pub reason: RefusalCode,
    /// What the user was told.
    pub message: String,
    pub policy_version: String,
    pub rule: String,
    /// What the user was not told (the I/O error, the key presented).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
}

impl SessionRefused {
    pub fn new(
        conn: Conn,
        session: &str,
        reason: RefusalCode,
        message: &str,
        policy_version: &str,
        rule: &str,
    ) -> Self {
        SessionRefused {
            conn,
            session: session.to_string(),
            target: None,
            address: None,
            login: None,
            reason,
            message: message.to_string(),
            policy_version: policy_version.to_string(),
            rule: rule.to_string(),
            detail: None,
            recording: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every record kind. See `docs/audit-events.md` for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event")]
pub enum AuditEvent {
    #[serde(rename = "service.started")]
    ServiceStarted {
        version: String,
        api: bool,
        bastion: bool,
        policy_version: String,
    },
    #[serde(rename = "service.stopped")]
    ServiceStopped { policy_version: String },
    #[serde(rename = "policy.reloaded")]
    PolicyReloaded {
        old_version: String,
        policy_version: String,
        /// Policy from Git with allowed signers: who signed the commit now in force.
        #[serde(skip_serializing_if = "Option::is_none")]
        signed_by: Option<String>,
    },
    #[serde(rename = "policy.rejected")]
    PolicyRejected {
        /// The version kept.
        policy_version: String,
        errors: Vec<String>,
        /// Policy from Git: why the commit is refused.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<RefusalCode>,
        /// Policy from Git: the commit refused.
        #[serde(skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    #[serde(rename = "audit.recovered")]
    AuditRecovered {
        reason: String,
        dropped_bytes: u64,
        dropped_prefix: String,
    },
    #[serde(rename = "audit.resumed")]
    AuditResumed { reason: String },
    /// Its `checkpoint` field is added by the writer (it signs the head it follows).
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint {},
    #[serde(rename = "login.ok")]
    LoginOk {
        user: String,
        client: String,
        method: String,
        token_expires_at: String,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "login.failed")]
    LoginFailed {
        client: String,
        reason: RefusalCode,
        detail: String,
        method: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<PeerText>,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "login.failed.repeated")]
    LoginFailedRepeated {
        client: String,
        reason: RefusalCode,
        method: String,
        repeats: u64,
        since: String,
        window_secs: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<PeerText>,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "cert.issued")]
    CertIssued {
        user: String,
        client: String,
        method: String,
        serial: u64,
        key_id: String,
        principals: Vec<String>,
        grants: Vec<Grant>,
        valid_after: u64,
        valid_before: u64,
        ttl_secs: u64,
        ttl_capped_by: Option<String>,
        reason: Option<String>,
        key_type: String,
        key_fingerprint: String,
        ca_fingerprint: String,
        policy_version: String,
    },
    #[serde(rename = "cert.refused")]
    CertRefused {
        user: String,
        client: String,
        method: String,
        reason: RefusalCode,
        message: String,
        policy_version: String,
        rule: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_fingerprint: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        revoked_by: Option<String>,
    },
    #[serde(rename = "ssh.auth.ok")]
    SshAuthOk {
        #[serde(flatten)]
        conn: Conn,
        principals: Vec<String>,
        valid_before: String,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "ssh.auth.failed")]
    SshAuthFailed(AuthFailed),
    #[serde(rename = "ssh.auth.failed.repeated")]
    SshAuthFailedRepeated {
        source: String,
        reason: RefusalCode,
        repeats: u64,
        since: String,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "ssh.session.refused")]
    SshSessionRefused {
        #[serde(flatten)]
        conn: Conn,
        request: String,
        reason: RefusalCode,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "forward.opened")]
    ForwardOpened {
        #[serde(flatten)]
        base: ForwardBase,
        #[serde(flatten)]
        decided: Decided,
    },
    #[serde(rename = "forward.closed")]
    ForwardClosed {
        #[serde(flatten)]
        base: ForwardBase,
        #[serde(flatten)]
        decided: Decided,
        bytes_client_to_target: u64,
        bytes_target_to_client: u64,
        duration_ms: u64,
        /// `closed`, `shutdown`, `cut`, or the refusal code of a forward never opened.
        end: String,
        /// The rule of a cut.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<RefusalCode>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    #[serde(rename = "forward.cut")]
    ForwardCut {
        #[serde(flatten)]
        base: ForwardBase,
        #[serde(flatten)]
        decided: Decided,
        reason: RefusalCode,
        rule: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        lost_principal: Option<String>,
    },
    #[serde(rename = "forward.refused")]
    ForwardRefused(ForwardRefused),
    /// A device login started with an identity provider (`POST /v1/device`); its end is a
    /// `login.ok` or `login.failed` with method `oidc`.
    #[serde(rename = "device.started")]
    DeviceStarted {
        client: String,
        issuer: String,
        expires_in: u64,
        policy_version: String,
        rule: String,
    },
    #[serde(rename = "session.started")]
    SessionStarted(SessionStarted),
    #[serde(rename = "session.ended")]
    SessionEnded(SessionEnded),
    #[serde(rename = "session.refused")]
    SessionRefused(SessionRefused),
    /// Records written by unit tests of the log itself.
    #[cfg(test)]
    #[serde(rename = "test.event")]
    Test { i: u64 },
}

impl AuditEvent {
    /// The record's `kind` and fields (without `event`), peer texts spread out.
    pub(super) fn into_fields(self) -> (String, Map<String, Value>) {
        let value = serde_json::to_value(&self).unwrap_or(Value::Null);
        let Value::Object(mut map) = value else {
            // Every variant is a struct: cannot happen; record the failure rather than panic.
            let mut m = Map::new();
            m.insert(
                "error".into(),
                Value::from("event did not serialise as an object"),
            );
            return ("audit.schema-error".into(), m);
        };
        let kind = match map.remove("event") {
            Some(Value::String(k)) => k,
            _ => "audit.schema-error".into(),
        };
        let cut: Vec<String> = map
            .iter()
            .filter(|(_, v)| v.get(CUT_MARKER).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in cut {
            if let Some(Value::Object(mut o)) = map.remove(&k) {
                if let Some(shown) = o.remove(CUT_MARKER) {
                    map.insert(k.clone(), shown);
                }
                if let Some(len) = o.remove("len") {
                    map.insert(format!("{k}_len"), len);
                }
                if let Some(sha) = o.remove("sha256") {
                    map.insert(format!("{k}_sha256"), sha);
                }
            }
        }
        (kind, map)
    }
}

/// The time as records write it (RFC 3339, seconds).
pub fn ts(t: SystemTime) -> String {
    crate::util::rfc3339(t)
}

/// One event of every kind, every optional field set and every peer text cut: what the
/// schema test compares with `docs/audit-events.md`. Adding a variant without a sample
/// here fails that test (the kind is missing from [`samples`] but present in the table,
/// or the other way round).
#[cfg(test)]
pub fn samples() -> Vec<AuditEvent> {
    // Does not compile when a variant is added: add its sample below too.
    let _every_variant_has_a_sample = |e: &AuditEvent| match e {
        AuditEvent::ServiceStarted { .. }
        | AuditEvent::ServiceStopped { .. }
        | AuditEvent::PolicyReloaded { .. }
        | AuditEvent::PolicyRejected { .. }
        | AuditEvent::AuditRecovered { .. }
        | AuditEvent::AuditResumed { .. }
        | AuditEvent::AuditCheckpoint {}
        | AuditEvent::LoginOk { .. }
        | AuditEvent::LoginFailed { .. }
        | AuditEvent::LoginFailedRepeated { .. }
        | AuditEvent::DeviceStarted { .. }
        | AuditEvent::CertIssued { .. }
        | AuditEvent::CertRefused { .. }
        | AuditEvent::SshAuthOk { .. }
        | AuditEvent::SshAuthFailed(_)
        | AuditEvent::SshAuthFailedRepeated { .. }
        | AuditEvent::SshSessionRefused { .. }
        | AuditEvent::ForwardOpened { .. }
        | AuditEvent::ForwardClosed { .. }
        | AuditEvent::ForwardCut { .. }
        | AuditEvent::ForwardRefused(_)
        | AuditEvent::SessionStarted(_)
        | AuditEvent::SessionEnded(_)
        | AuditEvent::SessionRefused(_)
        | AuditEvent::Test { .. } => {}
    };
    let long = "x".repeat(300);
    let p = || PeerText::cut(&long);
    let v = || "commit:0123456789ab".to_string();
    let s = |x: &str| x.to_string();
    let grant = Grant::new(
        "dba",
        &Via::Temporary {
            until: SystemTime::UNIX_EPOCH,
            reason: "incident".into(),
        },
    );
    let mut group = Grant::new("dba", &Via::Group("ops".into()));
    group.until = grant.until.clone();
    group.reason = grant.reason.clone();
    let conn = Conn {
        conn: 1,
        peer: s("127.0.0.1:5555"),
        ssh_user: p(),
        key_id: Some(p()),
        serial: Some(7),
        key_fingerprint: Some(s("SHA256:k")),
        ca_fingerprint: Some(s("SHA256:ca")),
    };
    let base = ForwardBase {
        conn: conn.clone(),
        host: p(),
        port: 22,
        policy_version: v(),
    };
    let session = SessionBase {
        conn: conn.clone(),
        session: s("s"),
        target: s("db-1"),
        address: s("10.0.0.1:22"),
        login: p(),
        policy_version: v(),
    };
    let decided = Decided {
        target: s("db-1"),
        address: s("10.0.0.1:22"),
        principal: s("dba"),
        grants: vec![group],
    };
    vec![
        AuditEvent::ServiceStarted {
            version: s("1"),
            api: true,
            bastion: true,
            policy_version: v(),
        },
        AuditEvent::ServiceStopped {
            policy_version: v(),
        },
        AuditEvent::PolicyReloaded {
            old_version: v(),
            policy_version: v(),
            signed_by: Some(s("alice@example.org (SHA256:k, ca/allowed_signers:1)")),
        },
        AuditEvent::PolicyRejected {
            policy_version: v(),
            errors: vec![s("e")],
            reason: Some(RefusalCode::Unsigned),
            commit: Some(v()),
        },
        AuditEvent::AuditRecovered {
            reason: s("r"),
            dropped_bytes: 1,
            dropped_prefix: s("p"),
        },
        AuditEvent::AuditResumed { reason: s("r") },
        AuditEvent::AuditCheckpoint {},
        AuditEvent::LoginOk {
            user: s("u"),
            client: s("c"),
            method: s("password"),
            token_expires_at: s("t"),
            policy_version: v(),
            rule: s("identity.password"),
        },
        AuditEvent::LoginFailed {
            client: s("c"),
            reason: RefusalCode::InvalidCredentials,
            detail: s("d"),
            method: s("password"),
            user: Some(p()),
            policy_version: v(),
            rule: s("identity.password"),
        },
        AuditEvent::LoginFailedRepeated {
            client: s("c"),
            reason: RefusalCode::RateLimited,
            method: s("password"),
            repeats: 2,
            since: s("t"),
            window_secs: 1,
            user: Some(p()),
            policy_version: v(),
            rule: s("identity.rate_limit"),
        },
        AuditEvent::DeviceStarted {
            client: s("c"),
            issuer: s("https://idp.example.org"),
            expires_in: 600,
            policy_version: v(),
            rule: s("oidc.client_id"),
        },
        AuditEvent::CertIssued {
            user: s("u"),
            client: s("c"),
            method: s("password"),
            serial: 1,
            key_id: s("k"),
            principals: vec![s("dba")],
            grants: vec![grant],
            valid_after: 1,
            valid_before: 2,
            ttl_secs: 1,
            ttl_capped_by: Some(s("c")),
            reason: Some(s("r")),
            key_type: s("ssh-ed25519"),
            key_fingerprint: s("SHA256:k"),
            ca_fingerprint: s("SHA256:ca"),
            policy_version: v(),
        },
        AuditEvent::CertRefused {
            user: s("u"),
            client: s("c"),
            method: s("password"),
            reason: RefusalCode::Revoked,
            message: s("m"),
            policy_version: v(),
            rule: s("[[revoked]] at revoked.toml:3"),
            key_fingerprint: Some(s("SHA256:k")),
            revoked_by: Some(s("serial")),
        },
        AuditEvent::SshAuthOk {
            conn: conn.clone(),
            principals: vec![s("dba")],
            valid_before: s("t"),
            policy_version: v(),
            rule: s("certificate"),
        },
        AuditEvent::SshAuthFailed(AuthFailed {
            refused_by: Some("russh"),
            algorithm: Some(s("ssh-dss")),
            offered: true,
            sk_flags: Some(1),
            ..AuthFailed::new(conn.clone(), RefusalCode::WeakAlgorithm, "m", &v(), "r")
        }),
        AuditEvent::SshAuthFailedRepeated {
            source: s("127.0.0.0"),
            reason: RefusalCode::NoCertificate,
            repeats: 2,
            since: s("t"),
            policy_version: v(),
            rule: s("r"),
        },
        AuditEvent::SshSessionRefused {
            conn: conn.clone(),
            request: s("shell"),
            reason: RefusalCode::SessionRefused,
            policy_version: v(),
            rule: s("r"),
        },
        AuditEvent::ForwardOpened {
            base: base.clone(),
            decided: decided.clone(),
        },
        AuditEvent::ForwardClosed {
            base: base.clone(),
            decided: decided.clone(),
            bytes_client_to_target: 1,
            bytes_target_to_client: 1,
            duration_ms: 1,
            end: s("closed"),
            rule: Some(s("r")),
            reason: Some(RefusalCode::ConnectFailed),
            message: Some(s("m")),
        },
        AuditEvent::ForwardCut {
            base: base.clone(),
            decided: decided.clone(),
            reason: RefusalCode::RoleLost,
            rule: s("r"),
            lost_principal: Some(s("dba")),
        },
        AuditEvent::ForwardRefused(ForwardRefused {
            kind: Some("remote"),
            host: Some(p()),
            path: Some(p()),
            port: Some(22),
            message: Some(s("m")),
            lost_principal: Some(s("dba")),
            detail: Some(s("d")),
            decided: Some(decided),
            ..ForwardRefused::new(conn.clone(), RefusalCode::Denied, &v(), "r")
        }),
        AuditEvent::SessionStarted(SessionStarted {
            base: session.clone(),
            principals: vec![s("dba")],
            grants: vec![Grant::new("dba", &Via::User)],
            rule: s("hosts.db-1.record"),
            reason: Some(s("INC-1")),
            recording: s("var/sessions/s.cast"),
            input: false,
        }),
        AuditEvent::SessionEnded(SessionEnded {
            duration_ms: 1,
            bytes_client_to_target: 1,
            bytes_target_to_client: 1,
            exit_status: Some(0),
            exit_signal: Some(s("KILL")),
            rule: Some(s("r")),
            reason: Some(RefusalCode::RoleLost),
            lost_principal: Some(s("dba")),
            message: Some(s("m")),
            recording_size: Some(1),
            recording_sha256: Some(s("00")),
            ..SessionEnded::new(session, "var/sessions/s.cast", "cut")
        }),
        AuditEvent::SessionRefused(SessionRefused {
            target: Some(s("db-1")),
            address: Some(s("10.0.0.1:22")),
            login: Some(p()),
            detail: Some(s("d")),
            recording: Some(s("var/sessions/s.cast")),
            ..SessionRefused::new(
                conn,
                "s",
                RefusalCode::RecordingUnavailable,
                "m",
                &v(),
                "recording.dir",
            )
        }),
    ]
}
