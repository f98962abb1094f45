//! The bastion's own SSH connection to a recorded target: dial the inventory address,
//! accept only a host certificate from the host CA naming the inventory host, or, for a
//! host with a `host_key` pinned in the inventory, exactly that key (bare or certified);
//! never trust on first use. Log in with a per-session certificate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};
use tokio::net::TcpStream;

use crate::bastion::quickack::QuickAck;

/// Why the target could not be reached or logged in to.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{host}: cannot connect: {message}")]
    Connect { host: String, message: String },
    #[error("{host}: no answer within {limit}")]
    Timeout { host: String, limit: String },
    /// The target's host key is not its pinned key, or not a host certificate of the
    /// host CA for its name.
    #[error("{host}: the target's host key is not trusted ({why})")]
    HostKey { host: String, why: String },
    #[error("{host}: the target refused the session certificate for login {login}")]
    Login { host: String, login: String },
    #[error("{host}: {message}")]
    Ssh { host: String, message: String },
}

/// Checks the target's host key. With `pinned` (the inventory's `host_key`, a SHA-256
/// fingerprint): exactly that key, bare or inside a host certificate, and nothing else,
/// whatever the host CA signed. Without: a host certificate signed by `host_ca`, valid
/// now, naming `name`. Pure.
pub fn check_host_key(
    offered: &PublicKeyOrCertificate,
    host_ca: &PublicKey,
    name: &str,
    pinned: Option<&str>,
    now: SystemTime,
) -> Result<(), String> {
    if let Some(pin) = pinned {
        return check_pinned(offered, pin);
    }
    let cert: &Certificate = match offered {
        PublicKeyOrCertificate::Certificate(c) => c,
        PublicKeyOrCertificate::PublicKey { key, .. } => {
            return Err(format!(
                "a bare host key ({}) and no host certificate",
                key.fingerprint(HashAlg::Sha256)
            ));
        }
    };
    if cert.cert_type() != CertType::Host {
        return Err("a user certificate as host key".into());
    }
    let ca_fp = host_ca.fingerprint(HashAlg::Sha256);
    if cert.signature_key() != host_ca.key_data() {
        return Err(format!(
            "a host certificate signed by {}, not by the host CA",
            cert.signature_key().fingerprint(HashAlg::Sha256)
        ));
    }
    cert.validate_at(crate::util::unix_secs(now), [&ca_fp])
        .map_err(|e| format!("the host certificate does not verify: {e}"))?;
    if !cert.valid_principals().iter().any(|p| p == name) {
        return Err(format!(
            "a host certificate for {:?}, not for {name}",
            cert.valid_principals().join(",")
        ));
    }
    Ok(())
}

/// The offered key (or the key inside the offered certificate) is the pinned one.
fn check_pinned(offered: &PublicKeyOrCertificate, pin: &str) -> Result<(), String> {
    let (fingerprint, what) = match offered {
        PublicKeyOrCertificate::PublicKey { key, .. } => {
            (key.fingerprint(HashAlg::Sha256), "host key")
        }
        PublicKeyOrCertificate::Certificate(c) => {
            if c.cert_type() != CertType::Host {
                return Err("a user certificate as host key".into());
            }
            (
                c.public_key().fingerprint(HashAlg::Sha256),
                "key in the host certificate",
            )
        }
    };
    if fingerprint.to_string() == pin {
        Ok(())
    } else {
        Err(format!(
            "the {what} is {fingerprint}, not the pinned host_key {pin}"
        ))
    }
}

struct Checker {
    host_ca: PublicKey,
    name: String,
    pinned: Option<String>,
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let pinned = self.pinned.as_deref();
        match check_host_key(key, &self.host_ca, &self.name, pinned, SystemTime::now()) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

/// A logged-in connection to the target.
pub type TargetHandle = client::Handle<TargetClient>;
/// The client handler of a target connection (public for the handle's type).
pub struct TargetClient(Checker);

impl client::Handler for TargetClient {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        self.0.check_server_key(key).await
    }
}

fn client_config() -> client::Config {
    let key: Vec<Algorithm> = russh::Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| !matches!(a, Algorithm::Rsa { hash: None } | Algorithm::Dsa))
        .cloned()
        .collect();
    client::Config {
        inactivity_timeout: None,
        nodelay: true,
        preferred: russh::Preferred {
            key: std::borrow::Cow::Owned(key.clone()),
            host_key_certificates: std::borrow::Cow::Owned(key),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    }
}

/// Where and how to reach a recorded target.
pub struct Dial<'a> {
    /// The inventory name (what a host certificate must name).
    pub name: &'a str,
    pub address: &'a str,
    pub port: u16,
    pub host_ca: &'a PublicKey,
    /// The inventory's `host_key` fingerprint, when pinned.
    pub pinned: Option<&'a str>,
    pub connect_timeout: Duration,
}

/// Dials the target (`connect_timeout`), checks its host key; the TCP stream's
/// local address is the bastion's egress address on it (the session certificate's
/// `source-address`).
pub async fn dial(d: Dial<'_>) -> Result<(TargetHandle, std::net::IpAddr), TargetError> {
    let Dial {
        name,
        address,
        port,
        host_ca,
        pinned,
        connect_timeout,
    } = d;
    let limit = crate::util::format_duration(connect_timeout);
    let stream =
        match tokio::time::timeout(connect_timeout, TcpStream::connect((address, port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(TargetError::Connect {
                    host: name.into(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(TargetError::Timeout {
                    host: name.into(),
                    limit,
                });
            }
        };
    let _ = stream.set_nodelay(true);
    let egress = stream
        .local_addr()
        .map_err(|e| TargetError::Connect {
            host: name.into(),
            message: e.to_string(),
        })?
        .ip();
    let refused = Arc::new(Mutex::new(None));
    let handler = TargetClient(Checker {
        host_ca: host_ca.clone(),
        name: name.to_string(),
        pinned: pinned.map(str::to_string),
        refused: refused.clone(),
    });
    // Small reads ACKed at once: sshd keeps Nagle on until the session is interactive,
    // so its key exchange would otherwise wait on our delayed ACKs.
    let stream = QuickAck(stream);
    let connect = client::connect_stream(Arc::new(client_config()), stream, handler);
    let handle = match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            if let Some(why) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(TargetError::HostKey {
                    host: name.into(),
                    why,
                });
            }
            return Err(TargetError::Ssh {
                host: name.into(),
                message: e.to_string(),
            });
        }
        Err(_) => {
            return Err(TargetError::Timeout {
                host: name.into(),
                limit,
            });
        }
    };
    Ok((handle, egress))
}

/// Logs in as `login` with the per-session key and certificate.
pub async fn login(
    handle: &mut TargetHandle,
    name: &str,
    login: &str,
    key: PrivateKey,
    cert: Certificate,
) -> Result<(), TargetError> {
    let r = handle
        .authenticate_openssh_cert(login, Arc::new(key), cert)
        .await
        .map_err(|e| TargetError::Ssh {
            host: name.into(),
            message: e.to_string(),
        })?;
    if r.success() {
        Ok(())
    } else {
        Err(TargetError::Login {
            host: name.into(),
            login: login.into(),
        })
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
