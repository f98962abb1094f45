//! The `ca/` folder: creating it, loading it, rotating the user CA.
//!
//! See `ca/README.md` for the files. Two loaders exist so that a bastion run alone
//! (`serve --bastion-only`) never opens a CA private key: [`IssuerKeys::load`] (user CA,
//! host CA, trusted user CA keys) and [`BastionKeys::load`] (trusted user CA keys, the
//! bastion's host key and host certificate).
//!
//! This file is longer than the project's usual 600 lines on purpose: creating, loading,
//! renewing and rotating the folder share its file names, its private-key writer and the
//! mode checks, and reading them in one place shows that no path writes a key another
//! path does not expect. Its unit tests live in `keys_tests.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ssh_key::{
    Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey, certificate::CertType,
};

use super::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use super::{CaError, rng};

pub const USER_CA: &str = "user_ca";
pub const USER_CA_PUB: &str = "user_ca.pub";
pub const TRUSTED_USER_CA_KEYS: &str = "trusted_user_ca_keys.pub";
pub const RETIRED: &str = "retired";
pub const HOST_CA: &str = "host_ca";
pub const HOST_CA_PUB: &str = "host_ca.pub";
pub const BASTION_HOST_KEY: &str = "bastion_host_key";
pub const BASTION_HOST_KEY_PUB: &str = "bastion_host_key.pub";
pub const BASTION_HOST_CERT: &str = "bastion_host_key-cert.pub";
pub const TOKEN_KEY: &str = "token_key";
pub const TOKEN_KEY_PUB: &str = "token_key.pub";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CRT: &str = "tls.crt";
/// Signs recorded sessions' per-session certificates in a `--bastion-only` process
/// (made by `ca init`; optional, so folders made before it still load).
pub const SESSION_CA: &str = "session_ca";
pub const SESSION_CA_PUB: &str = "session_ca.pub";

/// The files a complete key folder has. The bastion's host certificate is not listed:
/// [`ensure`] signs it again when it is missing or stale.
pub const REQUIRED_FILES: &[&str] = &[
    USER_CA,
    USER_CA_PUB,
    TRUSTED_USER_CA_KEYS,
    HOST_CA,
    HOST_CA_PUB,
    BASTION_HOST_KEY,
    BASTION_HOST_KEY_PUB,
    TOKEN_KEY,
    TOKEN_KEY_PUB,
    TLS_KEY,
    TLS_CRT,
];

/// Validity of the bastion's host certificate made by `init` / `ensure`.
pub const BASTION_CERT_VALIDITY: Duration = Duration::from_secs(52 * 7 * 24 * 3600);
/// [`ensure`] signs the bastion's host certificate again when it expires sooner than this.
pub const BASTION_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A CA private key. `Debug` shows the fingerprint only.
pub struct CaKey {
    key: PrivateKey,
}

impl CaKey {
    /// Generates a new Ed25519 CA key.
    pub fn generate(comment: &str) -> Result<CaKey, CaError> {
        let mut key =
            PrivateKey::random(&mut rng(), Algorithm::Ed25519).map_err(|e| CaError::Generate {
                what: "an Ed25519 key",
                message: e.to_string(),
            })?;
        key.set_comment(comment);
        Ok(CaKey { key })
    }

    /// Reads an OpenSSH private key file (mode checked first). Only unencrypted
    /// Ed25519 keys are CA keys here.
    pub fn load(path: &Path) -> Result<CaKey, CaError> {
        let key = load_private(path)?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(CaError::invalid(
                path,
                format!("a CA key must be Ed25519, this is {}", key.algorithm()),
            ));
        }
        Ok(CaKey { key })
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// `SHA256:...`
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    pub(crate) fn private(&self) -> &PrivateKey {
        &self.key
    }

    fn to_openssh(&self) -> Result<zeroize_string::Z, CaError> {
        private_to_openssh(&self.key)
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaKey({})", self.fingerprint())
    }
}

mod zeroize_string {
    /// Private key text, wiped from memory when dropped.
    pub type Z = ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing<String>;
}

fn private_to_openssh(key: &PrivateKey) -> Result<zeroize_string::Z, CaError> {
    key.to_openssh(LineEnding::LF)
        .map_err(|e| CaError::Generate {
            what: "OpenSSH private key text",
            message: e.to_string(),
        })
}

fn public_to_openssh(key: &PublicKey) -> Result<String, CaError> {
    key.to_openssh().map_err(|e| CaError::Generate {
        what: "OpenSSH public key text",
        message: e.to_string(),
    })
}

