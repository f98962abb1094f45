//! The keys of the recorded path: the host key and certificates the bastion presents
//! inside the channel, the host CA the targets' certificates must chain to, and the key
//! that signs per-session certificates.
//!
//! In one process (issuer and bastion together) the inner host key is made in memory at
//! start, and a host certificate for each recorded host (its inventory name and address)
//! is signed by the host CA whenever the policy version changes (so at start and on every
//! reload) or the certificate is past half its life. A `--bastion-only` process holds no
//! host CA: it presents `ca/recorded_host_key` with the certificate
//! `ca/recorded_host_key-cert.pub` made by `drawbridge ca sign-host` for the recorded
//! hosts' names and addresses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};

use crate::issuer::CaKey;
use crate::policy::Host;

pub use crate::issuer::keys::SESSION_CA;
/// `ca/recorded_host_key`: the key a `--bastion-only` bastion presents inside recorded
/// hosts' channels.
pub const RECORDED_HOST_KEY: &str = "recorded_host_key";
/// Its host certificate (`drawbridge ca sign-host`), naming every recorded host.
pub const RECORDED_HOST_CERT: &str = "recorded_host_key-cert.pub";

/// How long an inner host certificate made in one process is valid.
const INNER_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Where the inner host certificates come from.
pub enum InnerHost {
    /// One process: signed here, per recorded host, with the host CA.
    Signed {
        host_ca: CaKey,
        key: PrivateKey,
        /// host name → (address, policy version, certificate, made at)
        made: Mutex<HashMap<String, (String, String, Certificate, SystemTime)>>,
    },
    /// `--bastion-only`: one key and one certificate (from `ca sign-host`) for every
    /// recorded host; its principals must name the host.
    Fixed { key: PrivateKey, cert: Certificate },
}

/// Everything the recorded path signs or checks with.
pub struct RecordingKeys {
    /// Signs per-session certificates: the user CA in one process, `ca/session_ca` in a
    /// `--bastion-only` one.
    pub session_signer: CaKey,
    /// Targets' host certificates must be signed by this key.
    pub host_ca: PublicKey,
    pub inner: InnerHost,
}

impl std::fmt::Debug for RecordingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingKeys")
            .field("session_signer", &self.session_signer)
            .field(
                "host_ca",
                &self.host_ca.fingerprint(HashAlg::Sha256).to_string(),
            )
            .finish()
    }
}

impl RecordingKeys {
    /// One process: a fresh inner host key, certificates signed by `host_ca`.
    pub fn in_process(user_ca: CaKey, host_ca: CaKey) -> Result<RecordingKeys, String> {
        let key = PrivateKey::random(&mut crate::issuer::rng(), Algorithm::Ed25519)
            .map_err(|e| format!("cannot make the recorded hosts' key: {e}"))?;
        Ok(RecordingKeys {
            session_signer: user_ca,
            host_ca: host_ca.public_key().clone(),
            inner: InnerHost::Signed {
                host_ca,
                key,
                made: Mutex::new(HashMap::new()),
            },
        })
    }

    /// `--bastion-only`: `session_ca` signs per-session certificates; `host_ca.pub` checks
    /// the targets; `recorded_host_key` with `recorded_host_key-cert.pub` (made by
    /// `drawbridge ca sign-host`, naming every recorded host) is presented inside the
    /// channel.
    pub fn bastion_only(dir: &std::path::Path) -> Result<RecordingKeys, String> {
        let session_signer = CaKey::load(&dir.join(SESSION_CA)).map_err(|e| e.to_string())?;
        let host_ca_path = dir.join(crate::issuer::keys::HOST_CA_PUB);
        let text = std::fs::read_to_string(&host_ca_path)
            .map_err(|e| format!("{}: {e}", host_ca_path.display()))?;
        let host_ca = PublicKey::from_openssh(text.trim())
            .map_err(|e| format!("{}: {e}", host_ca_path.display()))?;
        let key_path = dir.join(RECORDED_HOST_KEY);
        crate::issuer::check_private_mode(&key_path).map_err(|e| e.to_string())?;
        let key_text = std::fs::read_to_string(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key = PrivateKey::from_openssh(key_text.trim())
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let cert_path = dir.join(RECORDED_HOST_CERT);
        let cert_text = std::fs::read_to_string(&cert_path)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let cert = Certificate::from_openssh(cert_text.trim())
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        if cert.public_key() != key.public_key().key_data() {
            return Err(format!(
                "{} certifies another key than {}",
                cert_path.display(),
                key_path.display()
            ));
        }
        Ok(RecordingKeys {
            session_signer,
            host_ca,
            inner: InnerHost::Fixed { key, cert },
        })
    }

    /// The key and certificate to present for `host` under policy `version`, or why
    /// there is none (a fixed certificate that does not name the host).
    pub fn inner_for(
        &self,
        host: &Host,
        version: &str,
        now: SystemTime,
    ) -> Result<(PrivateKey, Certificate), String> {
        match &self.inner {
            InnerHost::Fixed { key, cert } => {
                if cert.valid_principals().iter().any(|p| p == &host.name) {
                    Ok((key.clone(), cert.clone()))
                } else {
                    Err(format!(
                        "the recorded hosts' certificate does not name {}; sign it again with \
                         `drawbridge ca sign-host`",
                        host.name
                    ))
                }
            }
            InnerHost::Signed { host_ca, key, made } => {
                let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((addr, v, cert, at)) = made.get(&host.name)
                    && addr == &host.address
                    && v == version
                    && now.duration_since(*at).unwrap_or(Duration::ZERO) < INNER_CERT_VALIDITY / 2
                {
                    return Ok((key.clone(), cert.clone()));
                }
                let names = vec![host.name.clone(), host.address.clone()];
                let signed = crate::issuer::sign_host_cert(
                    host_ca,
                    key.public_key(),
                    &names,
                    INNER_CERT_VALIDITY,
                    now,
                )
                .map_err(|e| format!("cannot sign the host certificate of {}: {e}", host.name))?;
                made.insert(
                    host.name.clone(),
                    (
                        host.address.clone(),
                        version.to_string(),
                        signed.certificate.clone(),
                        now,
                    ),
                );
                Ok((key.clone(), signed.certificate))
            }
        }
    }
}
