//! Which public keys drawbridge signs (`POST /v1/certs` bodies, docs/threats.md T27).

use ssh_key::PublicKey;
use ssh_key::public::KeyData;

/// Longest body accepted as a public key line (an RSA 16384-bit key is about 2.8 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// Smallest RSA modulus signed, in bits.
pub const MIN_RSA_BITS: u32 = 3072;

/// Key types signed.
pub const ACCEPTED_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// Why a public key was refused. Every message is safe to show the caller (HTTP 400):
/// it names the problem and what is accepted, and quotes at most a short, escaped
/// piece of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing but white space.
    #[error(
        "the body is empty; send one OpenSSH public key line, e.g. the contents of ~/.ssh/id_ed25519.pub"
    )]
    Empty,
    /// Over [`MAX_KEY_BYTES`].
    #[error("the body is {0} bytes; a public key line is at most 16384 bytes")]
    TooLong(usize),
    /// Not UTF-8 text.
    #[error(
        "the body is not UTF-8 text; send one OpenSSH public key line (the .pub file, not the private key)"
    )]
    NotUtf8,
    /// More than one non-empty line.
    #[error("the body holds {0} lines; send exactly one public key line")]
    MultipleKeys(usize),
    /// An OpenSSH certificate was sent instead of a key.
    #[error(
        "this is a certificate ({0}), not a public key; send the key itself (the .pub file without -cert)"
    )]
    Certificate(String),
    /// A DSA key (`ssh-dss`).
    #[error("DSA keys (ssh-dss) are not accepted; make an Ed25519 key: ssh-keygen -t ed25519")]
    Dsa,
    /// An RSA key under [`MIN_RSA_BITS`].
    #[error(
        "this RSA key has {0} bits; at least 3072 are required (or make an Ed25519 key: ssh-keygen -t ed25519)"
    )]
    RsaTooSmall(u32),
    /// A key type not in [`ACCEPTED_TYPES`] (the type, escaped and shortened).
    #[error(
        "unknown key type \"{0}\"; accepted: ssh-ed25519, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, ssh-rsa (3072 bits or more)"
    )]
    UnknownType(String),
    /// The base64 or the key inside it does not decode, or does not match the type.
    #[error(
        "malformed {0} public key: the base64 key data does not decode to a valid key of that type"
    )]
    Malformed(String),
}

/// Parses exactly one OpenSSH public key line (`TYPE BASE64 [COMMENT]`, white space
/// around it ignored) and returns the key if its type is accepted.
pub fn accept_user_key(body: &[u8]) -> Result<PublicKey, KeyError> {
    if body.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| KeyError::NotUtf8)?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = match lines.as_slice() {
        [] => return Err(KeyError::Empty),
        [one] => *one,
        more => return Err(KeyError::MultipleKeys(more.len())),
    };
    let mut parts = line.split_ascii_whitespace();
    let kind = parts.next().unwrap_or_default();
    let shown = short(kind);
    if kind.ends_with("-cert-v01@openssh.com") {
        return Err(KeyError::Certificate(shown));
    }
    if kind == "ssh-dss" {
        return Err(KeyError::Dsa);
    }
    if !ACCEPTED_TYPES.contains(&kind) {
        return Err(KeyError::UnknownType(shown));
    }
    if parts.next().is_none() {
        return Err(KeyError::Malformed(shown));
    }
    // `from_openssh` also checks that the type inside the base64 matches `kind`.
    let key = PublicKey::from_openssh(line).map_err(|_| KeyError::Malformed(shown.clone()))?;
    match key.key_data() {
        KeyData::Certificate(_) => Err(KeyError::Certificate(shown)),
        KeyData::Dsa(_) => Err(KeyError::Dsa),
        KeyData::Rsa(rsa) => {
            let bits = modulus_bits(rsa.n().as_positive_bytes().unwrap_or_default());
            if bits < MIN_RSA_BITS {
                Err(KeyError::RsaTooSmall(bits))
            } else {
                Ok(key)
            }
        }
        KeyData::Ed25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEd25519(_)
        | KeyData::SkEcdsaSha2NistP256(_) => Ok(key),
        _ => Err(KeyError::UnknownType(shown)),
    }
}

/// Exact bit length of a big-endian unsigned integer without leading zero bytes.
fn modulus_bits(n: &[u8]) -> u32 {
    match n.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => {
            let rest = (n.len() - i - 1) as u32;
            rest * 8 + (8 - n[i].leading_zeros())
        }
    }
}

