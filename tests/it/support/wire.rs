//! A russh client, to send what the OpenSSH client will not: host certificates, "forever"
//! certificates, empty principals, forged signatures, hostile user names, many channels.

use std::sync::Arc;
use std::time::Duration;

use ssh_key::certificate::Builder;

pub struct AnyServer;
impl russh::client::Handler for AnyServer {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A certificate for `user` signed by `ca` (key id `alice`, serial 4242), with `edit`
/// applied to the builder.
pub fn cert(
    ca: &ssh_key::PrivateKey,
    user: &ssh_key::PrivateKey,
    after: u64,
    before: u64,
    edit: impl FnOnce(&mut Builder),
) -> ssh_key::Certificate {
    cert_with(ca, user, "alice", 4242, after, before, edit)
}

/// [`cert`] with the key id and serial given.
pub fn cert_with(
    ca: &ssh_key::PrivateKey,
    user: &ssh_key::PrivateKey,
    key_id: &str,
    serial: u64,
    after: u64,
    before: u64,
    edit: impl FnOnce(&mut Builder),
) -> ssh_key::Certificate {
    let mut b = Builder::new(
        [1u8; 16],
        user.public_key().key_data().clone(),
        after,
        before,
    )
    .unwrap();
    b.key_id(key_id).unwrap();
    b.serial(serial).unwrap();
    edit(&mut b);
    b.sign(ca).unwrap()
}

/// Connects without authenticating.
pub async fn connect(port: u16) -> russh::client::Handle<AnyServer> {
    let config = Arc::new(russh::client::Config::default());
    russh::client::connect(config, ("127.0.0.1", port), AnyServer)
        .await
        .unwrap()
}

/// Logs in as `wire` with `cert`; whether the server accepted it.
pub async fn login(
    port: u16,
    key: &ssh_key::PrivateKey,
    cert: ssh_key::Certificate,
) -> (russh::client::Handle<AnyServer>, bool) {
    login_as(port, "wire", key, cert).await
}

/// Logs in as `user` with `cert`; whether the server accepted it.
pub async fn login_as(
    port: u16,
    user: &str,
    key: &ssh_key::PrivateKey,
    cert: ssh_key::Certificate,
) -> (russh::client::Handle<AnyServer>, bool) {
    let mut h = connect(port).await;
    let ok = h
        .authenticate_openssh_cert(user, Arc::new(key.clone()), cert)
        .await
        .map(|r| r.success())
        .unwrap_or(false);
    (h, ok)
}

/// Awaits `f` at most 20 s.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// A current-thread tokio runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-threaded runtime, so a client's connection tasks still run (and close) once
/// `block_on` has returned.
pub fn threaded_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The key of an `ssh-keygen` key file.
pub fn read_key(path: &std::path::Path) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::read_openssh_file(path).unwrap()
}

/// Signs whatever russh asks with `key`, whatever key or certificate was offered: "key A
/// offered, signature made with key B" (docs/threats.md T12).
pub struct SignWith(pub ssh_key::PrivateKey);

impl russh::Signer for SignWith {
    type Error = russh::AgentAuthError;
    async fn auth_sign(
        &mut self,
        _offered: &russh::keys::agent::AgentIdentity,
        _hash_alg: Option<ssh_key::HashAlg>,
        to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        use russh::keys::signature::Signer;
        use ssh_key::encoding::Encode;
        let sig: ssh_key::Signature = self.0.try_sign(&to_sign).unwrap();
        let mut blob = Vec::new();
        sig.encode(&mut blob).unwrap();
        Ok(signed(to_sign, &blob))
    }
}

/// What a russh signer returns: the data it was given with the signature blob appended
/// (as an SSH string), as an agent's answer is.
pub fn signed(mut to_sign: Vec<u8>, blob: &[u8]) -> Vec<u8> {
    to_sign.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    to_sign.extend_from_slice(blob);
    to_sign
}

/// `cert` re-signed so that its signing key is `signer_blob` (e.g. a certificate), the
/// signature made by `ca` over the edited bytes (docs/threats.md T10).
pub fn with_signing_key(
    cert: &ssh_key::Certificate,
    signer_blob: &[u8],
    ca: &ssh_key::PrivateKey,
) -> Vec<u8> {
    use russh::keys::signature::Signer;
    use ssh_key::encoding::Encode;
    let bytes = cert.to_bytes().unwrap();
    let ca_blob = ca.public_key().to_bytes().unwrap();
    let pos = bytes
        .windows(ca_blob.len())
        .position(|w| w == ca_blob.as_slice())
        .unwrap();
    // `pos` is just after the 4-byte length prefix of the signing key blob.
    let mut tbs = bytes[..pos - 4].to_vec();
    tbs.extend_from_slice(&(signer_blob.len() as u32).to_be_bytes());
    tbs.extend_from_slice(signer_blob);
    let sig: ssh_key::Signature = ca.try_sign(&tbs).unwrap();
    let mut sig_blob = Vec::new();
    sig.encode(&mut sig_blob).unwrap();
    tbs.extend_from_slice(&(sig_blob.len() as u32).to_be_bytes());
    tbs.extend_from_slice(&sig_blob);
    tbs
}
