//! The per-session certificate the bastion logs in to a recorded target with: a fresh
//! key held only in memory, the person's key id, only the principals of their
//! certificate that grant that host and login, valid for two minutes (OpenSSH checks a
//! certificate only at login), usable only from the bastion's own address on that
//! connection, naming the session.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use russh::keys::ssh_key::{Algorithm, Certificate, PrivateKey};

use crate::issuer::CertPlan;
use crate::issuer::cert_fields::{
    BACKDATING, SESSION_CERT_VALIDITY, SESSION_EXTENSION, SOURCE_ADDRESS,
};

/// Extensions a per-session certificate may carry over from the user's certificate:
/// agent and X11 forwarding are never relayed, so never granted on the target either.
const CARRIED_EXTENSIONS: &[&str] = &["permit-pty", "permit-port-forwarding", "permit-user-rc"];

/// What goes into a per-session certificate. Pure: the time and the egress address are
/// parameters.
///
/// `principals`: those of the user's certificate that grant the host and the login
/// (never empty: the caller refused the login otherwise). `user_extensions`: the user's
/// certificate's extensions; only [`CARRIED_EXTENSIONS`] are kept. `egress`: the
/// bastion's address on the connection to the target (the `source-address`).
pub fn plan(
    key_id: &str,
    principals: &[String],
    user_extensions: &[String],
    session: &str,
    egress: &[IpNet],
    now: SystemTime,
) -> CertPlan {
    let now = crate::util::unix_secs(now);
    let mut principals = principals.to_vec();
    principals.sort();
    principals.dedup();
    let mut extensions: BTreeMap<String, String> = user_extensions
        .iter()
        .filter(|e| CARRIED_EXTENSIONS.contains(&e.as_str()))
        .map(|e| (e.clone(), String::new()))
        .collect();
    extensions.insert(SESSION_EXTENSION.into(), session.into());
    let net = egress
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    CertPlan {
        key_id: key_id.to_string(),
        principals,
        valid_after: now.saturating_sub(BACKDATING.as_secs()),
        valid_before: now.saturating_add(SESSION_CERT_VALIDITY.as_secs()),
        ttl: SESSION_CERT_VALIDITY,
        asked_ttl: SESSION_CERT_VALIDITY,
        capped_by: None,
        extensions,
        critical_options: BTreeMap::from([(SOURCE_ADDRESS.to_string(), net)]),
        omitted_groups: Vec::new(),
    }
}

/// The `source-address` of a per-session certificate: `ssh.egress_addresses` when the
/// operator set them (several bastions behind one NAT, a fixed egress range), otherwise
/// exactly the bastion's own address on this connection to the target.
pub fn egress_networks(configured: &[IpNet], local: IpAddr) -> Vec<IpNet> {
    if configured.is_empty() {
        vec![IpNet::from(local)]
    } else {
        configured.to_vec()
    }
}

/// A fresh Ed25519 key (never written anywhere) and its per-session certificate signed
/// by `signer`.
pub fn issue(
    signer: &crate::issuer::CaKey,
    plan: &CertPlan,
) -> Result<(PrivateKey, Certificate), String> {
    let key = PrivateKey::random(&mut crate::issuer::rng(), Algorithm::Ed25519)
        .map_err(|e| format!("cannot make a session key: {e}"))?;
    let signed = crate::issuer::sign_user_cert(signer, key.public_key(), plan)
        .map_err(|e| format!("cannot sign the session certificate: {e}"))?;
    Ok((key, signed.certificate))
}

/// The validity a per-session certificate spans, backdating included.
pub fn span() -> Duration {
    SESSION_CERT_VALIDITY + BACKDATING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_minutes_the_egress_address_and_the_session() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let p = plan(
            "alice",
            &["web-admin".into(), "ops".into(), "ops".into()],
            &[
                "permit-pty".into(),
                "permit-agent-forwarding".into(),
                "permit-X11-forwarding".into(),
                "permit-port-forwarding".into(),
            ],
            "00ff",
            &egress_networks(&[], "127.0.0.1".parse().unwrap()),
            now,
        );
        assert_eq!(p.key_id, "alice");
        assert_eq!(p.principals, ["ops", "web-admin"]);
        assert_eq!(p.valid_after, 1_800_000_000 - 60);
        assert_eq!(p.valid_before, 1_800_000_000 + 120);
        assert_eq!(
            p.critical_options.get("source-address").map(String::as_str),
            Some("127.0.0.1/32")
        );
        let names: Vec<&str> = p.extensions.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["permit-port-forwarding", "permit-pty", "session@drawbridge"]
        );
        assert_eq!(p.extensions["session@drawbridge"], "00ff");
        let ca = crate::issuer::CaKey::generate("ca").unwrap();
        let (key, cert) = issue(&ca, &p).unwrap();
        assert_eq!(cert.public_key(), key.public_key().key_data());
        assert_eq!(span(), Duration::from_secs(180));
        let nets: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        let p = plan(
            "a",
            &["x".into()],
            &[],
            "s",
            &egress_networks(&nets, "127.0.0.1".parse().unwrap()),
            now,
        );
        assert_eq!(p.critical_options["source-address"], "10.0.0.0/24,::1/128");
    }
}
