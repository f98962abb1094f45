//! What goes into a user certificate: pure (no I/O, no clock), so every rule of
//! What a certificate holds (docs/policy.md, "Certificates") is decided and tested here
//! without keys.

use crate::audit::RefusalCode;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::policy::{Grant, Principal, RevokedBy, Via};

use super::cert_fields::{
    BACKDATING, GROUPS_EXTENSION, IDP_GROUPS_EXTENSION, REASON_EXTENSION, SOURCE_ADDRESS,
};

/// Longest reason accepted, in bytes.
pub const MAX_REASON: usize = 256;

/// Everything [`plan_user_cert`] decides from. Built by the HTTP layer from the
/// authenticated identity, the current policy and the request.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The identity; becomes the certificate's key id.
    pub user: &'a str,
    /// The principals the user holds now (`Policy::held(user, idp_groups, now)`).
    pub held: &'a [Grant],
    /// The user's groups: the policy's groups that list the user plus those an
    /// identity provider asserted.
    pub groups: &'a [String],
    /// The groups an identity provider asserted (a subset of `groups`).
    pub idp_groups: &'a [String],
    /// The policy's principal definitions (`Policy::principals`), for `max_ttl` and
    /// `extensions`.
    pub principals: &'a BTreeMap<String, Principal>,
    /// The policy user's `source` networks (empty: no `source-address`).
    pub source: &'a [IpNet],
    /// `?ttl=` / JSON `ttl`, already parsed ([`parse_ttl`]); `None` = the default.
    pub requested_ttl: Option<Duration>,
    /// `?principals=` / JSON `principals` ([`parse_principals`]); `None` = all held.
    pub requested_principals: Option<&'a [String]>,
    /// `certs.default_ttl`.
    pub default_ttl: Duration,
    /// `certs.max_ttl`.
    pub max_ttl: Duration,
    /// `?reason=` / JSON `reason`: why the access is needed (checked by [`check_reason`]).
    pub reason: Option<&'a str>,
    pub now: SystemTime,
}

/// What capped the TTL below what was asked (or the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlCap {
    /// `certs.max_ttl`.
    Global,
    /// The `max_ttl` of this principal (the smallest among the certificate's).
    Principal(String),
    /// The end of a temporary grant: `principal` is held only through temporary grants,
    /// the last of which ends at `until`.
    Temporary {
        principal: String,
        until: SystemTime,
        reason: String,
    },
}

impl std::fmt::Display for TtlCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TtlCap::Global => f.write_str("certs.max_ttl"),
            TtlCap::Principal(p) => write!(f, "max_ttl of principal {p}"),
            TtlCap::Temporary {
                principal,
                until,
                reason,
            } => write!(
                f,
                "temporary grant of {principal} until {} ({reason})",
                crate::util::rfc3339(*until)
            ),
        }
    }
}

/// A certificate to sign: every field decided, nothing left to policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPlan {
    pub key_id: String,
    /// Sorted, deduplicated, never empty.
    pub principals: Vec<String>,
    /// Unix seconds: now − 60 s.
    pub valid_after: u64,
    /// Unix seconds: now + `ttl`.
    pub valid_before: u64,
    /// The effective TTL (after capping).
    pub ttl: Duration,
    /// The TTL asked for or defaulted, before capping.
    pub asked_ttl: Duration,
    /// Set when `ttl < asked_ttl`.
    pub capped_by: Option<TtlCap>,
    pub extensions: BTreeMap<String, String>,
    pub critical_options: BTreeMap<String, String>,
    /// Groups left out of `groups@drawbridge` because their name holds a comma or a
    /// control character (the list could not be read back unambiguously).
    pub omitted_groups: Vec<String>,
}

