//! Loading a policy: each file's sections parsed ([`sections_hosts`](super::sections_hosts),
//! [`sections_people`](super::sections_people)) through the spanned-TOML walker
//! ([`spanned`](super::spanned)), then merged across files with the cross-file checks
//! (duplicates, dangling references). Every error of a folder is reported in one run (a
//! syntax error stops only its file).

use std::collections::BTreeSet;

use toml::de::DeTable;

use super::folder::SourceFile;
use super::sections_hosts::{parse_host, parse_principal};
use super::sections_people::{parse_group, parse_revoked, parse_temporary, parse_user};
use super::spanned::{Ctx, array_sections, known_list, named_sections, sort_errors, suggest};
use super::values::selector_text;
use super::{
    Group, Host, HostSelector, LoadError, LoadErrors, Origin, Policy, Principal, Revoked,
    Temporary, User,
};

const SECTIONS: &str = "hosts, principals, groups, users, temporary, revoked";

/// Everything read from the files before the cross-file checks.
#[derive(Default)]
struct Raw {
    hosts: Vec<Host>,
    principals: Vec<(Principal, Vec<Origin>, Origin)>,
    groups: Vec<(Group, Vec<Origin>)>,
    users: Vec<(User, Vec<Origin>)>,
    temporary: Vec<(Temporary, Origin)>,
    revoked: Vec<Revoked>,
}

/// Parses and validates policy files (already read) into a policy; `version` is left
/// empty for the caller to fill.
pub fn parse_files(files: &[SourceFile]) -> Result<Policy, LoadErrors> {
    let mut errors = Vec::new();
    let mut raw = Raw::default();
    for f in files {
        let mut ctx = Ctx::new(&f.display, &f.text, &mut errors);
        match DeTable::parse(&f.text) {
            Ok(table) => parse_document(&mut ctx, table.get_ref(), &mut raw),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                ctx.err(span, format!("TOML syntax: {}", e.message().trim()));
            }
        }
    }
    let policy = assemble(raw, &mut errors);
    if errors.is_empty() {
        Ok(policy)
    } else {
        sort_errors(&mut errors);
        Err(LoadErrors(errors))
    }
}

fn parse_document(ctx: &mut Ctx<'_>, doc: &DeTable<'_>, raw: &mut Raw) {
    for (k, v) in doc.iter() {
        match k.get_ref().as_ref() {
            "hosts" => named_sections(ctx, k, v, "hosts", |ctx, name, body| {
                if let Some(h) = parse_host(ctx, name, body) {
                    raw.hosts.push(h);
                }
            }),
            "principals" => named_sections(ctx, k, v, "principals", |ctx, name, body| {
                if let Some(p) = parse_principal(ctx, name, body) {
                    raw.principals.push(p);
                }
            }),
            "groups" => named_sections(ctx, k, v, "groups", |ctx, name, body| {
                if let Some(g) = parse_group(ctx, name, body) {
                    raw.groups.push(g);
                }
            }),
            "users" => named_sections(ctx, k, v, "users", |ctx, name, body| {
                if let Some(u) = parse_user(ctx, name, body) {
                    raw.users.push(u);
                }
            }),
            "temporary" => array_sections(ctx, v, "temporary", |ctx, span, body| {
                if let Some(t) = parse_temporary(ctx, span, body) {
                    raw.temporary.push(t);
                }
            }),
            "revoked" => array_sections(ctx, v, "revoked", |ctx, span, body| {
                if let Some(r) = parse_revoked(ctx, span, body) {
                    raw.revoked.push(r);
                }
            }),
            other => {
                let hint = suggest(other, SECTIONS.split(", "))
                    .map(|s| format!("did you mean {s:?}? "))
                    .unwrap_or_default();
                ctx.err(
                    k.span(),
                    format!("unknown section {other:?} ({hint}allowed: {SECTIONS})"),
                );
            }
        }
    }
}

fn at(o: &Origin) -> String {
    format!("{}:{}:{}", o.file, o.line, o.column)
}

