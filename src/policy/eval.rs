//! Evaluation: pure functions of a loaded policy, a question and a time. No I/O, no clock.
//!
//! Lookups go through [`PolicyIndex`], built once per policy, so a decision costs a few
//! hash lookups whatever the size of the policy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::{Decision, Grant, Host, HostSelector, Policy, Principal, Query, Temporary, Via};
use crate::util::{escape, rfc3339};

/// Lookup tables derived from a policy (see [`Policy::index`]).
#[derive(Default)]
pub struct PolicyIndex {
    /// user → the policy groups listing them, sorted.
    user_groups: HashMap<String, Vec<String>>,
    /// user → indexes into `Policy::temporary`.
    user_temps: HashMap<String, Vec<usize>>,
    /// principal → its host names, for list selectors.
    name_sets: HashMap<String, HashSet<String>>,
    /// inventory address → host names with that address.
    by_address: HashMap<String, Vec<String>>,
}

impl std::fmt::Debug for PolicyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyIndex { .. }")
    }
}

impl PolicyIndex {
    pub(crate) fn build(p: &Policy) -> PolicyIndex {
        let mut user_groups: HashMap<String, Vec<String>> = HashMap::new();
        for g in p.groups.values() {
            for m in &g.members {
                user_groups
                    .entry(m.clone())
                    .or_default()
                    .push(g.name.clone());
            }
        }
        for v in user_groups.values_mut() {
            v.sort();
            v.dedup();
        }
        let mut user_temps: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in p.temporary.iter().enumerate() {
            user_temps.entry(t.user.clone()).or_default().push(i);
        }
        let mut name_sets = HashMap::new();
        for pr in p.principals.values() {
            if let HostSelector::Names(names) = &pr.hosts {
                name_sets.insert(pr.name.clone(), names.iter().cloned().collect());
            }
        }
        let mut by_address: HashMap<String, Vec<String>> = HashMap::new();
        for h in p.hosts.values() {
            by_address
                .entry(h.address.clone())
                .or_default()
                .push(h.name.clone());
        }
        PolicyIndex {
            user_groups,
            user_temps,
            name_sets,
            by_address,
        }
    }
}