/// The key type as shown in a message: escaped, at most 64 characters.
fn short(kind: &str) -> String {
    let mut s = crate::util::escape(kind);
    if s.chars().count() > 64 {
        s = s.chars().take(61).collect::<String>() + "...";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// `ssh-keygen -t TYPE [-b BITS]` in `dir`; the public key line.
    fn keygen(dir: &Path, name: &str, args: &[&str]) -> String {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(args)
            .args(["-q", "-N", "", "-C", "test@example", "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(path.with_extension("pub")).unwrap()
    }

    #[test]
    fn accepts_every_listed_type() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, args) in [
            ("ed", &["-t", "ed25519"][..]),
            ("p256", &["-t", "ecdsa", "-b", "256"][..]),
            ("p384", &["-t", "ecdsa", "-b", "384"][..]),
            ("p521", &["-t", "ecdsa", "-b", "521"][..]),
            ("rsa3072", &["-t", "rsa", "-b", "3072"][..]),
        ] {
            let line = keygen(tmp.path(), name, args);
            let key = accept_user_key(line.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                key.to_openssh().unwrap().split(' ').nth(1),
                line.split(' ').nth(1)
            );
        }
        // Security keys need hardware for ssh-keygen: build their public keys directly.
        let ed = keygen(tmp.path(), "sk-src", &["-t", "ed25519"]);
        let ed = PublicKey::from_openssh(&ed).unwrap();
        let sk = ssh_key::public::SkEd25519::new(*ed.key_data().ed25519().unwrap(), "ssh:");
        let line = PublicKey::from(KeyData::SkEd25519(sk))
            .to_openssh()
            .unwrap();
        assert!(line.starts_with("sk-ssh-ed25519@openssh.com "));
        accept_user_key(line.as_bytes()).unwrap();

        let p = keygen(tmp.path(), "sk-p256-src", &["-t", "ecdsa", "-b", "256"]);
        let p = PublicKey::from_openssh(&p).unwrap();
        let ec = *p.key_data().ecdsa().unwrap();
        let ssh_key::public::EcdsaPublicKey::NistP256(point) = ec else {
            panic!("p256")
        };
        let sk = ssh_key::public::SkEcdsaSha2NistP256::new(point, "ssh:");
        let line = PublicKey::from(KeyData::SkEcdsaSha2NistP256(sk))
            .to_openssh()
            .unwrap();
        assert!(line.starts_with("sk-ecdsa-sha2-nistp256@openssh.com "));
        accept_user_key(line.as_bytes()).unwrap();
    }

    #[test]
    fn white_space_and_comment_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let line = keygen(tmp.path(), "ed", &["-t", "ed25519"]);
        let body = format!("\r\n  {}  \r\n\n", line.trim());
        accept_user_key(body.as_bytes()).unwrap();
        let no_comment: Vec<&str> = line.split(' ').take(2).collect();
        accept_user_key(no_comment.join(" ").as_bytes()).unwrap();
    }

    #[test]
    fn small_rsa_is_refused_with_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        for bits in [1024u32, 2048] {
            let line = keygen(
                tmp.path(),
                &format!("rsa{bits}"),
                &["-t", "rsa", "-b", &bits.to_string()],
            );
            let e = accept_user_key(line.as_bytes()).unwrap_err();
            assert_eq!(e, KeyError::RsaTooSmall(bits));
            assert!(e.to_string().contains(&format!("{bits} bits")), "{e}");
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        // A DSA line (ssh-keygen 9.2 no longer makes DSA keys by default; a syntactically
        // valid one is enough: the type alone refuses it).
        let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAN4mAfb1PGAZh8V3UL5ZLDBK7a5EeN2qA1xRrY6FyEc2RHxBOHS4KWNCfVeNNwOgVlbX6T1kn7AAWyJBwB8fHWK8IU/8XU49qUUUHR2EC9JX6iM6p6JHKVlyWAZq9YFOFxqz4tXVjK0TzVnjPMH5a+kADaQSmwdYdFQfhtzNUDNo example";
        assert_eq!(accept_user_key(dsa.as_bytes()).unwrap_err(), KeyError::Dsa);

        // A certificate line.
        let ca = tmp.path().join("ca");
        let _ = keygen(tmp.path(), "ca", &["-t", "ed25519"]);
        let user = keygen(tmp.path(), "user", &["-t", "ed25519"]);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&ca)
            .args(["-I", "x", "-n", "p", "-V", "+5m"])
            .arg(tmp.path().join("user.pub"))
            .status()
            .unwrap();
        assert!(st.success());
        let cert = std::fs::read_to_string(tmp.path().join("user-cert.pub")).unwrap();
        let e = accept_user_key(cert.as_bytes()).unwrap_err();
        assert_eq!(
            e,
            KeyError::Certificate("ssh-ed25519-cert-v01@openssh.com".into())
        );

        // Two keys.
        let two = format!("{user}{user}");
        assert_eq!(
            accept_user_key(two.as_bytes()).unwrap_err(),
            KeyError::MultipleKeys(2)
        );

        // Garbage, bad base64, a body whose inner type differs from the text.
        assert_eq!(
            accept_user_key(b"hello world").unwrap_err(),
            KeyError::UnknownType("hello".into())
        );
        assert_eq!(
            accept_user_key(b"ssh-ed25519 !!!notbase64!!!").unwrap_err(),
            KeyError::Malformed("ssh-ed25519".into())
        );
        assert_eq!(
            accept_user_key(b"ssh-ed25519").unwrap_err(),
            KeyError::Malformed("ssh-ed25519".into())
        );
        let b64 = user.split(' ').nth(1).unwrap();
        let lie = format!("ecdsa-sha2-nistp256 {b64}");
        assert!(matches!(
            accept_user_key(lie.as_bytes()),
            Err(KeyError::Malformed(_))
        ));
        let truncated = format!("ssh-ed25519 {}", &b64[..b64.len() - 8]);
        assert!(matches!(
            accept_user_key(truncated.as_bytes()),
            Err(KeyError::Malformed(_))
        ));

        // Empty, not UTF-8, too long; a control character in the type is escaped.
        assert_eq!(accept_user_key(b" \n\t ").unwrap_err(), KeyError::Empty);
        assert_eq!(
            accept_user_key(b"ssh-ed25519 \xff\xfe").unwrap_err(),
            KeyError::NotUtf8
        );
        let long = vec![b'A'; MAX_KEY_BYTES + 1];
        assert_eq!(
            accept_user_key(&long).unwrap_err(),
            KeyError::TooLong(MAX_KEY_BYTES + 1)
        );
        let e = accept_user_key(b"ssh-\x1b[31m AAAA").unwrap_err();
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    #[test]
    fn modulus_bits_are_exact() {
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x80; 384]), 3072);
        assert_eq!(modulus_bits(&[0x7f; 384]), 3071);
        assert_eq!(modulus_bits(&[]), 0);
    }
}