fn load_private(path: &Path) -> Result<PrivateKey, CaError> {
    let bytes = files::read_private(path)?;
    let key = PrivateKey::from_openssh(&bytes)
        .map_err(|e| CaError::invalid(path, format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(CaError::invalid(
            path,
            "the key is protected by a passphrase; drawbridge needs an unencrypted key file (mode 0600)",
        ));
    }
    Ok(key)
}

/// What the service needs to issue: the user CA that signs, every trusted user CA
/// public key, and the host CA.
#[derive(Debug)]
pub struct IssuerKeys {
    /// Signs user certificates.
    pub user_ca: CaKey,
    /// `trusted_user_ca_keys.pub`: the current user CA and any not yet retired.
    pub trusted_user_cas: Vec<PublicKey>,
    /// Signs host certificates.
    pub host_ca: CaKey,
    /// `session_ca.pub` when present: the `--bastion-only` bastions' per-session CA,
    /// which targets trust beside the user CA.
    pub session_ca: Option<PublicKey>,
}

impl IssuerKeys {
    /// Loads the CA keys from `dir`, refusing private files readable by group or others,
    /// and a user CA that `trusted_user_ca_keys.pub` does not list (its certificates
    /// would be refused by the bastion).
    pub fn load(dir: &Path) -> Result<IssuerKeys, CaError> {
        let user_ca = CaKey::load(&dir.join(USER_CA))?;
        let trusted_path = dir.join(TRUSTED_USER_CA_KEYS);
        let trusted_user_cas = load_trusted(&trusted_path)?;
        if !trusted_user_cas
            .iter()
            .any(|k| k.key_data() == user_ca.public_key().key_data())
        {
            return Err(CaError::invalid(
                &trusted_path,
                format!(
                    "does not list the current user CA ({}); add the line of {} to it",
                    user_ca.fingerprint(),
                    dir.join(USER_CA_PUB).display()
                ),
            ));
        }
        let host_ca = CaKey::load(&dir.join(HOST_CA))?;
        let session_path = dir.join(SESSION_CA_PUB);
        let session_ca = if session_path.exists() {
            let text = files::read_public(&session_path)?;
            Some(PublicKey::from_openssh(text.trim()).map_err(|e| {
                CaError::invalid(&session_path, format!("not an OpenSSH public key: {e}"))
            })?)
        } else {
            None
        };
        Ok(IssuerKeys {
            user_ca,
            trusted_user_cas,
            host_ca,
            session_ca,
        })
    }

    /// `GET /v1/ca`: every trusted user CA public key, one line each, then the session
    /// CA's when there is one (targets trust them all).
    pub fn ca_public_lines(&self) -> Result<String, CaError> {
        let mut keys = self.trusted_user_cas.clone();
        keys.extend(self.session_ca.iter().cloned());
        lines_of(&keys)
    }

    /// `GET /v1/known_hosts`: `@cert-authority * <host CA key>`.
    pub fn known_hosts_line(&self) -> Result<String, CaError> {
        Ok(format!(
            "@cert-authority * {}\n",
            public_to_openssh(self.host_ca.public_key())?
        ))
    }
}

/// What the SSH bastion needs; loadable without any CA private key.
pub struct BastionKeys {
    /// `trusted_user_ca_keys.pub`.
    pub trusted_user_cas: Vec<PublicKey>,
    /// `bastion_host_key`.
    pub host_key: PrivateKey,
    /// `bastion_host_key-cert.pub`, when present (checked to be a host certificate for
    /// `host_key`).
    pub host_cert: Option<Certificate>,
}

impl BastionKeys {
    /// Loads the bastion's keys from `dir`. The host key's mode is checked; the host
    /// certificate is optional, but when present it must be a host certificate of
    /// `bastion_host_key`.
    pub fn load(dir: &Path) -> Result<BastionKeys, CaError> {
        let trusted_user_cas = load_trusted(&dir.join(TRUSTED_USER_CA_KEYS))?;
        let key_path = dir.join(BASTION_HOST_KEY);
        let host_key = load_private(&key_path)?;
        let cert_path = dir.join(BASTION_HOST_CERT);
        let host_cert = if cert_path.exists() {
            let cert = read_cert(&cert_path)?;
            if cert.cert_type() != CertType::Host {
                return Err(CaError::invalid(&cert_path, "is not a host certificate"));
            }
            if cert.public_key() != host_key.public_key().key_data() {
                return Err(CaError::invalid(
                    &cert_path,
                    format!(
                        "certifies another key than {} ({}); sign it again with `drawbridge ca sign-host`",
                        key_path.display(),
                        host_key.fingerprint(HashAlg::Sha256)
                    ),
                ));
            }
            Some(cert)
        } else {
            None
        };
        Ok(BastionKeys {
            trusted_user_cas,
            host_key,
            host_cert,
        })
    }
}

impl fmt::Debug for BastionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BastionKeys")
            .field(
                "trusted_user_cas",
                &self
                    .trusted_user_cas
                    .iter()
                    .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "host_key",
                &self.host_key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .field(
                "host_cert_serial",
                &self.host_cert.as_ref().map(|c| c.serial()),
            )
            .finish()
    }
}

