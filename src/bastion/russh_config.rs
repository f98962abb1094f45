//! The russh server configuration: the algorithm policy (ciphers, key and KEX lists), the
//! authentication methods, the channel window and packet limits, the idle timeout.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::ssh_key::{self, Certificate};
use russh::{MethodKind, MethodSet, Preferred, SshId};

use crate::config::SshConfig;

/// russh's per-channel queue of client data not yet read by us, in packets (of up to
/// [`MAX_CHANNEL_PACKET`]): 32 × 32 KiB = 1 MiB per forward at most (F11). When it is
/// full russh stops reading the connection, so TCP pushes back on the client.
const CHANNEL_BUFFER_PACKETS: usize = 32;

/// The maximum packet size we announce for our channels (RFC 4254 §5.1): the most data
/// one CHANNEL_DATA may carry. russh does not enforce it (it takes up to its 256 KiB
/// transport limit), so [`Handler::data`] does: a client sending more is disconnected,
/// or one forward could hold 32 × 256 KiB = 8 MiB in russh's queue (docs/threats.md T20).
pub(super) const MAX_CHANNEL_PACKET: u32 = 32 * 1024;

/// The window each channel grants the client (russh's default, named because a recorded
/// channel's queue to its target is bounded by it).
pub(super) const CHANNEL_WINDOW: u32 = 2 * 1024 * 1024;

/// Builds russh's configuration from ours.
pub(super) fn russh_config(
    cfg: &SshConfig,
    host_key: ssh_key::PrivateKey,
    host_cert: Option<Certificate>,
) -> anyhow::Result<russh::server::Config> {
    let cipher = if cfg.ciphers.is_empty() {
        vec![
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_256_CTR,
        ]
    } else {
        let allowed = [
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_128_GCM,
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_256_CTR,
        ];
        let mut out = Vec::new();
        for name in &cfg.ciphers {
            match allowed.iter().find(|a| a.as_ref() == name.as_str()) {
                Some(n) => out.push(*n),
                None => anyhow::bail!(
                    "ssh.ciphers: unknown or refused cipher {name:?} (allowed: {})",
                    allowed
                        .iter()
                        .map(|a| a.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        out
    };
    // Host and user key algorithms: no SHA-1 RSA (`ssh-rsa`), no DSA (row 13).
    let key: Vec<ssh_key::Algorithm> = Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| {
            !matches!(
                a,
                ssh_key::Algorithm::Rsa { hash: None } | ssh_key::Algorithm::Dsa
            )
        })
        .cloned()
        .collect();
    // Strict KEX (Terrapin, row 21): russh's default KEX list carries
    // `kex-strict-s-v00@openssh.com`; keep it and fail loudly if it ever goes away.
    let kex = Preferred::DEFAULT.kex.clone();
    if !kex.contains(&russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER) {
        anyhow::bail!("russh's default KEX list lost strict KEX; refusing to start");
    }
    if let Some(c) = &host_cert
        && c.public_key() != host_key.public_key().key_data()
    {
        anyhow::bail!("the bastion host certificate is not for the bastion host key");
    }
    Ok(russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-drawbridge")),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: host_cert.into_iter().collect(),
        inactivity_timeout: Some(cfg.idle_timeout),
        keepalive_interval: None,
        max_auth_attempts: cfg.max_auth_attempts,
        nodelay: true,
        channel_buffer_size: CHANNEL_BUFFER_PACKETS,
        maximum_packet_size: MAX_CHANNEL_PACKET,
        window_size: CHANNEL_WINDOW,
        preferred: Preferred {
            kex,
            key: Cow::Owned(key),
            cipher: Cow::Owned(cipher),
            ..Preferred::DEFAULT
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    /// With the default `openssl` feature, chacha20-poly1305@openssh.com (the OpenSSH
    /// client's default cipher) runs on libcrypto. If the fork fell back to aws-lc without a
    /// word (libcrypto's Poly1305 not found, a broken init), every connection would still
    /// work and only the benchmark would notice: 2.4× the CPU per byte.
    #[cfg(feature = "openssl")]
    #[test]
    fn chacha20_poly1305_runs_on_libcrypto() {
        assert_eq!(
            russh::cipher::chacha20_poly1305_implementation(),
            "libcrypto"
        );
    }
}