fn err_at(errors: &mut Vec<LoadError>, o: &Origin, message: String) {
    errors.push(LoadError {
        file: o.file.clone(),
        line: o.line,
        column: o.column,
        message,
    });
}

/// Merges the files' definitions, reporting duplicates and dangling references.
fn assemble(raw: Raw, errors: &mut Vec<LoadError>) -> Policy {
    let mut policy = Policy::default();
    for h in raw.hosts {
        if let Some(prev) = policy.hosts.get(&h.name) {
            let msg = format!(
                "host {:?} is already defined at {}",
                h.name,
                at(&prev.origin)
            );
            err_at(errors, &h.origin, msg);
        } else {
            policy.hosts.insert(h.name.clone(), h);
        }
    }
    let mut principal_refs = Vec::new();
    for (p, host_origins, hosts_origin) in raw.principals {
        if let Some(prev) = policy.principals.get(&p.name) {
            let msg = format!(
                "principal {:?} is already defined at {}",
                p.name,
                at(&prev.origin)
            );
            err_at(errors, &p.origin, msg);
        } else {
            principal_refs.push((p.name.clone(), host_origins, hosts_origin));
            policy.principals.insert(p.name.clone(), p);
        }
    }
    // Principal → hosts references.
    for (name, host_origins, hosts_origin) in principal_refs {
        let Some(p) = policy.principals.get(&name) else {
            continue;
        };
        match &p.hosts {
            HostSelector::All => {}
            HostSelector::Names(names) => {
                for (n, o) in names.iter().zip(host_origins.iter()) {
                    if !policy.hosts.contains_key(n) {
                        let known = known_list(n, policy.hosts.keys().map(String::as_str));
                        err_at(errors, o, format!("unknown host {n:?} ({known})"));
                    }
                }
            }
            HostSelector::Labels(sel) => {
                let any = policy
                    .hosts
                    .values()
                    .any(|h| sel.iter().all(|(k, v)| h.labels.get(k) == Some(v)));
                if !any {
                    let in_use: BTreeSet<String> = policy
                        .hosts
                        .values()
                        .flat_map(|h| h.labels.iter().map(|(k, v)| format!("{k}={v}")))
                        .collect();
                    let shown: Vec<&str> = in_use.iter().take(30).map(String::as_str).collect();
                    let more = if in_use.len() > 30 { ", ..." } else { "" };
                    err_at(
                        errors,
                        &hosts_origin,
                        format!(
                            "label selector {} matches no host (labels in use: {}{more})",
                            selector_text(sel),
                            if shown.is_empty() {
                                "none".to_string()
                            } else {
                                shown.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }
    let check_principal = |errors: &mut Vec<LoadError>, policy: &Policy, n: &str, o: &Origin| {
        if !policy.principals.contains_key(n) {
            let known = known_list(n, policy.principals.keys().map(String::as_str));
            err_at(errors, o, format!("unknown principal {n:?} ({known})"));
        }
    };
    for (g, origins) in raw.groups {
        for (n, o) in g.principals.iter().zip(origins.iter()) {
            check_principal(errors, &policy, n, o);
        }
        if let Some(prev) = policy.groups.get(&g.name) {
            let msg = format!(
                "group {:?} is already defined at {}",
                g.name,
                at(&prev.origin)
            );
            err_at(errors, &g.origin, msg);
        } else {
            policy.groups.insert(g.name.clone(), g);
        }
    }
    for (u, origins) in raw.users {
        for (n, o) in u.principals.iter().zip(origins.iter()) {
            check_principal(errors, &policy, n, o);
        }
        if let Some(prev) = policy.users.get(&u.name) {
            let msg = format!(
                "user {:?} is already defined at {}",
                u.name,
                at(&prev.origin)
            );
            err_at(errors, &u.origin, msg);
        } else {
            policy.users.insert(u.name.clone(), u);
        }
    }
    for (t, o) in raw.temporary {
        check_principal(errors, &policy, &t.principal, &o);
        policy.temporary.push(t);
    }
    policy.revoked = raw.revoked;
    policy
}