fn read_cert(path: &Path) -> Result<Certificate, CaError> {
    let text = files::read_public(path)?;
    Certificate::from_openssh(text.trim())
        .map_err(|e| CaError::invalid(path, format!("not an OpenSSH certificate: {e}")))
}

/// Parses a file of OpenSSH public key lines (blank lines and `#` comments skipped).
/// A certificate is refused: a CA key must be a plain key (docs/threats.md T10).
pub fn load_trusted(path: &Path) -> Result<Vec<PublicKey>, CaError> {
    let text = files::read_public(path)?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line
            .split_ascii_whitespace()
            .next()
            .is_some_and(|t| t.ends_with("-cert-v01@openssh.com"))
        {
            return Err(CaError::invalid(
                path,
                format!("line {}: a certificate cannot be a CA key", i + 1),
            ));
        }
        let key = PublicKey::from_openssh(line).map_err(|e| {
            CaError::invalid(
                path,
                format!("line {}: not an OpenSSH public key: {e}", i + 1),
            )
        })?;
        if key.key_data().is_certificate() {
            return Err(CaError::invalid(
                path,
                format!("line {}: a certificate cannot be a CA key", i + 1),
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(CaError::invalid(path, "lists no user CA key"));
    }
    Ok(keys)
}

fn lines_of(keys: &[PublicKey]) -> Result<String, CaError> {
    let mut out = String::new();
    for k in keys {
        out.push_str(&public_to_openssh(k)?);
        out.push('\n');
    }
    Ok(out)
}

/// `GET /v1/ca`: the trusted user CA public keys of `dir`, one line each.
pub fn ca_public_lines(dir: &Path) -> Result<String, CaError> {
    lines_of(&load_trusted(&dir.join(TRUSTED_USER_CA_KEYS))?)
}

/// `GET /v1/known_hosts`: `@cert-authority * <host CA public key>` from `dir/host_ca.pub`.
pub fn known_hosts_line(dir: &Path) -> Result<String, CaError> {
    let path = dir.join(HOST_CA_PUB);
    let text = files::read_public(&path)?;
    let key = PublicKey::from_openssh(text.trim())
        .map_err(|e| CaError::invalid(&path, format!("not an OpenSSH public key: {e}")))?;
    Ok(format!("@cert-authority * {}\n", public_to_openssh(&key)?))
}

/// The TLS certificate chain and private key for rustls, from `tls.crt` / `tls.key`.
pub fn load_tls(
    dir: &Path,
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    CaError,
> {
    use rustls_pki_types::pem::PemObject;
    let crt_path = dir.join(TLS_CRT);
    let key_path = dir.join(TLS_KEY);
    let crt = files::read_public(&crt_path)?;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(crt.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::invalid(&crt_path, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(CaError::invalid(&crt_path, "holds no PEM certificate"));
    }
    let key_pem = files::read_private(&key_path)?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| CaError::invalid(&key_path, format!("not a PEM private key: {e}")))?;
    Ok((chain, key))
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The folder had no keys: every file was created (paths listed).
    Created(Vec<PathBuf>),
    /// The folder was complete. `host_cert_renewed` says why the bastion's host
    /// certificate was signed again, if it was.
    Complete { host_cert_renewed: Option<String> },
}

/// For `serve`: makes sure `dir` holds a complete key folder.
///
/// - no key file at all: creates everything (as `ca init`);
/// - complete: changes nothing, except that the bastion's host certificate is signed
///   again when it is missing, unreadable, made for another key or host CA, names other
///   principals than `host_names`, or expires within 30 days;
/// - partial: an error naming the missing files (never generates a lone CA key next
///   to old ones).
pub fn ensure(dir: &Path, host_names: &[String]) -> Result<InitOutcome, CaError> {
    let missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| f.to_string())
        .collect();
    if missing.len() == REQUIRED_FILES.len() && !dir.join(BASTION_HOST_CERT).exists() {
        return init(dir, host_names, SystemTime::now()).map(InitOutcome::Created);
    }
    if !missing.is_empty() {
        return Err(CaError::Incomplete {
            dir: dir.to_path_buf(),
            missing,
        });
    }
    check_host_names(host_names)?;
    let now = SystemTime::now();
    let reason = bastion_cert_renewal(dir, host_names, now)?;
    if let Some(reason) = &reason {
        sign_bastion_cert(dir, host_names, now)?;
        tracing::info!(reason = %reason, "signed the bastion's host certificate again");
    }
    Ok(InitOutcome::Complete {
        host_cert_renewed: reason,
    })
}

/// Why the bastion's host certificate should be signed again, or `None` if it is fine.
fn bastion_cert_renewal(
    dir: &Path,
    host_names: &[String],
    now: SystemTime,
) -> Result<Option<String>, CaError> {
    let cert_path = dir.join(BASTION_HOST_CERT);
    if !cert_path.exists() {
        return Ok(Some("it was missing".into()));
    }
    let cert = match read_cert(&cert_path) {
        Ok(c) => c,
        Err(e) => return Ok(Some(format!("it could not be read ({e})"))),
    };
    let host_pub = read_public_key(&dir.join(BASTION_HOST_KEY_PUB))?;
    let host_ca_pub = read_public_key(&dir.join(HOST_CA_PUB))?;
    if cert.cert_type() != CertType::Host {
        return Ok(Some("it was not a host certificate".into()));
    }
    if cert.public_key() != host_pub.key_data() {
        return Ok(Some(
            "it certified another key than bastion_host_key".into(),
        ));
    }
    if cert.signature_key() != host_ca_pub.key_data() {
        return Ok(Some("it was signed by another host CA".into()));
    }
    let mut have: Vec<&str> = cert.valid_principals().iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    let want = host_principals(host_names);
    let want_refs: Vec<&str> = want.iter().map(String::as_str).collect();
    if have != want_refs {
        return Ok(Some(format!(
            "its principals ({}) differ from ssh.host_names ({})",
            have.join(", "),
            want_refs.join(", ")
        )));
    }
    let renew_at = crate::util::unix_secs(now + BASTION_CERT_RENEW_BEFORE);
    if cert.valid_before() < renew_at {
        return Ok(Some("it expires within 30 days".into()));
    }
    Ok(None)
}

/// `ssh.host_names` must name something, and each name must be one token.
fn check_host_names(host_names: &[String]) -> Result<(), CaError> {
    let bad = |message: String| CaError::Generate {
        what: "the bastion's host certificate",
        message,
    };
    if host_principals(host_names).is_empty() {
        return Err(bad("ssh.host_names is empty".into()));
    }
    if let Some(n) = host_names.iter().find(|n| {
        n.trim()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    }) {
        return Err(bad(format!(
            "ssh.host_names: \"{}\" holds white space, a comma or a control character",
            crate::util::escape(n)
        )));
    }
    Ok(())
}

fn host_principals(host_names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = host_names.iter().map(|s| s.trim().to_string()).collect();
    v.retain(|s| !s.is_empty());
    v.sort_unstable();
    v.dedup();
    v
}

fn read_public_key(path: &Path) -> Result<PublicKey, CaError> {
    let text = files::read_public(path)?;
    PublicKey::from_openssh(text.trim())
        .map_err(|e| CaError::invalid(path, format!("not an OpenSSH public key: {e}")))
}

fn sign_bastion_cert(dir: &Path, host_names: &[String], now: SystemTime) -> Result<(), CaError> {
    let host_ca = CaKey::load(&dir.join(HOST_CA))?;
    let host_pub = read_public_key(&dir.join(BASTION_HOST_KEY_PUB))?;
    let signed = super::sign::sign_host_cert(
        &host_ca,
        &host_pub,
        &host_principals(host_names),
        BASTION_CERT_VALIDITY,
        now,
    )?;
    let line = signed.openssh_line()?;
    files::write_atomic(&dir.join(BASTION_HOST_CERT), line.as_bytes(), PUBLIC_MODE)
}

/// `ca init`: creates every key file in `dir` (the folder with mode 0700 if it does not
/// exist). Refuses, naming the file, if any key file is already there; nothing is
/// written in that case. Returns the files created.
pub fn init(dir: &Path, host_names: &[String], now: SystemTime) -> Result<Vec<PathBuf>, CaError> {
    check_host_names(host_names)?;
    for f in REQUIRED_FILES
        .iter()
        .chain([&BASTION_HOST_CERT, &SESSION_CA, &SESSION_CA_PUB])
    {
        let p = dir.join(f);
        if p.exists() {
            return Err(CaError::Exists(p));
        }
    }
    // Everything is generated in memory first, so a failure (say, a host name the TLS
    // certificate cannot carry) leaves no half-made folder behind.
    let stamp = crate::util::rfc3339(now);
    let mut out: Vec<(&str, zeroize_string::Z, u32)> = Vec::new();
    let z = |s: String| zeroize_string::Z::new(s);

    let user_ca = CaKey::generate(&format!("drawbridge user CA {stamp}"))?;
    let user_pub = public_to_openssh(user_ca.public_key())? + "\n";
    out.push((USER_CA, user_ca.to_openssh()?, PRIVATE_MODE));
    out.push((USER_CA_PUB, z(user_pub.clone()), PUBLIC_MODE));
    out.push((TRUSTED_USER_CA_KEYS, z(user_pub), PUBLIC_MODE));

    let host_ca = CaKey::generate(&format!("drawbridge host CA {stamp}"))?;
    out.push((HOST_CA, host_ca.to_openssh()?, PRIVATE_MODE));
    let host_ca_pub = public_to_openssh(host_ca.public_key())? + "\n";
    out.push((HOST_CA_PUB, z(host_ca_pub), PUBLIC_MODE));

    let host_key = CaKey::generate("drawbridge bastion host key")?;
    out.push((BASTION_HOST_KEY, host_key.to_openssh()?, PRIVATE_MODE));
    let host_key_pub = public_to_openssh(host_key.public_key())? + "\n";
    out.push((BASTION_HOST_KEY_PUB, z(host_key_pub), PUBLIC_MODE));
    let cert = super::sign::sign_host_cert(
        &host_ca,
        host_key.public_key(),
        &host_principals(host_names),
        BASTION_CERT_VALIDITY,
        now,
    )?;
    out.push((BASTION_HOST_CERT, z(cert.openssh_line()?), PUBLIC_MODE));

    let session_ca = CaKey::generate(&format!("drawbridge session CA {stamp}"))?;
    out.push((SESSION_CA, session_ca.to_openssh()?, PRIVATE_MODE));
    let session_ca_pub = public_to_openssh(session_ca.public_key())? + "\n";
    out.push((SESSION_CA_PUB, z(session_ca_pub), PUBLIC_MODE));

    let (token_private, token_public) = token_key_pem()?;
    out.push((TOKEN_KEY, token_private, PRIVATE_MODE));
    out.push((TOKEN_KEY_PUB, z(token_public), PUBLIC_MODE));

    let (tls_key, tls_crt) = tls_pem(host_names, now)?;
    out.push((TLS_KEY, tls_key, PRIVATE_MODE));
    out.push((TLS_CRT, z(tls_crt), PUBLIC_MODE));

    files::create_dir(dir)?;
    let mut created = Vec::new();
    for (name, bytes, mode) in &out {
        let p = dir.join(name);
        files::write_new(&p, bytes.as_bytes(), *mode)?;
        created.push(p);
    }
    Ok(created)
}

/// A new Ed25519 key as (PKCS#8 PEM private key, SPKI PEM public key).
fn token_key_pem() -> Result<(zeroize_string::Z, String), CaError> {
    use ed25519_dalek::pkcs8::{
        EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding as PemLineEnding,
    };
    let mut seed = ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| CaError::Generate {
        what: "the token key",
        message: e.to_string(),
    })?;
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let gen_err = |e: &dyn fmt::Display| CaError::Generate {
        what: "the token key",
        message: e.to_string(),
    };
    let private = signing
        .to_pkcs8_pem(PemLineEnding::LF)
        .map_err(|e| gen_err(&e))?;
    let public = signing
        .verifying_key()
        .to_public_key_pem(PemLineEnding::LF)
        .map_err(|e| gen_err(&e))?;
    Ok((private, public))
}

/// Writes a new Ed25519 token signing key: `private` as PKCS#8 PEM (0600), `public` as
/// SPKI PEM (0644), for JWT EdDSA. Refuses to overwrite either file.
pub fn write_token_key(private: &Path, public: &Path) -> Result<(), CaError> {
    for p in [private, public] {
        if p.exists() {
            return Err(CaError::Exists(p.to_path_buf()));
        }
    }
    let (private_pem, public_pem) = token_key_pem()?;
    files::write_new(private, private_pem.as_bytes(), PRIVATE_MODE)?;
    files::write_new(public, public_pem.as_bytes(), PUBLIC_MODE)
}

/// A self-signed TLS certificate (ECDSA P-256) for `host_names`, `localhost`,
/// `127.0.0.1` and `::1`, valid from today for two years: (key PEM, certificate PEM).
/// It is not a CA certificate, so clients take it as a trust anchor for exactly this
/// server (`curl --cacert ca/tls.crt`, reqwest `add_root_certificate`).
fn tls_pem(host_names: &[String], now: SystemTime) -> Result<(zeroize_string::Z, String), CaError> {
    let gen_err = |e: rcgen::Error| CaError::Generate {
        what: "the TLS certificate",
        message: e.to_string(),
    };
    let mut sans: Vec<String> = Vec::new();
    for n in host_names.iter().map(|s| s.trim().to_string()).chain([
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ]) {
        if !n.is_empty() && !sans.contains(&n) {
            sans.push(n);
        }
    }
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::new(sans.clone()).map_err(gen_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("drawbridge {}", sans[0]));
    params.distinguished_name = dn;
    let (y, m, d) = ymd(now);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + 2, m, d.min(28));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((zeroize_string::Z::new(key.serialize_pem()), cert.pem()))
}

