//! Parsers for single values of the policy: inventory addresses, `source` networks,
//! revoked keys, times, and how a label selector is written back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// Parses an inventory address: `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6
/// address. Returns the host (IPv6 without brackets) and the port (22 by default).
///
/// The address must be written in one canonical form, so that the bastion's exact
/// comparison (a host is reached only by its exact inventory name or address) is well
/// defined: IP addresses as `Display` prints them, host names in lower case without a
/// trailing dot and never in a numeric form.
pub fn parse_address(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!(
                "address {s:?}: missing ']' (write \"[2001:db8::1]:22\")"
            ));
        };
        let port = if after.is_empty() {
            22
        } else if let Some(p) = after.strip_prefix(':') {
            parse_port(s, p)?
        } else {
            return Err(format!("address {s:?}: expected ':port' after ']'"));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("address {s:?}: {inner:?} is not an IPv6 address"));
        }
        (inner, port)
    } else if s.matches(':').count() > 1 {
        if s.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "address {s:?} does not parse (write \"host\", \"host:port\" or \"[2001:db8::1]:22\")"
            ));
        }
        (s, 22)
    } else if let Some((h, p)) = s.split_once(':') {
        (h, parse_port(s, p)?)
    } else {
        (s, 22)
    };
    check_host_part(s, host)?;
    Ok((host.to_string(), port))
}

fn parse_port(s: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && n.to_string() == p => Ok(n),
        _ => Err(format!(
            "address {s:?}: port {p:?} must be a number from 1 to 65535"
        )),
    }
}

fn check_host_part(s: &str, host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("address {s:?}: the host part is empty"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let canonical = ip.to_string();
        if canonical != host {
            return Err(format!(
                "address {s:?}: write the IP address as {canonical}"
            ));
        }
        return check_ip(s, ip);
    }
    if host.ends_with('.') {
        return Err(format!(
            "address {s:?}: remove the trailing dot ({:?})",
            host.trim_end_matches('.')
        ));
    }
    if host.len() > 253 {
        return Err(format!(
            "address {s:?}: host name longer than 253 characters"
        ));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!(
                "address {s:?} is neither an IP address nor a host name (letters, digits and '-' between dots)"
            ));
        }
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "address {s:?}: write host names in lower case ({:?})",
            host.to_ascii_lowercase()
        ));
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "address {s:?} looks like a numeric address but is not a dotted-quad IPv4 or an IPv6 address (write e.g. 10.0.0.1)"
        ));
    }
    Ok(())
}

fn check_ip(s: &str, ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST {
                return Err(format!("address {s:?}: {v4} is not a host address"));
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(format!(
                    "address {s:?}: an IPv4-mapped IPv6 address; write the IPv4 address {v4}"
                ));
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return Err(format!("address {s:?}: {v6} is not a host address"));
            }
        }
    }
    Ok(())
}

/// An address or CIDR block for `source`, in the form OpenSSH's source-address accepts.
pub fn parse_source(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        match s.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => Err(format!(
                "source {s:?} has host bits set; write the network {}",
                net.trunc()
            )),
            Ok(net) => Ok(net),
            Err(_) => Err(format!(
                "invalid CIDR {s:?} (write e.g. \"192.0.2.0/24\", \"2001:db8::/32\" or a single address)"
            )),
        }
    } else {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(IpNet::from(ip)),
            Err(_) => Err(format!(
                "invalid address {s:?} (write e.g. \"192.0.2.7\", \"192.0.2.0/24\" or \"2001:db8::/32\")"
            )),
        }
    }
}

/// A revoked `key`: a public key line (`ssh-ed25519 AAAA... comment`) or its SHA-256
/// fingerprint (`SHA256:...`, as `ssh-keygen -lf KEY.pub` prints it). Returns the
/// fingerprint, the one form revocations are compared and listed in.
pub fn revoked_key_fingerprint(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some(b64) = s.strip_prefix("SHA256:") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64);
        return match decoded {
            // Re-encoded, so that the one canonical spelling is compared.
            Ok(bytes) if bytes.len() == 32 => Ok(format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            )),
            _ => Err(format!(
                "key {s:?} is not a SHA-256 fingerprint (SHA256: and 43 base64 characters, as ssh-keygen -lf KEY.pub prints)"
            )),
        };
    }
    match ssh_key::PublicKey::from_openssh(s) {
        Ok(k) if k.key_data().is_certificate() => {
            Err("key must be a public key or its fingerprint, not a certificate".to_string())
        }
        Ok(k) => Ok(k.fingerprint(ssh_key::HashAlg::Sha256).to_string()),
        Err(_) => Err(format!(
            "key {:?} is neither a public key line (\"ssh-ed25519 AAAA...\") nor a SHA-256 fingerprint (\"SHA256:...\")",
            s.chars().take(40).collect::<String>()
        )),
    }
}

/// Parses a time given as an RFC 3339 string with a time zone (`2026-12-01T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    match s.trim().parse::<toml::value::Datetime>() {
        Ok(dt) => datetime_to_system(&dt),
        Err(_) => Err(format!(
            "{s:?} is not a date and time (write RFC 3339, e.g. 2026-12-01T00:00:00Z)"
        )),
    }
}

pub(super) fn datetime_to_system(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and a time zone (e.g. 2026-12-01T00:00:00Z)"
        ));
    };
    let offset_minutes: i64 = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_minutes * 60;
    let secs = u64::try_from(secs).map_err(|_| format!("{dt} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::new(secs, time.nanosecond.min(999_999_999)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `{ env = "prod", role = "web" }`.
pub fn selector_text(sel: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = sel.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    format!("{{ {} }}", parts.join(", "))
}
