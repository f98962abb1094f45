//! The `[groups.NAME]`, `[users.NAME]`, `[[temporary]]` and `[[revoked]]` sections: who
//! holds which principals, until when, and which certificates no longer count.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::names::{check_name, name_of};
use super::spanned::{Ctx, Key, Val, get};
use super::values::{parse_source, revoked_key_fingerprint};
use super::{Group, Origin, Revoked, Temporary, User};

/// A list of principal names, validated as names; returns the names and their origins.
fn principal_refs(
    ctx: &mut Ctx<'_>,
    v: &Val<'_>,
    ok: &mut bool,
) -> Option<(Vec<String>, Vec<Origin>)> {
    let list = ctx.strings(v, "principals");
    let Some(list) = list else {
        *ok = false;
        return None;
    };
    let mut names = Vec::new();
    let mut origins = Vec::new();
    for (n, span) in list {
        origins.push(ctx.origin(&span));
        names.push(n);
    }
    Some((names, origins))
}

pub(super) fn parse_group(
    ctx: &mut Ctx<'_>,
    key: &Key<'_>,
    body: &DeTable<'_>,
) -> Option<(Group, Vec<Origin>)> {
    let name = name_of(ctx, "group", key);
    let context = format!("[groups.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["members", "principals"], &context);
    let mut ok = true;
    let mut members = Vec::new();
    if let Some(v) = get(body, "members") {
        match ctx.strings(v, "members") {
            Some(list) => {
                for (m, span) in list {
                    if let Err(e) = check_name("user", &m) {
                        ctx.err(span, e);
                        ok = false;
                    }
                    members.push(m);
                }
            }
            None => ok = false,
        }
    }
    let mut principals = None;
    match get(body, "principals") {
        None => ctx.err(
            key.span(),
            format!("{context} needs principals = [\"...\"], the roles its members hold"),
        ),
        Some(v) => {
            if let Some((names, origins)) = principal_refs(ctx, v, &mut ok) {
                if names.is_empty() {
                    ctx.err(v.span(), "principals must name at least one principal");
                    ok = false;
                }
                principals = Some((names, origins));
            }
        }
    }
    let (principals, origins) = principals?;
    if !ok {
        return None;
    }
    Some((
        Group {
            name: name?,
            members,
            principals,
            origin: ctx.origin(&key.span()),
        },
        origins,
    ))
}

pub(super) fn parse_user(
    ctx: &mut Ctx<'_>,
    key: &Key<'_>,
    body: &DeTable<'_>,
) -> Option<(User, Vec<Origin>)> {
    let name = name_of(ctx, "user", key);
    let context = format!("[users.{}]", key.get_ref());
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["principals", "source"], &context);
    let mut ok = true;
    let mut principals = (Vec::new(), Vec::new());
    if let Some(v) = get(body, "principals")
        && let Some(p) = principal_refs(ctx, v, &mut ok)
    {
        principals = p;
    }
    let mut source = Vec::new();
    if let Some(v) = get(body, "source") {
        match ctx.strings(v, "source") {
            Some(list) => {
                for (s, span) in list {
                    match parse_source(&s) {
                        Ok(net) => source.push(net),
                        Err(e) => {
                            ctx.err(span, e);
                            ok = false;
                        }
                    }
                }
            }
            None => ok = false,
        }
    }
    if ok && get(body, "principals").is_none() && get(body, "source").is_none() {
        ctx.err(
            key.span(),
            format!("{context} needs principals, source, or both"),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some((
        User {
            name: name?,
            principals: principals.0,
            source,
            origin: ctx.origin(&key.span()),
        },
        principals.1,
    ))
}

pub(super) fn parse_temporary(
    ctx: &mut Ctx<'_>,
    span: Range<usize>,
    body: &DeTable<'_>,
) -> Option<(Temporary, Origin)> {
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(
        body,
        &["user", "principal", "until", "reason"],
        "[[temporary]]",
    );
    let mut ok = true;
    let user_v = required(ctx, body, &span, "user", "who gets the grant");
    let principal_v = required(ctx, body, &span, "principal", "the principal granted");
    let until_v = required(
        ctx,
        body,
        &span,
        "until",
        "when it ends, e.g. 2026-12-01T00:00:00Z",
    );
    let reason_v = required(ctx, body, &span, "reason", "why, e.g. an incident number");
    let user = user_v.and_then(|v| {
        let s = ctx.string(v, "user")?;
        match check_name("user", &s) {
            Ok(()) => Some(s),
            Err(e) => {
                ctx.err(v.span(), e);
                None
            }
        }
    });
    let principal = principal_v.and_then(|v| {
        let s = ctx.string(v, "principal")?;
        Some((s, ctx.origin(&v.span())))
    });
    let until = until_v.and_then(|v| ctx.time(v, "until"));
    let reason = reason_v.and_then(|v| {
        let s = ctx.string(v, "reason")?;
        if s.trim().is_empty() {
            ctx.err(v.span(), "reason must not be empty");
            return None;
        }
        Some(s)
    });
    let (principal, p_origin) = principal?;
    if user.is_none() || until.is_none() || reason.is_none() {
        ok = false;
    }
    if !ok {
        return None;
    }
    Some((
        Temporary {
            user: user?,
            principal,
            until: until?,
            reason: reason?,
            origin: ctx.origin(&span),
        },
        p_origin,
    ))
}

fn required<'v, 'i>(
    ctx: &mut Ctx<'_>,
    body: &'v DeTable<'i>,
    span: &Range<usize>,
    name: &str,
    help: &str,
) -> Option<&'v Val<'i>> {
    let v = get(body, name);
    if v.is_none() {
        ctx.err(span.clone(), format!("[[temporary]] needs {name} ({help})"));
    }
    v
}

pub(super) fn parse_revoked(
    ctx: &mut Ctx<'_>,
    span: Range<usize>,
    body: &DeTable<'_>,
) -> Option<Revoked> {
    // An unknown key is reported but does not hide the entry from the
    // cross-file checks (duplicates, references).
    ctx.unknown_keys(body, &["serial", "key_id", "key", "reason"], "[[revoked]]");
    let mut ok = true;
    let mut serial = None;
    if let Some(v) = get(body, "serial") {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(s) if s.chars().all(|c| c.is_ascii_digit()) => s.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(0) => {
                ctx.err(v.span(), "serial 0 is never issued");
                ok = false;
            }
            Some(n) => serial = Some(n),
            None => {
                ctx.err(
                    v.span(),
                    "serial must be a certificate serial: an integer from 1 to 18446744073709551615 (or that number as a string)",
                );
                ok = false;
            }
        }
    }
    let mut key_id = None;
    if let Some(v) = get(body, "key_id") {
        match ctx.string(v, "key_id") {
            Some(s) if s.is_empty() => {
                ctx.err(v.span(), "key_id must not be empty");
                ok = false;
            }
            Some(s) => key_id = Some(s),
            None => ok = false,
        }
    }
    let mut key = None;
    if let Some(v) = get(body, "key") {
        match ctx.string(v, "key") {
            Some(s) => match revoked_key_fingerprint(&s) {
                Ok(f) => key = Some(f),
                Err(e) => {
                    ctx.err(v.span(), e);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    let mut reason = None;
    if let Some(v) = get(body, "reason") {
        match ctx.string(v, "reason") {
            Some(s) => reason = Some(s),
            None => ok = false,
        }
    }
    if ok && serial.is_none() && key_id.is_none() && key.is_none() {
        ctx.err(
            span.clone(),
            "[[revoked]] needs serial, key_id or key (one or more)",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Revoked {
        serial,
        key_id,
        key,
        reason,
        origin: ctx.origin(&span),
    })
}
