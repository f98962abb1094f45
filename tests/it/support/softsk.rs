//! A software security key: an `sk-ssh-ed25519@openssh.com` authenticator that signs with
//! the flags the test chooses (user presence or not), and a login with it over the raw
//! SSH client. Stands in for hardware the test machine does not have.

use std::net::SocketAddr;

use super::rawssh_session::Session;

/// A software `sk-ssh-ed25519@openssh.com` authenticator (application `ssh:`): the
/// public key line, and a signer of SSH signature blobs with chosen flags.
pub struct SoftSk {
    key: ed25519_dalek::SigningKey,
}

impl Default for SoftSk {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftSk {
    const APPLICATION: &'static str = "ssh:";

    /// The flag for "the user touched the key" (user presence).
    pub const USER_PRESENT: u8 = 0x01;

    pub fn new() -> SoftSk {
        SoftSk {
            key: super::idp::signing_key(),
        }
    }

    pub fn public_line(&self) -> String {
        let pk = ssh_key::public::Ed25519PublicKey(self.key.verifying_key().to_bytes());
        let data = ssh_key::public::KeyData::SkEd25519(ssh_key::public::SkEd25519::new(
            pk,
            Self::APPLICATION,
        ));
        ssh_key::PublicKey::new(data, "soft-sk")
            .to_openssh()
            .unwrap()
    }

    /// The signature blob (PROTOCOL.u2f): the authenticator signs SHA-256(application) ‖
    /// flags ‖ counter ‖ SHA-256(data).
    pub fn sign(&self, data: &[u8], flags: u8, counter: u32) -> Vec<u8> {
        use ed25519_dalek::Signer;
        use sha2::{Digest, Sha256};
        let mut to_sign = Sha256::digest(Self::APPLICATION.as_bytes()).to_vec();
        to_sign.push(flags);
        to_sign.extend_from_slice(&counter.to_be_bytes());
        to_sign.extend_from_slice(&Sha256::digest(data));
        let sig = self.key.sign(&to_sign).to_bytes();
        let mut blob = Vec::new();
        for part in [b"sk-ssh-ed25519@openssh.com".as_slice(), sig.as_slice()] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        blob.push(flags);
        blob.extend_from_slice(&counter.to_be_bytes());
        blob
    }

    /// Logs in to `addr` as `user` with `cert` (for this key), the signature made with
    /// `flags`. Whether the server accepted it.
    pub fn login(
        &self,
        addr: SocketAddr,
        user: &str,
        cert: &ssh_key::Certificate,
        flags: u8,
    ) -> bool {
        let mut s = Session::connect(addr);
        s.authenticate_signed(user, cert, |data| self.sign(data, flags, 7))
    }
}

impl SoftSk {
    /// A russh signer signing with this key and `flags` (for a russh client's
    /// `authenticate_certificate_with`).
    pub fn signer(&self, flags: u8) -> SkSigner<'_> {
        SkSigner { sk: self, flags }
    }
}

/// [`SoftSk`] as a russh signer: what it returns is the data with the signature blob
/// appended, as an agent's answer is.
pub struct SkSigner<'a> {
    sk: &'a SoftSk,
    flags: u8,
}

impl russh::Signer for SkSigner<'_> {
    type Error = russh::AgentAuthError;
    async fn auth_sign(
        &mut self,
        _offered: &russh::keys::agent::AgentIdentity,
        _hash_alg: Option<ssh_key::HashAlg>,
        to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        let blob = self.sk.sign(&to_sign, self.flags, 9);
        Ok(super::wire::signed(to_sign, &blob))
    }
}
