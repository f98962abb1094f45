//! A Git commit's SSH signature: the `gpgsig` header of the commit object holds an
//! armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`) over the commit object without that
//! header, in the namespace `git` (what `git commit -S` writes with `gpg.format = ssh`).
//! Checked here with the `ssh-key` crate against an allowed_signers file; no `gpg` and no
//! `ssh-keygen` runs.

use std::time::SystemTime;

use ssh_key::{HashAlg, SshSig};

use super::signers::{AllowedSigners, GIT_NAMESPACE, NotAllowed};
use crate::audit::RefusalCode;

/// A commit object's parts this check needs.
#[derive(Debug, Clone)]
pub struct CommitObject {
    /// The tree the commit names (hex), read from the signed bytes.
    pub tree: String,
    pub parents: Vec<String>,
    /// The committer's e-mail address (between `<` and `>`).
    pub committer_email: String,
    /// The armored signature, when the commit carries one.
    pub signature: Option<String>,
    /// The bytes the signature covers: the object without its `gpgsig` header.
    pub payload: Vec<u8>,
}

/// Who signed a commit that passed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The principals of the allowed_signers line that applied.
    pub principals: String,
    /// `file:line` of that line.
    pub line: String,
    /// SHA-256 fingerprint of the signing key.
    pub fingerprint: String,
}

/// Why a commit is not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Splits a raw commit object (as `git cat-file commit` prints it) into the parts
/// checked. More than one `gpgsig` header, or a malformed header, is an error.
pub fn parse_commit(raw: &[u8]) -> Result<CommitObject, String> {
    let (head, _) = split_at_blank(raw).ok_or("no blank line after the headers")?;
    let head = std::str::from_utf8(head).map_err(|_| "headers are not UTF-8")?;
    let mut tree = None;
    let mut parents = Vec::new();
    let mut committer_email = None;
    let mut signature: Option<String> = None;
    let mut in_sig = false;
    // Byte ranges of the gpgsig header (with its continuation lines) to cut out.
    let mut sig_range: Option<(usize, usize)> = None;
    let mut offset = 0usize;
    for line in head.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let text = line.strip_suffix('\n').unwrap_or(line);
        if let Some(cont) = text.strip_prefix(' ') {
            if in_sig && let (Some(s), Some(r)) = (signature.as_mut(), sig_range.as_mut()) {
                s.push_str(cont);
                s.push('\n');
                r.1 = offset;
            }
            continue;
        }
        in_sig = false;
        let (name, value) = text.split_once(' ').unwrap_or((text, ""));
        match name {
            "tree" if tree.is_none() => tree = Some(value.to_string()),
            "tree" => return Err("two tree headers".into()),
            "parent" => parents.push(value.to_string()),
            "committer" if committer_email.is_none() => {
                let email = value
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map(|(e, _)| e.to_string())
                    .ok_or("a committer without an e-mail address")?;
                committer_email = Some(email);
            }
            "committer" => return Err("two committer headers".into()),
            "gpgsig" if signature.is_none() => {
                signature = Some(format!("{value}\n"));
                sig_range = Some((start, offset));
                in_sig = true;
            }
            "gpgsig" => return Err("two gpgsig headers".into()),
            _ => {}
        }
    }
    let tree = tree.ok_or("no tree header")?;
    if tree.len() != 40 || !tree.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the tree is not a SHA-1 object name".into());
    }
    let payload = match sig_range {
        Some((a, b)) => [&raw[..a], &raw[b..]].concat(),
        None => raw.to_vec(),
    };
    Ok(CommitObject {
        tree,
        parents,
        committer_email: committer_email.ok_or("no committer header")?,
        signature,
        payload,
    })
}

/// The headers and the message: split at the first empty line.
fn split_at_blank(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = raw.windows(2).position(|w| w == b"\n\n")?;
    Some((&raw[..i + 1], &raw[i + 2..]))
}