/// UTC year, month, day of `t`.
fn ymd(t: SystemTime) -> (i32, u8, u8) {
    let s = crate::util::rfc3339(t); // 2026-11-25T06:00:00Z
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i32>().ok());
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m as u8, d as u8),
        _ => (1970, 1, 1),
    }
}

/// What `ca rotate` did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Fingerprint of the new user CA, which signs from now on.
    pub new_fingerprint: String,
    /// Fingerprint of the previous user CA, still trusted.
    pub old_fingerprint: String,
    /// Where the previous user CA's private key was kept.
    pub retired: PathBuf,
}

/// `ca rotate`: a new user CA becomes `user_ca` / `user_ca.pub`; the old private key is
/// kept as `retired/user_ca-<UTC time>` (0600) and its public key stays in
/// `trusted_user_ca_keys.pub` (the new one is appended) until an operator deletes its
/// line. Each file is replaced atomically; at no moment is there no `user_ca`.
pub fn rotate(dir: &Path, now: SystemTime) -> Result<Rotation, CaError> {
    let user_ca_path = dir.join(USER_CA);
    let old_bytes = files::read_private(&user_ca_path)?;
    let old = CaKey::load(&user_ca_path)?;
    let trusted_path = dir.join(TRUSTED_USER_CA_KEYS);
    let trusted_text = files::read_public(&trusted_path)?;
    let trusted = load_trusted(&trusted_path)?;

    let stamp = crate::util::rfc3339(now);
    let compact: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    let new = CaKey::generate(&format!("drawbridge user CA {stamp}"))?;
    let new_pub = public_to_openssh(new.public_key())?;

    // 1. Keep the old private key.
    let retired_dir = dir.join(RETIRED);
    files::create_dir(&retired_dir)?;
    let retired = retired_dir.join(format!("{USER_CA}-{compact}"));
    files::write_new(&retired, &old_bytes, PRIVATE_MODE)?;

    // 2. Trust the new key (and keep the old one) before it signs anything.
    let mut new_trusted = trusted_text.clone();
    if !new_trusted.is_empty() && !new_trusted.ends_with('\n') {
        new_trusted.push('\n');
    }
    if !trusted
        .iter()
        .any(|k| k.key_data() == old.public_key().key_data())
    {
        new_trusted.push_str(&public_to_openssh(old.public_key())?);
        new_trusted.push('\n');
    }
    new_trusted.push_str(&new_pub);
    new_trusted.push('\n');
    files::write_atomic(&trusted_path, new_trusted.as_bytes(), PUBLIC_MODE)?;

    // 3. The new key signs from now on.
    files::write_atomic(&user_ca_path, new.to_openssh()?.as_bytes(), PRIVATE_MODE)?;
    files::write_atomic(
        &dir.join(USER_CA_PUB),
        (new_pub + "\n").as_bytes(),
        PUBLIC_MODE,
    )?;
    Ok(Rotation {
        new_fingerprint: new.fingerprint(),
        old_fingerprint: old.fingerprint(),
        retired,
    })
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
