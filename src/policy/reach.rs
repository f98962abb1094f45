//! What a user may reach: every (host, login) their principals grant now, and the hosts
//! with their logins, for `policy diff`, `GET /v1/ssh_config` and the bastion's `hosts`
//! command. Pure, like the rest of evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::{Host, Policy};

/// A host a user may reach, with the logins and the principals that allow it: what the
/// bastion's `hosts` command lists and `GET /v1/ssh_config` writes a block for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach<'a> {
    /// The inventory name.
    pub host: &'a str,
    /// The inventory port.
    pub port: u16,
    /// Sorted, without duplicates.
    pub logins: Vec<&'a str>,
    /// The principals granting this host, sorted.
    pub principals: Vec<&'a str>,
}

impl Policy {
    /// The hosts `user` may reach at `now`, sorted by host name, each with its logins and
    /// the principals granting it. With `within` (a certificate's principals), only those
    /// of the held principals count: a certificate may carry a subset of what its holder
    /// holds. The one computation behind the bastion's `hosts` command and `ssh_config`.
    pub fn reachable(
        &self,
        user: &str,
        extra_groups: &[String],
        within: Option<&[String]>,
        now: SystemTime,
    ) -> Vec<Reach<'_>> {
        let mut by_host: BTreeMap<&str, (&Host, BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
        for ((host, login), principals) in self.access_within(user, extra_groups, within, now) {
            let Some(h) = self.hosts.get(host) else {
                continue;
            };
            let e = by_host
                .entry(host)
                .or_insert_with(|| (h, BTreeSet::new(), BTreeSet::new()));
            e.1.insert(login);
            e.2.extend(principals);
        }
        by_host
            .into_values()
            .map(|(host, logins, principals)| Reach {
                host: &host.name,
                port: host.port,
                logins: logins.into_iter().collect(),
                principals: principals.into_iter().collect(),
            })
            .collect()
    }

    /// Effective access of `user` at `now`: (host, login) → the principals allowing it.
    pub fn access_of(
        &self,
        user: &str,
        extra_groups: &[String],
        now: SystemTime,
    ) -> BTreeMap<(&str, &str), Vec<&str>> {
        self.access_within(user, extra_groups, None, now)
    }

    /// [`Policy::access_of`] counting only the held principals in `within` (all when
    /// `None`).
    fn access_within(
        &self,
        user: &str,
        extra_groups: &[String],
        within: Option<&[String]>,
        now: SystemTime,
    ) -> BTreeMap<(&str, &str), Vec<&str>> {
        let mut out: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for n in self.principal_names(user, extra_groups, now) {
            if within.is_some_and(|w| !w.contains(&n)) {
                continue;
            }
            let Some(p) = self.principals.get(&n) else {
                continue;
            };
            for h in self.hosts_of(&n) {
                for l in &p.logins {
                    out.entry((h.name.as_str(), l.as_str()))
                        .or_default()
                        .push(p.name.as_str());
                }
            }
        }
        out
    }
}