/// Whether `commit` is signed by a key `signers` allows for its committer, now.
pub fn verify(
    commit: &CommitObject,
    signers: &AllowedSigners,
    now: SystemTime,
) -> Result<Signed, Refusal> {
    let Some(armored) = &commit.signature else {
        return Err(Refusal::new(
            RefusalCode::Unsigned,
            "the commit carries no signature (git commit -S with gpg.format = ssh)",
        ));
    };
    if !armored.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err(Refusal::new(
            RefusalCode::BadCommitSignature,
            "the signature is not an SSH signature (only gpg.format = ssh is checked)",
        ));
    }
    let sig = SshSig::from_pem(armored.as_bytes()).map_err(|e| {
        Refusal::new(
            RefusalCode::BadCommitSignature,
            format!("the SSH signature does not parse: {e}"),
        )
    })?;
    if sig.namespace() != GIT_NAMESPACE {
        return Err(Refusal::new(
            RefusalCode::BadCommitSignature,
            format!(
                "the signature is for the namespace {:?}, not \"git\"",
                sig.namespace()
            ),
        ));
    }
    let key = ssh_key::PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    key.verify(GIT_NAMESPACE, &commit.payload, &sig)
        .map_err(|e| {
            Refusal::new(
                RefusalCode::BadCommitSignature,
                format!("the signature by {fingerprint} does not verify over the commit: {e}"),
            )
        })?;
    match signers.allow(sig.public_key(), &commit.committer_email, now) {
        Ok(line) => {
            security_key_flags(&sig, line, &fingerprint)?;
            Ok(Signed {
                principals: line.principals.join(","),
                line: line.at.clone(),
                fingerprint,
            })
        }
        Err(NotAllowed::UnknownKey) => Err(Refusal::new(
            RefusalCode::UnknownSigner,
            format!("signed by {fingerprint}, a key not in the allowed signers"),
        )),
        Err(NotAllowed::NoLineApplies(why)) => Err(Refusal::new(
            RefusalCode::UnknownSigner,
            format!(
                "signed by {fingerprint}, but no allowed signers line applies: {}",
                why.join("; ")
            ),
        )),
    }
}

/// A security key (`sk-`) signature's flags, as OpenSSH checks them: the touch (user
/// presence) unless the line says `no-touch-required`, and the PIN (user verification)
/// when it says `verify-required`. Other keys carry no flags.
fn security_key_flags(
    sig: &SshSig,
    line: &super::signers::Signer,
    fingerprint: &str,
) -> Result<(), Refusal> {
    const USER_PRESENCE: u8 = 0x01;
    const USER_VERIFICATION: u8 = 0x04;
    let is_sk = matches!(
        sig.algorithm(),
        ssh_key::Algorithm::SkEd25519 | ssh_key::Algorithm::SkEcdsaSha2NistP256
    );
    if !is_sk {
        return Ok(());
    }
    // The signature ends with the flags (1 byte) and the counter (4 bytes).
    let bytes = sig.signature_bytes();
    let Some(&flags) = bytes.len().checked_sub(5).and_then(|i| bytes.get(i)) else {
        return Err(Refusal::new(
            RefusalCode::BadCommitSignature,
            "a security key signature without its flags",
        ));
    };
    if flags & USER_PRESENCE == 0 && !line.no_touch_required {
        return Err(Refusal::new(
            RefusalCode::BadCommitSignature,
            format!(
                "signed by the security key {fingerprint} without a touch (user presence); \
                 {} does not say no-touch-required",
                line.at
            ),
        ));
    }
    if flags & USER_VERIFICATION == 0 && line.verify_required {
        return Err(Refusal::new(
            RefusalCode::BadCommitSignature,
            format!(
                "signed by the security key {fingerprint} without user verification (PIN), \
                 which {} requires (verify-required)",
                line.at
            ),
        ));
    }
    Ok(())
}
