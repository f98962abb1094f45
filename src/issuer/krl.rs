//! The OpenSSH key revocation list (KRL) of `revoked.toml`, for `GET /v1/krl` and a
//! DMZ host's `RevokedKeys` (docs/threats.md T11).
//!
//! Format (OpenSSH `PROTOCOL.krl`): a header — `u64` magic `"SSHKRL\n\0"`, `u32` format
//! version 1, `u64` krl_version, `u64` generated_date, `u64` flags, `string` reserved,
//! `string` comment — then sections, each `byte` type + `string` data. We write one
//! certificates section (type 1) per trusted user CA key: `string` CA key blob,
//! `string` reserved, then the sub-sections serial list (0x20: `u64` serials) and key
//! id list (0x23: `string` key ids). Revocations therefore apply to certificates of
//! every CA we trust, the retired ones included. Keys revoked by `key` go into one
//! SHA-256 fingerprint section (type 5: `string` hashes, each the SHA-256 of the plain
//! key blob), which revokes the key and every certificate of it whatever the CA. With no
//! revocation the KRL is only a header, which revokes nothing.

use std::collections::BTreeSet;
use std::time::SystemTime;

use ssh_key::PublicKey;

use crate::policy::Revoked;

const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;
const SECTION_CERTIFICATES: u8 = 1;
const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_KEY_ID: u8 = 0x23;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

/// Builds the KRL. `krl_version` and `generated_date` are `now` in Unix seconds (the
/// version only has to grow between builds). Serial 0 (never issued) is skipped.
/// With no CA key, key ids are revoked for any CA (an empty CA key blob) and serials,
/// which only mean something per CA, cannot be listed.
pub fn build_krl(revoked: &[Revoked], ca_keys: &[PublicKey], now: SystemTime) -> Vec<u8> {
    let serials: BTreeSet<u64> = revoked
        .iter()
        .filter_map(|r| r.serial)
        .filter(|s| *s != 0)
        .collect();
    let key_ids: BTreeSet<&str> = revoked.iter().filter_map(|r| r.key_id.as_deref()).collect();
    let key_hashes: BTreeSet<Vec<u8>> = revoked
        .iter()
        .filter_map(|r| r.key.as_deref())
        .filter_map(sha256_of_fingerprint)
        .collect();
    let now = crate::util::unix_secs(now);

    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&now.to_be_bytes()); // krl_version
    out.extend_from_slice(&now.to_be_bytes()); // generated_date
    out.extend_from_slice(&0u64.to_be_bytes()); // flags
    put_string(&mut out, b""); // reserved
    put_string(&mut out, b"drawbridge revoked.toml");
    if !key_hashes.is_empty() {
        let mut section = Vec::with_capacity(key_hashes.len() * 36);
        for h in &key_hashes {
            put_string(&mut section, h);
        }
        out.push(SECTION_FINGERPRINT_SHA256);
        put_string(&mut out, &section);
    }
    if serials.is_empty() && key_ids.is_empty() {
        return out;
    }

    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for k in ca_keys {
        // A CA key always encodes; one that would not is skipped rather than
        // making the whole list unreadable.
        if let Ok(b) = k.key_data().encode_vec_checked()
            && !blobs.contains(&b)
        {
            blobs.push(b);
        }
    }
    if blobs.is_empty() {
        if !key_ids.is_empty() {
            let section = cert_section(b"", &BTreeSet::new(), &key_ids);
            out.push(SECTION_CERTIFICATES);
            put_string(&mut out, &section);
        }
        return out;
    }
    for blob in &blobs {
        let section = cert_section(blob, &serials, &key_ids);
        out.push(SECTION_CERTIFICATES);
        put_string(&mut out, &section);
    }
    out
}

fn cert_section(ca_blob: &[u8], serials: &BTreeSet<u64>, key_ids: &BTreeSet<&str>) -> Vec<u8> {
    let mut s = Vec::new();
    put_string(&mut s, ca_blob);
    put_string(&mut s, b""); // reserved
    if !serials.is_empty() {
        let mut list = Vec::with_capacity(serials.len() * 8);
        for serial in serials {
            list.extend_from_slice(&serial.to_be_bytes());
        }
        s.push(CERT_SERIAL_LIST);
        put_string(&mut s, &list);
    }
    if !key_ids.is_empty() {
        let mut list = Vec::new();
        for id in key_ids {
            put_string(&mut list, id.as_bytes());
        }
        s.push(CERT_KEY_ID);
        put_string(&mut s, &list);
    }
    s
}