/// Why no certificate is issued. `Display` is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueRefusal {
    /// The user asked for a principal they do not hold (403).
    #[error("you do not hold the principal \"{0}\"; ask without it, or ask an admin to grant it")]
    PrincipalNotHeld(String),
    /// The user holds no principal at all (403).
    #[error(
        "{0} holds no role (principal) in the policy; ask an admin to add you to a group or grant you a principal"
    )]
    NoPrincipals(String),
    /// `principals` was given but empty (400).
    #[error("the principals list is empty; leave it out to get every principal you hold")]
    EmptyPrincipalList,
    /// `ttl` was zero, under a second or not a duration (400).
    #[error("{0}")]
    InvalidTtl(String),
    /// The identity cannot be a key id (empty or holding control characters) (400).
    #[error("the user name is empty or holds control characters")]
    InvalidUser,
    /// The policy names a principal it does not define (500; the loader should make
    /// this impossible).
    #[error("internal error: the policy grants an undefined principal")]
    UndefinedPrincipal(String),
    /// A `[[revoked]]` entry names the key id or the public key (403). `entry` is where
    /// the entry stands (`file:line:column`), for the audit record.
    #[error("{}", revoked_message(*.by))]
    Revoked { by: RevokedBy, entry: String },
    /// A principal of the certificate says `require_reason = true` and no reason was
    /// given (400); the roles that require one.
    #[error(
        "role {} requires a reason: add ?reason=TICKET (or \"reason\" in the JSON body) saying why you need the access",
        .0.join(", ")
    )]
    ReasonRequired(Vec<String>),
    /// The reason is empty, too long or not printable (400).
    #[error("{0}")]
    BadReason(String),
    /// The only temporary grant of a principal ends within the second (403).
    #[error(
        "your temporary grant of {0} ends now; ask for it to be extended, or leave it out with ?principals="
    )]
    GrantEnding(String),
}

fn revoked_message(by: RevokedBy) -> &'static str {
    match by {
        RevokedBy::Key => {
            "this public key is revoked (listed in the policy's [[revoked]]); no certificate is issued for it: use another key, and ask an admin if you do not know why"
        }
        _ => {
            "you are revoked (your key id is listed in the policy's [[revoked]]); no certificate is issued: ask an admin"
        }
    }
}

impl IssueRefusal {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            IssueRefusal::PrincipalNotHeld(_)
            | IssueRefusal::NoPrincipals(_)
            | IssueRefusal::Revoked { .. }
            | IssueRefusal::GrantEnding(_) => 403,
            IssueRefusal::EmptyPrincipalList
            | IssueRefusal::InvalidTtl(_)
            | IssueRefusal::InvalidUser
            | IssueRefusal::ReasonRequired(_)
            | IssueRefusal::BadReason(_) => 400,
            IssueRefusal::UndefinedPrincipal(_) => 500,
        }
    }

    /// A stable machine-readable code for the JSON error body and the audit record.
    pub fn code(&self) -> RefusalCode {
        match self {
            IssueRefusal::PrincipalNotHeld(_) => RefusalCode::PrincipalNotHeld,
            IssueRefusal::NoPrincipals(_) => RefusalCode::NoPrincipalsHeld,
            IssueRefusal::EmptyPrincipalList => RefusalCode::BadPrincipals,
            IssueRefusal::InvalidTtl(_) => RefusalCode::BadTtl,
            IssueRefusal::InvalidUser => RefusalCode::BadUser,
            IssueRefusal::UndefinedPrincipal(_) => RefusalCode::Internal,
            IssueRefusal::Revoked { .. } => RefusalCode::Revoked,
            IssueRefusal::ReasonRequired(_) => RefusalCode::ReasonRequired,
            IssueRefusal::BadReason(_) => RefusalCode::BadReason,
            IssueRefusal::GrantEnding(_) => RefusalCode::GrantEnding,
        }
    }
}