/// How a grant is held, borrowed from the policy (converted to [`Via`] for callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ViaRef<'a> {
    User,
    Group(&'a str),
    Temporary(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct GrantRef<'a> {
    principal: &'a str,
    via: ViaRef<'a>,
}

impl Policy {
    /// The lookup tables, built on first use if the loader did not.
    pub fn index(&self) -> &PolicyIndex {
        self.index
            .get_or_init(|| Arc::new(PolicyIndex::build(self)))
            .as_ref()
    }

    /// The policy groups that list `user` as a member, sorted.
    pub fn groups_of(&self, user: &str) -> Vec<&str> {
        self.index()
            .user_groups
            .get(user)
            .map(|g| g.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Every user name the policy mentions: `[users]`, group members, temporary grants.
    pub fn all_users(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self.users.keys().map(String::as_str).collect();
        for g in self.groups.values() {
            out.extend(g.members.iter().map(String::as_str));
        }
        out.extend(self.temporary.iter().map(|t| t.user.as_str()));
        out
    }

    fn held_refs<'a>(
        &'a self,
        user: &str,
        extra_groups: &[String],
        now: SystemTime,
    ) -> Vec<GrantRef<'a>> {
        let index = self.index();
        let mut out = Vec::new();
        if let Some(u) = self.users.get(user) {
            out.extend(u.principals.iter().map(|p| GrantRef {
                principal: p,
                via: ViaRef::User,
            }));
        }
        let policy_groups = index
            .user_groups
            .get(user)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut seen: Vec<&str> = Vec::new();
        let groups = policy_groups.iter().chain(extra_groups.iter());
        for g in groups {
            if seen.contains(&g.as_str()) {
                continue;
            }
            seen.push(g);
            if let Some(group) = self.groups.get(g) {
                out.extend(group.principals.iter().map(|p| GrantRef {
                    principal: p,
                    via: ViaRef::Group(&group.name),
                }));
            }
        }
        if let Some(temps) = index.user_temps.get(user) {
            for &i in temps {
                if let Some(t) = self.temporary.get(i)
                    && now < t.until
                {
                    out.push(GrantRef {
                        principal: &t.principal,
                        via: ViaRef::Temporary(i),
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn to_grant(&self, g: &GrantRef<'_>) -> Grant {
        let via = match g.via {
            ViaRef::User => Via::User,
            ViaRef::Group(name) => Via::Group(name.to_string()),
            ViaRef::Temporary(i) => match self.temporary.get(i) {
                Some(t) => Via::Temporary {
                    until: t.until,
                    reason: t.reason.clone(),
                },
                None => Via::User,
            },
        };
        Grant {
            principal: g.principal.to_string(),
            via,
        }
    }

    /// The principals `user` holds at `now` (policy groups plus `extra_groups`), each
    /// with how it is held, sorted by principal then user entry, group, temporary grant.
    /// A principal held several ways appears once per way.
    pub fn held(&self, user: &str, extra_groups: &[String], now: SystemTime) -> Vec<Grant> {
        self.held_refs(user, extra_groups, now)
            .iter()
            .map(|g| self.to_grant(g))
            .collect()
    }

    /// The names of the principals `user` holds at `now`, sorted, without duplicates:
    /// what a certificate for them carries.
    pub fn principal_names(
        &self,
        user: &str,
        extra_groups: &[String],
        now: SystemTime,
    ) -> Vec<String> {
        let mut names: Vec<String> = self
            .held_refs(user, extra_groups, now)
            .iter()
            .map(|g| g.principal.to_string())
            .collect();
        names.dedup();
        names
    }

    /// The smallest `max_ttl` among `principals` (None when none sets one).
    pub fn max_ttl_of(&self, principals: &[String]) -> Option<Duration> {
        principals
            .iter()
            .filter_map(|p| self.principals.get(p)?.max_ttl)
            .min()
    }

    /// The union of the certificate extensions of `principals`.
    pub fn extensions_of(&self, principals: &[String]) -> BTreeSet<String> {
        principals
            .iter()
            .filter_map(|p| self.principals.get(p))
            .flat_map(|p| p.extensions.iter().cloned())
            .collect()
    }

    /// The `source` networks of `user` (empty: no source-address restriction).
    pub fn source_of(&self, user: &str) -> &[IpNet] {
        self.users
            .get(user)
            .map(|u| u.source.as_slice())
            .unwrap_or(&[])
    }

    /// Whether `principal` grants `host` (whatever the login).
    pub fn grants_host(&self, principal: &Principal, host: &Host) -> bool {
        match &principal.hosts {
            HostSelector::All => true,
            HostSelector::Names(names) => match self.index().name_sets.get(&principal.name) {
                Some(set) => set.contains(&host.name),
                None => names.contains(&host.name),
            },
            HostSelector::Labels(sel) => sel.iter().all(|(k, v)| host.labels.get(k) == Some(v)),
        }
    }

    /// The inventory hosts `principal` grants, sorted by name (empty if unknown).
    pub fn hosts_of(&self, principal: &str) -> Vec<&Host> {
        let Some(p) = self.principals.get(principal) else {
            return Vec::new();
        };
        match &p.hosts {
            HostSelector::Names(names) => {
                let mut out: Vec<&Host> = names.iter().filter_map(|n| self.hosts.get(n)).collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                out
            }
            _ => self
                .hosts
                .values()
                .filter(|h| self.grants_host(p, h))
                .collect(),
        }
    }

    /// AuthorizedPrincipalsFile data for `host`: login → the principals that may log in
    /// as it, sorted. Empty for an unknown host.
    pub fn principals_for_host(&self, host: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Some(h) = self.hosts.get(host) else {
            return out;
        };
        for p in self.principals.values() {
            if self.grants_host(p, h) {
                for l in &p.logins {
                    out.entry(l.clone()).or_default().push(p.name.clone());
                }
            }
        }
        out
    }

    /// Temporary grants of `user` that have ended at `now`.
    pub fn expired_temporaries(&self, user: &str, now: SystemTime) -> Vec<&Temporary> {
        self.index()
            .user_temps
            .get(user)
            .map(|v| {
                v.iter()
                    .filter_map(|&i| self.temporary.get(i))
                    .filter(|t| now >= t.until)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn decide_impl(&self, q: &Query<'_>) -> Decision {
        let deny = |reason: String| Decision::Deny { reason };
        let user = escape(q.user);
        let Some(host) = self.hosts.get(q.host) else {
            return deny(format!(
                "unknown host \"{}\": not in the inventory",
                escape(q.host)
            ));
        };
        let grants = self.held_refs(q.user, q.extra_groups, q.now);
        let expired_note = |host_filter: bool| -> String {
            let mut notes = Vec::new();
            for t in self.expired_temporaries(q.user, q.now) {
                let grants_it = self
                    .principals
                    .get(&t.principal)
                    .is_some_and(|p| self.grants_host(p, host));
                if !host_filter || grants_it {
                    notes.push(format!(
                        "; the temporary grant of {} ({}) expired at {}",
                        t.principal,
                        t.reason,
                        rfc3339(t.until)
                    ));
                }
            }
            notes.concat()
        };
        if grants.is_empty() {
            return deny(format!(
                "user \"{user}\" holds no principal (not in [users], in no group that grants one, no current temporary grant){}",
                expired_note(false)
            ));
        }
        let considered: Vec<&GrantRef<'_>> = match q.within {
            None => grants.iter().collect(),
            Some(within) => grants
                .iter()
                .filter(|g| within.iter().any(|w| w == g.principal))
                .collect(),
        };
        if considered.is_empty() {
            let within = q.within.unwrap_or(&[]);
            return deny(format!(
                "user \"{user}\" no longer holds any of the certificate's principals ({}); holds now: {}",
                escape(&within.join(", ")),
                held_names(&grants)
            ));
        }
        let mut host_ok: Vec<&Principal> = Vec::new();
        for g in &considered {
            let Some(p) = self.principals.get(g.principal) else {
                continue;
            };
            if !self.grants_host(p, host) {
                continue;
            }
            match q.login {
                None => {
                    return Decision::Allow {
                        grant: self.to_grant(g),
                    };
                }
                Some(l) if p.logins.iter().any(|x| x == l) => {
                    return Decision::Allow {
                        grant: self.to_grant(g),
                    };
                }
                Some(_) => {
                    if !host_ok.iter().any(|x| x.name == p.name) {
                        host_ok.push(p);
                    }
                }
            }
        }
        let login = escape(q.login.unwrap_or(""));
        if !host_ok.is_empty() {
            let parts: Vec<String> = host_ok
                .iter()
                .map(|p| format!("{} allows login {}", p.name, p.logins.join(", ")))
                .collect();
            return deny(format!(
                "host {} is granted to \"{user}\" but not as login \"{login}\" ({})",
                host.name,
                parts.join("; ")
            ));
        }
        let names = if q.within.is_some() {
            let mut v: Vec<&str> = considered.iter().map(|g| g.principal).collect();
            v.dedup();
            format!("the certificate's principals held now ({})", v.join(", "))
        } else {
            format!("the principals \"{user}\" holds ({})", held_names(&grants))
        };
        deny(format!(
            "none of {names} grants host {}{}",
            host.name,
            expired_note(true)
        ))
    }

    /// Resolves the host of a `direct-tcpip` request to an inventory host.
    ///
    /// Accepted: exactly an inventory host name, or exactly the address string of an
    /// inventory host; and a port that is that host's port, or 22 (what `ssh -J` sends when
    /// no port is given). The caller dials `host.address:host.port`, never the request.
    /// Everything else is refused: case variants, trailing dots, numeric IPv4 forms
    /// (decimal, octal, hex), IPv4-mapped IPv6, names or addresses outside the inventory.
    ///
    /// The messages describe the inventory: for a person who may not reach every host,
    /// use [`Policy::locate`] and word the refusal from what they may reach.
    pub fn resolve_target(&self, requested_host: &str, port: u16) -> Result<&Host, String> {
        let shown = escape(requested_host);
        match self.locate(requested_host, port) {
            Ok(h) => Ok(h),
            Err(Unresolved::SharedAddress(candidates)) => {
                let list: Vec<&str> = candidates.iter().map(|h| h.name.as_str()).collect();
                Err(format!(
                    "address \"{shown}\" is shared by the inventory hosts {}; connect by host name",
                    list.join(", ")
                ))
            }
            Err(Unresolved::WrongPort(host)) => Err(wrong_port(host, port)),
            Err(Unresolved::NotFound) => Err(self.refusal(requested_host, &|_| true)),
        }
    }

    /// [`Policy::resolve_target`] with the reason as data, so the caller can choose what
    /// to tell whom.
    pub fn locate(&self, requested_host: &str, port: u16) -> Result<&Host, Unresolved<'_>> {
        let host = match self.hosts.get(requested_host) {
            Some(h) => h,
            None => match self.index().by_address.get(requested_host) {
                Some(names) => {
                    let candidates: Vec<&Host> =
                        names.iter().filter_map(|n| self.hosts.get(n)).collect();
                    let exact: Vec<&Host> = candidates
                        .iter()
                        .copied()
                        .filter(|h| h.port == port)
                        .collect();
                    match (candidates.as_slice(), exact.as_slice()) {
                        ([only], _) => *only,
                        (_, [only]) => *only,
                        _ => return Err(Unresolved::SharedAddress(candidates)),
                    }
                }
                None => return Err(Unresolved::NotFound),
            },
        };
        if port != host.port && port != 22 {
            return Err(Unresolved::WrongPort(host));
        }
        Ok(host)
    }

    /// Why `requested` names no inventory host, with a spelling hint only when the hint
    /// names a host `may_reach` accepts; `None` when there is nothing to say beyond "not
    /// found" (the caller words that).
    pub fn spelling_hint(
        &self,
        requested: &str,
        may_reach: &dyn Fn(&Host) -> bool,
    ) -> Option<String> {
        let shown = escape(requested);
        if requested.is_empty() {
            return Some("empty host name refused".to_string());
        }
        if requested.chars().any(|c| c.is_control()) {
            return Some(format!(
                "host \"{shown}\" refused: control characters in the host name"
            ));
        }
        let trimmed = requested.trim_end_matches('.');
        if trimmed != requested && self.known_and_reachable(trimmed, may_reach) {
            return Some(format!(
                "host \"{shown}\" refused: write it exactly as in the inventory, \"{}\" (no trailing dot)",
                escape(trimmed)
            ));
        }
        let lower = requested.to_ascii_lowercase();
        if let Some(h) = self.hosts.values().find(|h| {
            may_reach(h)
                && (h.name.to_ascii_lowercase() == lower || h.address.to_ascii_lowercase() == lower)
        }) {
            let exact = if h.name.to_ascii_lowercase() == lower {
                &h.name
            } else {
                &h.address
            };
            return Some(format!(
                "host \"{shown}\" refused: names are compared exactly (case included); write \"{}\"",
                escape(exact)
            ));
        }
        let unbracketed = requested.trim_start_matches('[').trim_end_matches(']');
        if let Some(v4) = unbracketed
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .and_then(|a| a.to_ipv4_mapped())
        {
            return Some(format!(
                "host \"{shown}\" refused: IPv4-mapped IPv6 addresses are not accepted (only an inventory host's exact address, e.g. {v4} if it is listed)"
            ));
        }
        if requested.parse::<IpAddr>().is_err()
            && requested
                .split('.')
                .next_back()
                .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Some(format!(
                "host \"{shown}\" refused: numeric forms other than an inventory host's exact address are not accepted"
            ));
        }
        None
    }

    fn known_and_reachable(&self, s: &str, may_reach: &dyn Fn(&Host) -> bool) -> bool {
        if let Some(h) = self.hosts.get(s) {
            return may_reach(h);
        }
        self.index().by_address.get(s).is_some_and(|names| {
            names
                .iter()
                .filter_map(|n| self.hosts.get(n))
                .any(may_reach)
        })
    }

    fn refusal(&self, requested: &str, may_reach: &dyn Fn(&Host) -> bool) -> String {
        self.spelling_hint(requested, may_reach)
            .unwrap_or_else(|| format!("host \"{}\" is not in the inventory", escape(requested)))
    }
}

/// Why a `direct-tcpip` request names no inventory host (see [`Policy::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved<'p> {
    /// Neither an inventory name nor an inventory address.
    NotFound,
    /// An address several inventory hosts share, none of them on the requested port.
    SharedAddress(Vec<&'p Host>),
    /// An inventory host, asked for on a port other than its own or 22.
    WrongPort(&'p Host),
}

/// The refusal of a port other than the host's own or 22 (names the host's port: only
/// for people who may reach it).
pub fn wrong_port(host: &Host, port: u16) -> String {
    format!(
        "port {port} refused for host {}: only its inventory port {} (or 22) is forwarded",
        host.name, host.port
    )
}

fn held_names(grants: &[GrantRef<'_>]) -> String {
    let mut v: Vec<&str> = grants.iter().map(|g| g.principal).collect();
    v.dedup();
    v.join(", ")
}
