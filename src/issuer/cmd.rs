//! `drawbridge ca init | sign-host | rotate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use ssh_key::PublicKey;

use super::files::{self, PUBLIC_MODE};
use super::keys::{self, CaKey, HOST_CA, TRUSTED_USER_CA_KEYS};
use crate::cli::CaCommand;
use crate::config::Config;

pub fn run(config: &Config, cmd: CaCommand) -> anyhow::Result<ExitCode> {
    let dir_of = |dir: Option<PathBuf>| dir.unwrap_or_else(|| config.ca_dir());
    match cmd {
        CaCommand::Init { dir } => init(&dir_of(dir), &config.ssh.host_names),
        CaCommand::SignHost {
            name,
            principals,
            validity,
            dir,
            out,
            key,
        } => sign_host(
            &dir_of(dir),
            &name,
            &principals,
            &validity,
            out.as_deref(),
            &key,
        ),
        CaCommand::Rotate { dir } => rotate(&dir_of(dir)),
    }
}

fn init(dir: &Path, host_names: &[String]) -> anyhow::Result<ExitCode> {
    let created = keys::init(dir, host_names, SystemTime::now())?;
    let keys = keys::IssuerKeys::load(dir)?;
    println!("created in {}:", dir.display());
    for p in &created {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        println!("  {name}");
    }
    println!("user CA: {}", keys.user_ca.fingerprint());
    println!("host CA: {}", keys.host_ca.fingerprint());
    println!(
        "DMZ hosts: TrustedUserCAKeys with the lines of {} (or GET /v1/ca)",
        dir.join(TRUSTED_USER_CA_KEYS).display()
    );
    println!("clients: {}", keys.known_hosts_line()?.trim_end());
    println!("Back this folder up; never commit it.");
    Ok(ExitCode::SUCCESS)
}

fn sign_host(
    dir: &Path,
    name: &str,
    extra: &[String],
    validity: &str,
    out: Option<&Path>,
    key_path: &Path,
) -> anyhow::Result<ExitCode> {
    let validity = crate::util::parse_duration(validity).map_err(anyhow::Error::msg)?;
    if validity.is_zero() {
        anyhow::bail!("--validity must be above zero");
    }
    let mut principals: Vec<String> = Vec::new();
    for p in std::iter::once(name).chain(extra.iter().map(String::as_str)) {
        let p = p.trim();
        if p.is_empty()
            || p.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            anyhow::bail!(
                "host name {:?} is empty or holds white space, a comma or a control character",
                crate::util::escape(p)
            );
        }
        if !principals.iter().any(|q| q == p) {
            principals.push(p.to_string());
        }
    }
    let text = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let is_cert = text
        .split_ascii_whitespace()
        .next()
        .is_some_and(|t| t.ends_with("-cert-v01@openssh.com"));
    let key = PublicKey::from_openssh(text.trim());
    if is_cert || key.as_ref().is_ok_and(|k| k.key_data().is_certificate()) {
        anyhow::bail!(
            "{} is a certificate; give the host's public key (e.g. /etc/ssh/ssh_host_ed25519_key.pub)",
            key_path.display()
        );
    }
    let key = key.with_context(|| format!("{}: not an OpenSSH public key", key_path.display()))?;
    let host_ca = CaKey::load(&dir.join(HOST_CA))?;
    let signed =
        super::sign::sign_host_cert(&host_ca, &key, &principals, validity, SystemTime::now())?;
    let line = signed.openssh_line()?;
    match out {
        Some(path) => {
            files::write_atomic(path, line.as_bytes(), PUBLIC_MODE)?;
            eprintln!(
                "wrote {} (serial {}, principals {}); on the host: HostCertificate {}",
                path.display(),
                signed.serial,
                principals.join(","),
                path.display()
            );
        }
        None => print!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(dir: &Path) -> anyhow::Result<ExitCode> {
    let r = keys::rotate(dir, SystemTime::now())?;
    let trusted = dir.join(TRUSTED_USER_CA_KEYS);
    println!(
        "new user CA {} now signs ({})",
        r.new_fingerprint,
        dir.join(keys::USER_CA).display()
    );
    println!(
        "old user CA {}: private key kept as {}",
        r.old_fingerprint,
        r.retired.display()
    );
    println!(
        "{} now lists both; certificates of the old CA stay valid until they expire.",
        trusted.display()
    );
    println!("Next:");
    println!(
        "  1. give DMZ hosts the new {} (GET /v1/ca) for TrustedUserCAKeys, before or right after",
        TRUSTED_USER_CA_KEYS
    );
    println!("  2. restart drawbridge serve so it signs with the new CA;");
    println!(
        "  3. after certs.max_ttl has passed, retire the old CA: delete the line of {} from {} and update the DMZ hosts again.",
        r.old_fingerprint,
        trusted.display()
    );
    println!(
        "     (ssh-keygen -lf {} shows each line's fingerprint.)",
        trusted.display()
    );
    Ok(ExitCode::SUCCESS)
}