impl IssueRefusal {
    /// The rule that refused, for the audit record: the `[[revoked]]` entry (file:line),
    /// the policy table that decided, or `api.request` for a malformed request.
    pub fn rule(&self, user: &str) -> String {
        match self {
            IssueRefusal::PrincipalNotHeld(p) => {
                format!("policy: {user} holds no grant of principal {p}")
            }
            IssueRefusal::NoPrincipals(_) => format!("policy: {user} holds no principal"),
            IssueRefusal::EmptyPrincipalList
            | IssueRefusal::InvalidTtl(_)
            | IssueRefusal::InvalidUser
            | IssueRefusal::BadReason(_) => "api.request".to_string(),
            IssueRefusal::UndefinedPrincipal(p) => format!("policy: principal {p} undefined"),
            IssueRefusal::Revoked { entry, .. } => format!("[[revoked]] at {entry}"),
            IssueRefusal::ReasonRequired(roles) => {
                format!("[principals] require_reason of {}", roles.join(", "))
            }
            IssueRefusal::GrantEnding(p) => format!("[[temporary]] grant of {p} ends now"),
        }
    }
}

/// Parses a requested TTL (`"10m"`, `"90s"`); zero, under one second or not a
/// duration is [`IssueRefusal::InvalidTtl`].
pub fn parse_ttl(s: &str) -> Result<Duration, IssueRefusal> {
    let d = crate::util::parse_duration(s).map_err(|_| {
        IssueRefusal::InvalidTtl(format!(
            "ttl {:?} is not a duration; use a number and a unit, e.g. \"10m\"",
            crate::util::escape(&s.chars().take(32).collect::<String>())
        ))
    })?;
    check_ttl(d)?;
    Ok(d)
}

fn check_ttl(d: Duration) -> Result<(), IssueRefusal> {
    if d < Duration::from_secs(1) {
        return Err(IssueRefusal::InvalidTtl(
            "ttl must be at least one second, e.g. \"10m\"".into(),
        ));
    }
    Ok(())
}

/// Checks a reason (`?reason=`): at most [`MAX_REASON`] bytes of printable ASCII (space
/// included), not blank. It goes into a certificate extension, audit records and the
/// bastion's `whoami`, so nothing that could steer a terminal or hide text is let in.
pub fn check_reason(reason: &str) -> Result<(), IssueRefusal> {
    if reason.trim().is_empty() {
        return Err(IssueRefusal::BadReason(
            "reason is empty; say why you need the access, e.g. ?reason=INC-4711".into(),
        ));
    }
    if reason.len() > MAX_REASON {
        return Err(IssueRefusal::BadReason(format!(
            "reason is {} bytes, more than {MAX_REASON}; give a ticket number or a short sentence",
            reason.len()
        )));
    }
    if let Some(c) = reason.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(IssueRefusal::BadReason(format!(
            "reason holds {:?}: only printable ASCII (letters, digits, punctuation, spaces) is accepted",
            c
        )));
    }
    Ok(())
}

