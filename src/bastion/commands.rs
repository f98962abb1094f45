//! The text of the bastion's only commands, `whoami` and `hosts`, and the help that
//! every refused session request carries: pure functions of the identity, the policy in
//! force and the time.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::verify::CertIdentity;
use crate::policy::Policy;
use crate::util::escape;

/// What the bastion does, for refused shells, commands and subsystems.
pub(super) fn help() -> String {
    "this bastion runs no shell or commands; it only forwards (ssh -J bastion HOST, ssh -W). \
     Try `ssh bastion whoami` or `ssh bastion hosts`."
        .to_string()
}

/// `ssh bastion whoami`: the certificate's identity as the bastion sees it, for a client
/// connected from `from`, at `now`.
pub(super) fn whoami(id: &CertIdentity, from: IpAddr, now: SystemTime) -> String {
    let left = id
        .valid_before
        .duration_since(now)
        .map(|d| crate::util::format_duration(Duration::from_secs(d.as_secs())))
        .unwrap_or_else(|_| "expired".into());
    format!(
        "key id:      {}\nprincipals:  {}\ngroups:      {}\nserial:      {}\nexpires:     {} (in {})\nreason:      {}\nfrom:        {}\n",
        escape(&id.key_id),
        id.principals
            .iter()
            .map(|p| escape(p))
            .collect::<Vec<_>>()
            .join(", "),
        if id.groups.is_empty() {
            "-".to_string()
        } else {
            id.groups
                .iter()
                .map(|g| escape(g))
                .collect::<Vec<_>>()
                .join(", ")
        },
        id.serial,
        crate::util::rfc3339(id.valid_before),
        left,
        id.reason
            .as_deref()
            .map(escape)
            .unwrap_or_else(|| "-".into()),
        from,
    )
}

/// `ssh bastion hosts`: the hosts the certificate reaches under `policy` at `now`, one a
/// line with the logins and the principals that grant each.
pub(super) fn hosts(id: &CertIdentity, policy: &Policy, now: SystemTime) -> String {
    // A certificate is all or nothing: one that no longer stands reaches nothing.
    let carried = id.carried();
    if let Err(lost) = policy.still_holds(&carried, now, Some(id.age(now))) {
        return format!("no hosts: {}\n", lost.message());
    }
    let list = policy.reachable(&id.key_id, &id.idp_groups, Some(&id.principals), now);
    if list.is_empty() {
        return "no hosts: your certificate's principals grant none under the current policy\n"
            .into();
    }
    let principals: Vec<&str> = id.principals.iter().map(String::as_str).collect();
    let mut out = String::new();
    for r in list {
        out.push_str(&format!(
            "{}\tlogins: {}\t(via {}){}\n",
            escape(r.host),
            r.logins.join(", "),
            r.principals.join(", "),
            if policy.records(r.host, &principals) {
                "\trecorded"
            } else {
                ""
            }
        ));
    }
    out
}

/// The `recorded:` line `whoami` ends with: the hosts this certificate reaches where every
/// session is recorded, or nothing when there are none (or the certificate no longer
/// stands: `hosts` says why).
pub(super) fn recorded_line(id: &CertIdentity, policy: &Policy, now: SystemTime) -> String {
    let carried = id.carried();
    if policy
        .still_holds(&carried, now, Some(id.age(now)))
        .is_err()
    {
        return String::new();
    }
    let principals: Vec<&str> = id.principals.iter().map(String::as_str).collect();
    let recorded: Vec<String> = policy
        .reachable(&id.key_id, &id.idp_groups, Some(&id.principals), now)
        .into_iter()
        .filter(|r| policy.records(r.host, &principals))
        .map(|r| escape(r.host))
        .collect();
    if recorded.is_empty() {
        String::new()
    } else {
        format!("recorded:    {}\n", recorded.join(", "))
    }
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
