//! `session list` with `[state] postgres`: the recorded sessions every replica's chain
//! names, read from PostgreSQL, each marked with its replica.
//!
//! A session the chain shows started and not ended is live only while its replica holds
//! its lease: a replica that died (its lease ran out) took its sessions with it, and they
//! are shown as ended by that, not as live forever.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;

use super::audit_sink::{read_chain, replicas};
use crate::config::Config;
use crate::recording::sessions::{Ended, Session, sessions_in_log};

/// What `session list` shows as the end of a session whose replica is gone.
pub const REPLICA_GONE: &str = "replica gone (lease expired)";

/// Every recorded session of every replica's chain, by session id.
pub fn sessions(config: &Config) -> anyhow::Result<BTreeMap<String, Session>> {
    super::cmd::runtime()?.block_on(async {
        let client = super::cmd::connect(config).await?;
        let alive: HashSet<String> = client
            .query(
                "SELECT replica FROM replicas WHERE lease_until > now()",
                &[],
            )
            .await
            .context("cannot read the replicas' leases")?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = BTreeMap::new();
        for name in replicas(&client).await? {
            // Only the session records are kept: a chain can be long.
            let mut text = Vec::new();
            read_chain(&client, &name, |line| {
                if line.contains("\"session.") {
                    text.extend_from_slice(line.as_bytes());
                    text.push(b'\n');
                }
                Ok(())
            })
            .await?;
            for (id, s) in sessions_in_log(&text[..])? {
                out.insert(id, of_replica(s, &name, alive.contains(&name)));
            }
        }
        Ok(out)
    })
}

/// `s` as replica `name`'s; ended by the replica's death when it is not `alive`.
pub fn of_replica(mut s: Session, name: &str, alive: bool) -> Session {
    s.replica = name.to_string();
    if s.live() && !alive {
        s.ended = Some(Ended {
            end: REPLICA_GONE.into(),
            ..Ended::default()
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_session_of_a_dead_replica_is_not_live() {
        let s = Session {
            id: "a1".into(),
            ..Session::default()
        };
        let kept = of_replica(s.clone(), "r1", true);
        assert!(kept.live());
        assert_eq!(kept.replica, "r1");
        let gone = of_replica(s, "r2", false);
        assert!(!gone.live());
        assert_eq!(gone.state(), REPLICA_GONE);
    }
}