/// Splits `?principals=a,b` (white space around names ignored, empty items dropped).
pub fn parse_principals(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Decides a user certificate (the certificate rules in docs/policy.md):
///
/// - principals: every principal held (sorted, deduplicated), or the requested subset;
///   asking for one not held is refused, never silently dropped; holding none is refused;
/// - ttl: requested or `default_ttl`, capped (not refused) by `max_ttl`, by the
///   smallest `max_ttl` of the certificate's principals, and by the end of the
///   temporary grants: a principal held *only* through temporary grants caps
///   `valid_before` at the latest `until` among them (one also held through the user
///   entry or a group does not cap: it outlives the grant);
/// - reason: checked ([`check_reason`]); required when a principal of the certificate
///   says `require_reason = true`;
/// - `valid_after` = now − 60 s, `valid_before` = now + ttl;
/// - extensions: the union of the principals' extensions plus `groups@drawbridge`,
///   `idp-groups@drawbridge` and, with a reason, `reason@drawbridge`;
/// - critical option `source-address` when the policy user has `source`;
/// - key id: the user.
pub fn plan_user_cert(input: &PlanInput<'_>) -> Result<CertPlan, IssueRefusal> {
    if input.user.is_empty() || input.user.chars().any(char::is_control) {
        return Err(IssueRefusal::InvalidUser);
    }
    let held: BTreeSet<&str> = input.held.iter().map(|g| g.principal.as_str()).collect();
    if held.is_empty() {
        return Err(IssueRefusal::NoPrincipals(crate::util::escape(input.user)));
    }
    let principals: BTreeSet<&str> = match input.requested_principals {
        None => held,
        Some(asked) => {
            if asked.is_empty() {
                return Err(IssueRefusal::EmptyPrincipalList);
            }
            for p in asked {
                if !held.contains(p.as_str()) {
                    return Err(IssueRefusal::PrincipalNotHeld(crate::util::escape(p)));
                }
            }
            asked.iter().map(String::as_str).collect()
        }
    };

    let asked_ttl = input.requested_ttl.unwrap_or(input.default_ttl);
    check_ttl(asked_ttl)?;
    let mut ttl = asked_ttl;
    let mut capped_by = None;
    if ttl > input.max_ttl {
        ttl = input.max_ttl;
        capped_by = Some(TtlCap::Global);
    }
    let mut extensions = BTreeMap::new();
    for name in &principals {
        let def = input
            .principals
            .get(*name)
            .ok_or_else(|| IssueRefusal::UndefinedPrincipal(name.to_string()))?;
        if let Some(max) = def.max_ttl
            && max < ttl
        {
            ttl = max;
            capped_by = Some(TtlCap::Principal(name.to_string()));
        }
        for ext in &def.extensions {
            extensions.insert(ext.clone(), String::new());
        }
    }
    // Whole seconds; a principal max_ttl under a second cannot make a usable cert.
    let mut ttl = Duration::from_secs(ttl.as_secs());
    check_ttl(ttl)?;

    // A certificate never outlives a grant it carries.
    let now = crate::util::unix_secs(input.now);
    if let Some(g) = temporary_end(input.held, &principals) {
        let left = g.end.saturating_sub(now);
        if left == 0 {
            return Err(IssueRefusal::GrantEnding(crate::util::escape(&g.principal)));
        }
        if left < ttl.as_secs() {
            ttl = Duration::from_secs(left);
            capped_by = Some(TtlCap::Temporary {
                principal: g.principal,
                until: g.until,
                reason: g.reason,
            });
        }
    }

    let requiring: Vec<String> = principals
        .iter()
        .filter(|p| input.principals.get(**p).is_some_and(|d| d.require_reason))
        .map(|p| p.to_string())
        .collect();
    match input.reason {
        Some(r) => {
            check_reason(r)?;
            extensions.insert(REASON_EXTENSION.to_string(), r.to_string());
        }
        None if !requiring.is_empty() => return Err(IssueRefusal::ReasonRequired(requiring)),
        None => {}
    }

    let mut omitted_groups = Vec::new();
    let mut group_list = |list: &[String]| {
        let mut groups: BTreeSet<&str> = BTreeSet::new();
        for g in list {
            if g.contains(',') || g.chars().any(char::is_control) {
                if !omitted_groups.contains(g) {
                    omitted_groups.push(g.clone());
                }
            } else if !g.is_empty() {
                groups.insert(g.as_str());
            }
        }
        groups.into_iter().collect::<Vec<_>>().join(",")
    };
    let all_groups = group_list(input.groups);
    let idp_groups = group_list(input.idp_groups);
    extensions.insert(GROUPS_EXTENSION.to_string(), all_groups);
    extensions.insert(IDP_GROUPS_EXTENSION.to_string(), idp_groups);

    let mut critical_options = BTreeMap::new();
    if !input.source.is_empty() {
        let cidrs: Vec<String> = input.source.iter().map(|n| n.to_string()).collect();
        critical_options.insert(SOURCE_ADDRESS.to_string(), cidrs.join(","));
    }

    Ok(CertPlan {
        key_id: input.user.to_string(),
        principals: principals.into_iter().map(str::to_string).collect(),
        valid_after: now.saturating_sub(BACKDATING.as_secs()),
        valid_before: now.saturating_add(ttl.as_secs()),
        ttl,
        asked_ttl,
        capped_by: if ttl < asked_ttl { capped_by } else { None },
        extensions,
        critical_options,
        omitted_groups,
    })
}

/// The end (Unix seconds) of the grants of the principals in `principals` that are held
/// only through temporary grants: for each such principal the latest `until` of its
/// grants, and of those the earliest, with the grant that sets it. `None` when every
/// principal is also held through the user entry or a group.
fn temporary_end(held: &[Grant], principals: &BTreeSet<&str>) -> Option<GrantEnd> {
    let mut earliest: Option<GrantEnd> = None;
    for name in principals {
        let mut latest: Option<(SystemTime, &str)> = None;
        let mut permanent = false;
        for g in held.iter().filter(|g| g.principal == *name) {
            match &g.via {
                Via::Temporary { until, reason } => {
                    if latest.is_none_or(|(u, _)| *until > u) {
                        latest = Some((*until, reason));
                    }
                }
                Via::User | Via::Group(_) => permanent = true,
            }
        }
        if permanent {
            continue;
        }
        let Some((until, reason)) = latest else {
            continue;
        };
        let end = crate::util::unix_secs(until);
        if earliest.as_ref().is_none_or(|e| end < e.end) {
            earliest = Some(GrantEnd {
                end,
                principal: name.to_string(),
                until,
                reason: reason.to_string(),
            });
        }
    }
    earliest
}

/// Where the temporary grants of a certificate end ([`temporary_end`]).
struct GrantEnd {
    /// `until` in whole Unix seconds (rounded down).
    end: u64,
    principal: String,
    until: SystemTime,
    reason: String,
}

/// Whether a `[[revoked]]` entry names this key id or public key (fingerprint
/// `SHA256:...`): such a caller gets no certificate, whatever it asks for.
pub fn check_not_revoked(
    policy: &crate::policy::Policy,
    user: &str,
    key_fingerprint: &str,
) -> Result<(), IssueRefusal> {
    match policy.revocation(None, user, key_fingerprint) {
        Some((entry, by)) => Err(IssueRefusal::Revoked {
            by,
            entry: entry.origin.to_string(),
        }),
        None => Ok(()),
    }
}

/// What the caller asked for in `POST /v1/certs` (already parsed).
#[derive(Debug, Clone, Default)]
pub struct CertRequest<'a> {
    /// `ttl`; `None` = `certs.default_ttl`.
    pub ttl: Option<Duration>,
    /// `principals`; `None` = every principal held.
    pub principals: Option<&'a [String]>,
    /// `reason`; `None` = none given.
    pub reason: Option<&'a str>,
    /// SHA-256 fingerprint (`SHA256:...`) of the key to certify, checked against the
    /// revocations.
    pub key_fingerprint: &'a str,
}