/// The 32 hash bytes of a `SHA256:...` fingerprint (the loader accepts no other form;
/// anything else is left out rather than written wrong).
fn sha256_of_fingerprint(fp: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = fp.strip_prefix("SHA256:")?;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .ok()?;
    (bytes.len() == 32).then_some(bytes)
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths here are far below 4 GiB (a key blob, a list from a reviewed file).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The SSH wire encoding of a public key (algorithm name + key fields).
trait EncodeVecChecked {
    fn encode_vec_checked(&self) -> Result<Vec<u8>, ssh_key::Error>;
}

impl EncodeVecChecked for ssh_key::public::KeyData {
    fn encode_vec_checked(&self) -> Result<Vec<u8>, ssh_key::Error> {
        use ssh_key::encoding::Encode;
        Ok(self.encode_vec()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::plan::CertPlan;
    use crate::issuer::{CaKey, sign_user_cert};
    use crate::policy::Origin;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    fn revoked(serial: Option<u64>, key_id: Option<&str>) -> Revoked {
        Revoked {
            serial,
            key_id: key_id.map(str::to_string),
            key: None,
            reason: None,
            origin: Origin::default(),
        }
    }

    /// A user cert from `ca` for `key_id`, written to `dir/name-cert.pub`; its serial.
    fn cert(dir: &Path, ca: &CaKey, name: &str, key_id: &str) -> (std::path::PathBuf, u64) {
        let subject = CaKey::generate("subject").unwrap();
        cert_of(dir, ca, subject.public_key(), name, key_id)
    }

    /// A user cert from `ca` for `subject`.
    fn cert_of(
        dir: &Path,
        ca: &CaKey,
        subject: &PublicKey,
        name: &str,
        key_id: &str,
    ) -> (std::path::PathBuf, u64) {
        let now = crate::util::unix_secs(SystemTime::now());
        let plan = CertPlan {
            key_id: key_id.into(),
            principals: vec!["ops".into()],
            valid_after: now - 60,
            valid_before: now + 300,
            ttl: Duration::from_secs(300),
            asked_ttl: Duration::from_secs(300),
            capped_by: None,
            extensions: BTreeMap::new(),
            critical_options: BTreeMap::new(),
            omitted_groups: vec![],
        };
        let s = sign_user_cert(ca, subject, &plan).unwrap();
        let path = dir.join(format!("{name}-cert.pub"));
        std::fs::write(&path, s.openssh_line().unwrap()).unwrap();
        (path, s.serial)
    }

    /// `ssh-keygen -Q -f KRL CERT`: (revoked?, output).
    fn query(krl: &[u8], dir: &Path, cert: &Path) -> (bool, String) {
        let krl_path = dir.join("krl");
        std::fs::write(&krl_path, krl).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(&krl_path)
            .arg(cert)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let revoked = text.contains("REVOKED");
        assert_eq!(revoked, !out.status.success(), "exit status agrees: {text}");
        if !revoked {
            assert!(text.contains(": ok"), "{text}");
        }
        (revoked, text)
    }

    #[test]
    fn ssh_keygen_reads_our_krl() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let ca = CaKey::generate("ca").unwrap();
        let old_ca = CaKey::generate("old ca").unwrap();
        let (good, _) = cert(d, &ca, "good", "alice");
        let (by_serial, serial) = cert(d, &ca, "byserial", "bob");
        let (by_id, _) = cert(d, &ca, "byid", "mallory");
        let (old_by_id, _) = cert(d, &old_ca, "oldbyid", "mallory");
        let (old_good, _) = cert(d, &old_ca, "oldgood", "carol");
        let keys = vec![ca.public_key().clone(), old_ca.public_key().clone()];

        // Empty list: every good cert passes.
        let krl = build_krl(&[], &keys, SystemTime::now());
        for c in [&good, &by_serial, &by_id, &old_good] {
            assert!(!query(&krl, d, c).0);
        }

        let list = [
            revoked(Some(serial), None),
            revoked(None, Some("mallory")),
            revoked(Some(12345), Some("nobody")),
        ];
        let krl = build_krl(&list, &keys, SystemTime::now());
        assert!(!query(&krl, d, &good).0, "good cert passes");
        assert!(query(&krl, d, &by_serial).0, "revoked by serial");
        assert!(query(&krl, d, &by_id).0, "revoked by key id");
        assert!(
            query(&krl, d, &old_by_id).0,
            "revoked by key id under the old CA"
        );
        assert!(
            !query(&krl, d, &old_good).0,
            "good cert of the old CA passes"
        );

        // No CA key: key ids still revoked for any CA.
        let krl = build_krl(&list, &[], SystemTime::now());
        assert!(query(&krl, d, &by_id).0);
        assert!(!query(&krl, d, &good).0);
    }

    #[test]
    fn a_revoked_key_revokes_the_key_and_its_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let ca = CaKey::generate("ca").unwrap();
        let lost = CaKey::generate("lost laptop").unwrap();
        let kept = CaKey::generate("kept").unwrap();
        let (lost_cert, _) = cert_of(d, &ca, lost.public_key(), "lost", "alice");
        let (kept_cert, _) = cert_of(d, &ca, kept.public_key(), "kept", "alice");
        let lost_pub = d.join("lost.pub");
        std::fs::write(&lost_pub, lost.public_key().to_openssh().unwrap()).unwrap();
        let fp = crate::policy::revoked_key_fingerprint(&lost.public_key().to_openssh().unwrap())
            .unwrap();
        let entry = Revoked {
            key: Some(fp),
            ..revoked(None, None)
        };
        let keys = vec![ca.public_key().clone()];
        let krl = build_krl(std::slice::from_ref(&entry), &keys, SystemTime::now());
        assert!(query(&krl, d, &lost_cert).0, "a certificate of the key");
        assert!(query(&krl, d, &lost_pub).0, "the key itself");
        assert!(
            !query(&krl, d, &kept_cert).0,
            "another key of the same user"
        );
        // No CA key: the key is still revoked.
        let krl = build_krl(std::slice::from_ref(&entry), &[], SystemTime::now());
        assert!(query(&krl, d, &lost_cert).0);
    }

    #[test]
    fn header_layout() {
        let krl = build_krl(&[], &[], SystemTime::UNIX_EPOCH + Duration::from_secs(7));
        assert_eq!(&krl[..8], b"SSHKRL\n\0");
        assert_eq!(&krl[8..12], &[0, 0, 0, 1]);
        assert_eq!(&krl[12..20], &7u64.to_be_bytes());
    }
}
