//! The provider's device code, sealed under drawbridge's own device code before it is
//! stored where other replicas read it (PostgreSQL).
//!
//! The provider's code lets whoever holds it poll the provider for the person's ID token,
//! which drawbridge would turn into a certificate; a reader of the database must not get
//! it. The sealing key is derived from drawbridge's code, which only the person's client
//! holds (the store keeps its SHA-256, a different derivation): the database alone opens
//! nothing. AES-256-GCM with a random nonce, the row's lookup hash as associated data (a
//! sealed code moved to another row does not open).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use sha2::{Digest, Sha256};

const NONCE: usize = 12;
const KEY_CONTEXT: &[u8] = b"drawbridge device login: sealing key\0";

/// The lookup key of a code: what the store keeps instead of the code.
pub fn lookup(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

fn cipher(code: &str) -> Aes256Gcm {
    let mut h = Sha256::new();
    h.update(KEY_CONTEXT);
    h.update(code.as_bytes());
    let key: [u8; 32] = h.finalize().into();
    Aes256Gcm::new(&key.into())
}

/// `secret` sealed under `code`: nonce ‖ ciphertext and tag.
pub fn seal(code: &str, secret: &str) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE];
    getrandom::fill(&mut nonce).map_err(|e| format!("random nonce: {e}"))?;
    let aad = lookup(code);
    let sealed = cipher(code)
        .encrypt(
            &nonce.into(),
            Payload {
                msg: secret.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| "sealing failed".to_string())?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// What [`seal`] sealed under `code`; `None` for another code, another row or bytes that
/// were changed.
pub fn open(code: &str, sealed: &[u8]) -> Option<String> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE);
    let nonce: [u8; NONCE] = nonce.try_into().ok()?;
    let aad = lookup(code);
    let plain = cipher(code)
        .decrypt(
            &nonce.into(),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_under_the_code_it_was_sealed_with() {
        let sealed = seal("our-code", "the provider's code").unwrap();
        assert!(!sealed.windows(b"provider".len()).any(|w| w == b"provider"));
        assert_eq!(
            open("our-code", &sealed).as_deref(),
            Some("the provider's code")
        );
        assert_eq!(open("another-code", &sealed), None);
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(open("our-code", &changed), None);
        assert_eq!(open("our-code", &sealed[..5]), None);
        // Two seals of one secret differ (random nonce).
        assert_ne!(
            seal("our-code", "x").unwrap(),
            seal("our-code", "x").unwrap()
        );
    }
}
