//! The validated policy. Everything here is plain data: built by the loader, read by
//! evaluation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

/// Where a definition stands in the policy folder (for messages).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A loaded, validated policy folder.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Names the loaded bytes: the Git commit of the folder when it is a Git work tree
    /// (`<commit>+sha256:<hash of the files>` when they differ from that commit), else
    /// `sha256:<hash of the files>`.
    pub version: String,
    pub hosts: BTreeMap<String, Host>,
    pub principals: BTreeMap<String, Principal>,
    pub groups: BTreeMap<String, Group>,
    pub users: BTreeMap<String, User>,
    pub temporary: Vec<Temporary>,
    pub revoked: Vec<Revoked>,
    /// Lookup tables for fast evaluation, built by [`Policy::load`] or on first use.
    /// Not part of the policy's meaning: build a policy by hand with
    /// `Policy { hosts, .., ..Default::default() }`, and do not change the fields of a
    /// policy after its first query (build a new one instead).
    #[doc(hidden)]
    pub index: std::sync::OnceLock<std::sync::Arc<super::eval::PolicyIndex>>,
}

/// An inventory entry: the bastion forwards to nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Host name or IP address as written (IPv6 without brackets).
    pub address: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    /// `record = true`: every session to this host is recorded.
    pub record: bool,
    /// `host_key`: the SHA-256 fingerprint (`SHA256:...`) of the one host key the bastion
    /// accepts from this host when it records a session to it (the key bare, or in a host
    /// certificate). None: only a host certificate of the host CA naming the host.
    pub host_key: Option<String>,
    pub origin: Origin,
}

/// Which hosts a principal grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSelector {
    /// `"*"`: every inventory host.
    All,
    /// A list of inventory host names.
    Names(Vec<String>),
    /// A label selector: every label must match.
    Labels(BTreeMap<String, String>),
}

/// A role: a set of hosts and a set of logins on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub hosts: HostSelector,
    pub logins: Vec<String>,
    pub max_ttl: Option<Duration>,
    /// Certificate extensions; default `["permit-pty"]`.
    pub extensions: Vec<String>,
    /// A certificate carrying this principal is issued only with a reason (`?reason=`).
    pub require_reason: bool,
    /// `record = true`: every session to a host this principal grants is recorded.
    pub record: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub principals: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub principals: Vec<String>,
    /// Becomes the certificate's `source-address` critical option when not empty.
    pub source: Vec<IpNet>,
    pub origin: Origin,
}

/// A break-glass grant that ends by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Temporary {
    pub user: String,
    pub principal: String,
    pub until: SystemTime,
    pub reason: String,
    pub origin: Origin,
}

/// A revocation: by serial, by key id, by public key, or several of them (any one
/// matching revokes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Option<u64>,
    pub key_id: Option<String>,
    /// The revoked public key's SHA-256 fingerprint (`SHA256:...`, as `ssh-keygen -l`
    /// prints it), whether the policy wrote the key line or the fingerprint. Revokes the
    /// key itself and every certificate of it.
    pub key: Option<String>,
    pub reason: Option<String>,
    pub origin: Origin,
}

/// Which part of a `[[revoked]]` entry matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    Serial,
    KeyId,
    Key,
}

impl RevokedBy {
    /// The policy key that matched (`serial`, `key_id`, `key`).
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedBy::Serial => "serial",
            RevokedBy::KeyId => "key_id",
            RevokedBy::Key => "key",
        }
    }
}

impl Revoked {
    /// Whether this entry revokes a certificate with `serial` (`None` before one is
    /// issued), `key_id` and a key of SHA-256 fingerprint `key_fingerprint`, and by what.
    pub fn matches(
        &self,
        serial: Option<u64>,
        key_id: &str,
        key_fingerprint: &str,
    ) -> Option<RevokedBy> {
        if self.key_id.as_deref() == Some(key_id) {
            Some(RevokedBy::KeyId)
        } else if self.key.as_deref() == Some(key_fingerprint) {
            Some(RevokedBy::Key)
        } else if serial.is_some() && self.serial == serial {
            Some(RevokedBy::Serial)
        } else {
            None
        }
    }
}

impl Policy {
    /// The first `[[revoked]]` entry that revokes a certificate (serial, key id, key
    /// fingerprint `SHA256:...`), and what matched. `serial` is `None` at issuance.
    pub fn revocation(
        &self,
        serial: Option<u64>,
        key_id: &str,
        key_fingerprint: &str,
    ) -> Option<(&Revoked, RevokedBy)> {
        self.revoked
            .iter()
            .find_map(|r| r.matches(serial, key_id, key_fingerprint).map(|by| (r, by)))
    }
}
