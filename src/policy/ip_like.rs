//! Host names that a resolver would take for an IP address. Such a name would shadow
//! another host's address: the bastion accepts a request naming an inventory host's
//! name *or* its address, so `[hosts."127.0.0.1"]` pointing elsewhere would capture
//! requests for 127.0.0.1. The loader refuses them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IP address a host name would be taken for, if any: an IPv6 address (bracketed
/// or not) or any IPv4 form a resolver accepts (`inet_aton`: one to four numbers
/// between dots, each decimal, octal with a leading `0` or hex with `0x`, so `127.1`,
/// `0x7f.1`, `2130706433` and `0177.0.0.1` are all 127.0.0.1), with or without one
/// trailing dot.
pub fn ip_like_host_name(name: &str) -> Option<IpAddr> {
    let unbracketed = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(ip);
    }
    // A zone index (`fe80::1%eth0`) is still an address to a resolver.
    if let Some((addr, _zone)) = unbracketed.split_once('%')
        && let Ok(v6) = addr.parse::<Ipv6Addr>()
    {
        return Some(IpAddr::V6(v6));
    }
    inet_aton(name.strip_suffix('.').unwrap_or(name)).map(IpAddr::V4)
}

/// IPv4 in the forms the C library's `inet_aton` accepts.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if p.is_empty() || (digits.is_empty() && radix != 16) {
            return None;
        }
        // "0x" alone is 0 to inet_aton.
        let n = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        if !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        nums.push(n);
    }
    // The last number fills the bytes the others leave.
    let (last, firsts) = nums.split_last()?;
    if firsts.iter().any(|&n| n > 0xff) {
        return None;
    }
    let last_max: u64 = match firsts.len() {
        0 => 0xffff_ffff,
        1 => 0x00ff_ffff,
        2 => 0xffff,
        _ => 0xff,
    };
    if *last > last_max {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in firsts.iter().enumerate() {
        v |= n << (24 - 8 * i);
    }
    v |= last;
    u32::try_from(v).ok().map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_a_resolver_takes_for_an_address() {
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for name in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "0x7f.1",
            "0X7F.0.0.1",
            "0177.0.0.1",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "127.0.0.1.",
        ] {
            assert_eq!(ip_like_host_name(name), lo, "{name}");
        }
        assert_eq!(
            ip_like_host_name("::1"),
            Some("::1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            ip_like_host_name("[::1]"),
            Some("::1".parse::<IpAddr>().unwrap())
        );
        assert!(ip_like_host_name("fe80::1%eth0").is_some());
        assert_eq!(
            ip_like_host_name("10"),
            Some(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 10)))
        );
    }

    #[test]
    fn names_are_not_addresses() {
        for name in [
            "web-1",
            "db-1.prod",
            "1e100",
            "0x7g.1",
            "08.0.0.1",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.256",
            "1.16777216",
            "+1",
            "1..2",
            "",
            "host.10",
        ] {
            assert_eq!(ip_like_host_name(name), None, "{name}");
        }
    }
}
