//! `policy test`: expectations in `DIR/tests/*.toml`, checked against the policy.
//!
//! ```toml
//! [[case]]
//! user   = "alice"
//! host   = "web-1"
//! login  = "deploy"            # optional: without it, any login (the bastion's view)
//! expect = "allow"             # or "deny"
//! groups = ["ops"]             # optional: groups an identity provider asserts
//! at     = 2026-12-01T00:00:00Z  # optional: evaluate at this time (default: now)
//! principal = "web-deploy"     # optional: the principal expected to decide an allow
//! name   = "deploys go out"    # optional: shown in failures
//! ```

use std::path::Path;
use std::time::SystemTime;

use toml::de::DeTable;

use super::names::check_name;
use super::spanned::{Ctx, array_sections, get, sort_errors};
use super::{Decision, LoadError, Origin, Policy, Query, Via};

/// One expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: Option<String>,
    pub user: String,
    pub host: String,
    pub login: Option<String>,
    pub expect_allow: bool,
    pub groups: Vec<String>,
    pub at: Option<SystemTime>,
    pub principal: Option<String>,
    pub origin: Origin,
}

const CASE_KEYS: &[&str] = &[
    "user",
    "host",
    "login",
    "expect",
    "groups",
    "at",
    "principal",
    "name",
];

/// Reads `dir/tests/*.toml` (sorted). Returns the valid cases and the errors (one per
/// invalid case, or per file that does not parse); `None` when there is no tests folder.
pub fn read_cases(dir: &Path) -> Option<(Vec<Case>, Vec<LoadError>)> {
    let tests = dir.join("tests");
    let entries = std::fs::read_dir(&tests).ok()?;
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let display = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_cases(&display, &text, &mut cases, &mut errors),
            Err(e) => errors.push(LoadError {
                file: display,
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    sort_errors(&mut errors);
    Some((cases, errors))
}

/// Parses one case file's text (named `file` in messages).
pub fn parse_cases(file: &str, text: &str, cases: &mut Vec<Case>, errors: &mut Vec<LoadError>) {
    let mut ctx = Ctx::new(file, text, errors);
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            ctx.err(
                e.span().unwrap_or(0..0),
                format!("TOML syntax: {}", e.message().trim()),
            );
            return;
        }
    };
    for (k, v) in doc.get_ref().iter() {
        if k.get_ref() != "case" {
            ctx.err(
                k.span(),
                format!(
                    "unknown section {:?} in a test file (write [[case]] tables)",
                    k.get_ref().as_ref()
                ),
            );
            continue;
        }
        array_sections(&mut ctx, v, "case", |ctx, span, body| {
            if let Some(c) = parse_case(ctx, span, body) {
                cases.push(c);
            }
        });
    }
}

fn parse_case(ctx: &mut Ctx<'_>, span: std::ops::Range<usize>, body: &DeTable<'_>) -> Option<Case> {
    let before = ctx.errors.len();
    ctx.unknown_keys(body, CASE_KEYS, "[[case]]");
    let get = |k: &str| get(body, k);
    let required = |ctx: &mut Ctx<'_>, k: &str, help: &str| -> Option<String> {
        match get(k) {
            Some(v) => ctx.string(v, k),
            None => {
                ctx.err(span.clone(), format!("[[case]] needs {k} ({help})"));
                None
            }
        }
    };
    let user = required(ctx, "user", "who asks");
    let host = required(ctx, "host", "an inventory host name");
    let expect = required(ctx, "expect", "\"allow\" or \"deny\"");
    let login = get("login").and_then(|v| ctx.string(v, "login"));
    let name = get("name").and_then(|v| ctx.string(v, "name"));
    let principal = get("principal").and_then(|v| ctx.string(v, "principal"));
    let at = get("at").and_then(|v| ctx.time(v, "at"));
    let mut groups = Vec::new();
    if let Some(v) = get("groups")
        && let Some(list) = ctx.strings(v, "groups")
    {
        for (g, s) in list {
            if let Err(e) = check_name("group", &g) {
                ctx.err(s, e);
            }
            groups.push(g);
        }
    }
    let expect_allow = match (expect.as_deref(), get("expect")) {
        (Some("allow"), _) => Some(true),
        (Some("deny"), _) => Some(false),
        (Some(other), Some(v)) => {
            ctx.err(
                v.span(),
                format!("expect = {other:?}: write \"allow\" or \"deny\""),
            );
            None
        }
        _ => None,
    };
    if principal.is_some() && expect_allow == Some(false) {
        ctx.err(
            span.clone(),
            "principal names the principal expected to allow; it makes no sense with expect = \"deny\"",
        );
    }
    if ctx.errors.len() != before {
        return None;
    }
    Some(Case {
        name,
        user: user?,
        host: host?,
        login,
        expect_allow: expect_allow?,
        groups,
        at,
        principal,
        origin: ctx.origin(&span),
    })
}

/// Runs one case; `Err` says why it failed.
pub fn run_case(policy: &Policy, case: &Case, now: SystemTime) -> Result<(), String> {
    let q = Query {
        user: &case.user,
        extra_groups: &case.groups,
        host: &case.host,
        login: case.login.as_deref(),
        within: None,
        now: case.at.unwrap_or(now),
    };
    let decision = policy.decide(&q);
    match (&decision, case.expect_allow) {
        (Decision::Allow { grant }, true) => match &case.principal {
            Some(p) if *p != grant.principal => Err(format!(
                "expected allow by principal {p}, but {} decided ({})",
                grant.principal,
                via_text(&grant.via)
            )),
            _ => Ok(()),
        },
        (Decision::Deny { .. }, false) => Ok(()),
        (Decision::Allow { grant }, false) => Err(format!(
            "expected deny, got allow by principal {} ({})",
            grant.principal,
            via_text(&grant.via)
        )),
        (Decision::Deny { reason }, true) => Err(format!("expected allow, got deny: {reason}")),
    }
}

/// "via group ops", "via [users] entry", "via temporary grant until T (reason)".
pub fn via_text(via: &Via) -> String {
    match via {
        Via::User => "via its [users] entry".to_string(),
        Via::Group(g) => format!("via group {g}"),
        Via::Temporary { until, reason } => format!(
            "via temporary grant until {} ({reason})",
            crate::util::rfc3339(*until)
        ),
    }
}

/// "alice -> web-1 as deploy".
pub fn describe(case: &Case) -> String {
    let login = case
        .login
        .as_deref()
        .map(|l| format!(" as {l}"))
        .unwrap_or_else(|| " (any login)".to_string());
    let name = case
        .name
        .as_deref()
        .map(|n| format!(" [{n}]"))
        .unwrap_or_default();
    format!("{} -> {}{login}{name}", case.user, case.host)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cases_parse_and_unknown_keys_are_errors() {
        let mut cases = Vec::new();
        let mut errors = Vec::new();
        parse_cases(
            "t.toml",
            "[[case]]\nuser = \"a\"\nhost = \"h\"\nlogin = \"l\"\nexpect = \"allow\"\n\n\
             [[case]]\nuser = \"a\"\nhost = \"h\"\nexpect = \"maybe\"\nlogn = \"x\"\n",
            &mut cases,
            &mut errors,
        );
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].origin.line, 1);
        let e: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            e,
            vec![
                "t.toml:11:1: unknown key \"logn\" in [[case]] (did you mean \"login\"? allowed: user, host, login, expect, groups, at, principal, name)",
                "t.toml:10:10: expect = \"maybe\": write \"allow\" or \"deny\"",
            ]
        );
    }
}
