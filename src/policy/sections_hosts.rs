//! The `[hosts.NAME]` and `[principals.NAME]` sections: the inventory, and which hosts
//! and logins each principal (role) grants.

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};

use super::names::{check_name, name_of};
use super::spanned::{Ctx, Key, Val, get, type_name};
use super::values::{parse_address, revoked_key_fingerprint};
use super::{Host, HostSelector, Origin, Principal};
use crate::issuer::cert_fields::{
    OPENSSH_EXTENSIONS, RESERVED_EXTENSION_SUFFIX, RESERVED_EXTENSIONS, is_reserved_extension,
};

pub(super) fn parse_host(ctx: &mut Ctx<'_>, key: &Key<'_>, body: &DeTable<'_>) -> Option<Host> {
    let name = match super::ip_like::ip_like_host_name(key.get_ref()) {
        Some(ip) => {
            ctx.err(
                key.span(),
                format!(
                    "host name {:?} parses as the IP address {ip}; a host named like an address would shadow the inventory's addresses: name it (e.g. \"web-1\") and put the address in address = \"...\"",
                    key.get_ref().as_ref()
                ),
            );
            None
        }
        None => name_of(ctx, "host", key),
    };
    let context = format!("[hosts.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["address", "labels", "record", "host_key"], &context);
    let mut ok = true;
    let mut address = None;
    if let Some(v) = get(body, "address") {
        if let Some(s) = ctx.string(v, "address") {
            match parse_address(&s) {
                Ok(a) => address = Some(a),
                Err(e) => ctx.err(v.span(), e),
            }
        }
    } else {
        ctx.err(
            key.span(),
            format!("{context} needs address = \"host\" or \"host:port\" (port 22 by default)"),
        );
    }
    let mut labels = BTreeMap::new();
    if let Some(v) = get(body, "labels") {
        match parse_labels(ctx, v, "labels") {
            Some(l) => labels = l,
            None => ok = false,
        }
    }
    let record = match parse_bool(ctx, body, "record") {
        Some(b) => b,
        None => {
            ok = false;
            false
        }
    };
    let mut host_key = None;
    if let Some(v) = get(body, "host_key") {
        match ctx.string(v, "host_key") {
            Some(s) => match pinned_host_key(&s) {
                Ok(fp) => host_key = Some(fp),
                Err(e) => {
                    ctx.err(v.span(), e);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    let (address, port) = address?;
    if !ok {
        return None;
    }
    Some(Host {
        name: name?,
        address,
        port,
        labels,
        record,
        host_key,
        origin: ctx.origin(&key.span()),
    })
}

/// `host_key`: an OpenSSH public key line or its SHA-256 fingerprint, stored as the
/// fingerprint (the one form compared). Never a certificate: the pin is the key itself.
fn pinned_host_key(s: &str) -> Result<String, String> {
    revoked_key_fingerprint(s).map_err(|e| {
        format!(
            "host_key: {e}; write the target's host key as ssh-keyscan or its ssh_host_ed25519_key.pub prints it, or ssh-keygen -lf's SHA256: fingerprint"
        )
    })
}

/// An optional boolean key: `Some(false)` when absent, `None` (error reported) when it
/// is not a boolean.
fn parse_bool(ctx: &mut Ctx<'_>, body: &DeTable<'_>, key: &str) -> Option<bool> {
    let Some(v) = get(body, key) else {
        return Some(false);
    };
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            ctx.err(
                v.span(),
                format!("{key} must be true or false, not {}", type_name(other)),
            );
            None
        }
    }
}

fn parse_labels(ctx: &mut Ctx<'_>, v: &Val<'_>, what: &str) -> Option<BTreeMap<String, String>> {
    let t = match v.get_ref() {
        DeValue::Table(t) => t,
        other => {
            ctx.err(
                v.span(),
                format!(
                    "{what} must be a table like {{ role = \"web\" }}, not {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, lv) in t.iter() {
        if let Err(e) = check_name("label", k.get_ref()) {
            ctx.err(k.span(), e);
            ok = false;
        }
        match ctx.string(lv, &format!("label {}", k.get_ref())) {
            Some(s) => {
                out.insert(k.get_ref().to_string(), s);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

pub(super) fn parse_principal(
    ctx: &mut Ctx<'_>,
    key: &Key<'_>,
    body: &DeTable<'_>,
) -> Option<(Principal, Vec<Origin>, Origin)> {
    let name = name_of(ctx, "principal", key);
    let context = format!("[principals.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(
        body,
        &[
            "hosts",
            "logins",
            "max_ttl",
            "extensions",
            "require_reason",
            "record",
        ],
        &context,
    );
    let mut ok = true;
    let mut hosts = None;
    let mut host_origins = Vec::new();
    let mut hosts_origin = ctx.origin(&key.span());
    match get(body, "hosts") {
        None => ctx.err(
            key.span(),
            format!(
                "{context} needs hosts = \"*\", a list of host names, or a label table like {{ role = \"web\" }}"
            ),
        ),
        Some(v) => {
            hosts_origin = ctx.origin(&v.span());
            match v.get_ref() {
                DeValue::String(s) if s == "*" => hosts = Some(HostSelector::All),
                DeValue::String(s) => ctx.err(
                    v.span(),
                    format!(
                        "hosts = {s:?}: write \"*\" for every host, a list like [{s:?}], or a label table like {{ role = \"web\" }}"
                    ),
                ),
                DeValue::Array(_) => {
                    if let Some(list) = ctx.strings(v, "hosts") {
                        let mut names = Vec::new();
                        for (n, span) in list {
                            host_origins.push(ctx.origin(&span));
                            if let Err(e) = check_name("host", &n) {
                                ctx.err(span, e);
                                ok = false;
                            }
                            names.push(n);
                        }
                        if names.is_empty() {
                            ctx.err(v.span(), "hosts must not be an empty list (write \"*\" for every host)");
                            ok = false;
                        }
                        hosts = Some(HostSelector::Names(names));
                    }
                }
                DeValue::Table(t) => {
                    if t.is_empty() {
                        ctx.err(
                            v.span(),
                            "empty label selector: name at least one label, or write \"*\" for every host",
                        );
                    } else if let Some(l) = parse_labels(ctx, v, "hosts") {
                        hosts = Some(HostSelector::Labels(l));
                    }
                }
                other => ctx.err(
                    v.span(),
                    format!(
                        "hosts must be \"*\", a list of host names, or a label table, not {}",
                        type_name(other)
                    ),
                ),
            }
        }
    }
    let mut logins = None;
    match get(body, "logins") {
        None => ctx.err(
            key.span(),
            format!("{context} needs logins = [\"...\"], the local users it may log in as"),
        ),
        Some(v) => {
            if let Some(list) = ctx.strings(v, "logins") {
                if list.is_empty() {
                    ctx.err(
                        v.span(),
                        "logins must name at least one login, e.g. [\"deploy\"]",
                    );
                } else {
                    let mut out = Vec::new();
                    for (l, span) in list {
                        if let Err(e) = check_name("login", &l) {
                            ctx.err(span, e);
                            ok = false;
                        }
                        out.push(l);
                    }
                    logins = Some(out);
                }
            }
        }
    }
    let mut max_ttl = None;
    if let Some(v) = get(body, "max_ttl") {
        match ctx.string(v, "max_ttl") {
            Some(s) => match crate::util::parse_duration(&s) {
                Ok(d) if d.is_zero() => {
                    ctx.err(v.span(), "max_ttl must be above zero");
                    ok = false;
                }
                Ok(d) => max_ttl = Some(d),
                Err(e) => {
                    ctx.err(v.span(), format!("max_ttl: {e}"));
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    let mut extensions = vec!["permit-pty".to_string()];
    if let Some(v) = get(body, "extensions") {
        match ctx.strings(v, "extensions") {
            Some(list) => {
                extensions = Vec::new();
                for (e, span) in list {
                    if is_reserved_extension(&e) {
                        ctx.err(
                            span,
                            format!(
                                "{e} is set by drawbridge itself (reserved: {} and every name ending in {RESERVED_EXTENSION_SUFFIX})",
                                RESERVED_EXTENSIONS.join(", ")
                            ),
                        );
                        ok = false;
                    } else if !(OPENSSH_EXTENSIONS.contains(&e.as_str())
                        || (e.contains('@') && check_name("extension", &e).is_ok()))
                    {
                        ctx.err(
                            span,
                            format!(
                                "unknown extension {e:?} (OpenSSH knows: {}; vendor extensions contain '@')",
                                OPENSSH_EXTENSIONS.join(", ")
                            ),
                        );
                        ok = false;
                    }
                    extensions.push(e);
                }
            }
            None => ok = false,
        }
    }
    let mut require_reason = false;
    if let Some(v) = get(body, "require_reason") {
        match v.get_ref() {
            DeValue::Boolean(b) => require_reason = *b,
            other => {
                ctx.err(
                    v.span(),
                    format!(
                        "require_reason must be true or false, not {}",
                        type_name(other)
                    ),
                );
                ok = false;
            }
        }
    }
    let record = match parse_bool(ctx, body, "record") {
        Some(b) => b,
        None => {
            ok = false;
            false
        }
    };
    if !ok {
        return None;
    }
    Some((
        Principal {
            name: name?,
            hosts: hosts?,
            logins: logins?,
            max_ttl,
            extensions,
            require_reason,
            record,
            origin: ctx.origin(&key.span()),
        },
        host_origins,
        hosts_origin,
    ))
}