/// [`plan_user_cert`] against a loaded policy, after [`check_not_revoked`]: the
/// principals `user` holds now (with
/// the groups an identity provider asserted, `idp_groups`), the user's groups (policy
/// groups plus `idp_groups`) for `groups@drawbridge`, and the policy user's `source`.
///
/// `egress` (`ssh.egress_addresses`) is added to `source-address` when the policy limits
/// the user's networks: a DMZ host sees the bastion's address, not the user's.
pub fn plan_from_policy(
    policy: &crate::policy::Policy,
    user: &str,
    idp_groups: &[String],
    request: &CertRequest<'_>,
    certs: &crate::config::CertsConfig,
    egress: &[IpNet],
    now: SystemTime,
) -> Result<CertPlan, IssueRefusal> {
    check_not_revoked(policy, user, request.key_fingerprint)?;
    let held = policy.held(user, idp_groups, now);
    let mut groups: Vec<String> = policy
        .groups_of(user)
        .into_iter()
        .map(str::to_string)
        .collect();
    groups.extend(idp_groups.iter().cloned());
    let mut source = policy.source_of(user).to_vec();
    if !source.is_empty() {
        source.extend(egress.iter().copied());
    }
    plan_user_cert(&PlanInput {
        user,
        held: &held,
        groups: &groups,
        idp_groups,
        principals: &policy.principals,
        source: &source,
        requested_ttl: request.ttl,
        requested_principals: request.principals,
        default_ttl: certs.default_ttl,
        max_ttl: certs.max_ttl,
        reason: request.reason,
        now,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
