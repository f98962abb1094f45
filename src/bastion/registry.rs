//! The open forwards of this bastion, each with its certificate and a way to cut it, and
//! the live re-check that cuts those the policy in force no longer allows.
//!
//! Whenever the policy in force changes (a reload applied, which includes a new
//! `[[revoked]]` entry, or a temporary grant reaching its `until` with no reload at all),
//! every open forward is checked again with [`Policy::still_holds`], the same rule a new
//! forward meets, without the certificate's age (`max_ttl` counts when a forward opens,
//! not on live ones). A forward whose certificate is revoked, whose key id no longer
//! holds every principal of the certificate, or whose target no principal of the
//! certificate grants any more, is cut: a `forward.cut` record naming the rule and the
//! policy version is written (bounded wait: a stalled log never delays a cut by more than
//! [`CUT_RECORD_WAIT`]), then the forward ends and writes its `forward.closed` with
//! `end = "cut"`.
//!
//! The registry is per process behind [`ForwardRegistry`]; a shared implementation
//! (PostgreSQL) can list every replica's forwards without changing the callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::verify::CertIdentity;
use crate::audit::{Audit, AuditEvent, Decided, ForwardBase, RefusalCode};
use crate::policy::watch::PolicyStore;
use crate::policy::{Lost, Policy};

/// The longest a cut waits for its `forward.cut` record before cutting anyway.
pub const CUT_RECORD_WAIT: Duration = Duration::from_millis(500);

/// Why a forward was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// `revoked`, `role-lost`, `host-not-granted` or `certificate-expired`.
    pub code: RefusalCode,
    /// The rule that decided: the `[[revoked]]` entry, the lost principal and why.
    pub rule: String,
    /// The principal lost, if one was.
    pub principal: Option<String>,
    /// For the holder: names nothing but their own certificate.
    pub message: String,
    /// The policy version the decision was made under.
    pub policy_version: String,
}

/// One open forward.
pub struct OpenForward {
    pub id: u64,
    /// The SSH connection it belongs to.
    pub conn: u64,
    pub identity: Arc<CertIdentity>,
    /// The inventory name of its target.
    pub target: String,
    /// The fields of the forward's records (connection, key id, host, target, ...).
    pub fields: ForwardFields,
    /// Ends the forward's SSH connection with a message: used when the certificate itself
    /// no longer stands (revoked, a role lost), since every forward it could open would be
    /// refused. The client shows the message.
    connection: Arc<watch::Sender<Option<String>>>,
    claimed: AtomicBool,
    /// The cut decided (and recorded), before the forward is told.
    decided: std::sync::OnceLock<Arc<Cut>>,
    cut: watch::Sender<Option<Arc<Cut>>>,
}

impl OpenForward {
    /// The cut decided for this forward, if any.
    pub fn decided(&self) -> Option<Arc<Cut>> {
        self.decided.get().cloned()
    }

    /// Ends the forward if a cut was decided for it; otherwise does nothing.
    pub fn signal(&self) {
        if let Some(c) = self.decided.get() {
            self.cut.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(c.clone());
                    true
                } else {
                    false
                }
            });
        }
    }
}

impl std::fmt::Debug for OpenForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenForward")
            .field("id", &self.id)
            .field("conn", &self.conn)
            .field("key_id", &self.identity.key_id)
            .field("target", &self.target)
            .finish()
    }
}

/// The open forwards of a bastion (of this process; later, of every replica).
pub trait ForwardRegistry: Send + Sync {
    fn insert(&self, forward: Arc<OpenForward>);
    fn remove(&self, id: u64);
    /// Every forward open now.
    fn open(&self) -> Vec<Arc<OpenForward>>;
}

/// The in-process registry.
#[derive(Default)]
pub struct MemoryRegistry {
    forwards: Mutex<HashMap<u64, Arc<OpenForward>>>,
}

impl ForwardRegistry for MemoryRegistry {
    fn insert(&self, forward: Arc<OpenForward>) {
        let mut m = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(forward.id, forward);
    }
    fn remove(&self, id: u64) {
        let mut m = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&id);
    }
    fn open(&self) -> Vec<Arc<OpenForward>> {
        let m = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        m.values().cloned().collect()
    }
}

/// A forward's place in the registry; removed on drop.
pub struct Registration {
    registry: Arc<dyn ForwardRegistry>,
    pub forward: Arc<OpenForward>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.forward.id);
    }
}

/// What every record of one forward carries: the connection and the request (with the
/// policy version that allowed it), and what it was decided on.
#[derive(Debug, Clone)]
pub struct ForwardFields {
    pub base: ForwardBase,
    pub decided: Decided,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Registers a forward; the receiver turns `Some` when it is to be cut.
pub fn register(
    registry: &Arc<dyn ForwardRegistry>,
    conn: u64,
    connection: Arc<watch::Sender<Option<String>>>,
    identity: Arc<CertIdentity>,
    target: &str,
    fields: ForwardFields,
) -> (Registration, watch::Receiver<Option<Arc<Cut>>>) {
    let (tx, rx) = watch::channel(None);
    let forward = Arc::new(OpenForward {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        conn,
        identity,
        target: target.to_string(),
        fields,
        connection,
        claimed: AtomicBool::new(false),
        decided: std::sync::OnceLock::new(),
        cut: tx,
    });
    registry.insert(forward.clone());
    (
        Registration {
            registry: registry.clone(),
            forward,
        },
        rx,
    )
}

/// Whether an open forward still stands under `policy` at `now`; the cut if not. Pure.
pub fn check_one(policy: &Policy, f: &OpenForward, now: SystemTime) -> Option<Cut> {
    let id = &f.identity;
    let carried = id.carried();
    let cut = |code, rule, principal, message| {
        Some(Cut {
            code,
            rule,
            principal,
            message,
            policy_version: policy.version.clone(),
        })
    };
    match policy.still_holds(&carried, now, None) {
        Err(lost) => {
            let code = match lost {
                Lost::Revoked(_) => RefusalCode::Revoked,
                _ => RefusalCode::RoleLost,
            };
            cut(
                code,
                lost.rule(),
                lost.principal().map(str::to_string),
                lost.message(),
            )
        }
        Ok(held) => {
            let granted = policy.hosts.get(&f.target).is_some_and(|h| {
                held.iter().any(|p| {
                    policy
                        .principals
                        .get(&p.principal)
                        .is_some_and(|d| policy.grants_host(d, h))
                })
            });
            if granted {
                None
            } else {
                cut(
                    RefusalCode::HostNotGranted,
                    format!(
                        "no principal of the certificate grants host {} any more",
                        f.target
                    ),
                    None,
                    format!("host {} is no longer granted to your certificate", f.target),
                )
            }
        }
    }
}

/// The forwards among `open` that `policy` no longer allows at `now`, with why. Pure.
pub fn recheck(
    policy: &Policy,
    open: &[Arc<OpenForward>],
    now: SystemTime,
) -> Vec<(Arc<OpenForward>, Cut)> {
    open.iter()
        .filter_map(|f| check_one(policy, f, now).map(|c| (f.clone(), c)))
        .collect()
}

/// Cuts `f`: writes `forward.cut` (waiting at most [`CUT_RECORD_WAIT`]), then ends the
/// forward. Only the first cut of a forward does anything.
///
/// When the certificate itself no longer stands (revoked, a role lost), the forward's SSH
/// connection is ended first with the reason, so the client shows it, and the connection
/// ends its forwards once the reason is sent ([`OpenForward::signal`]); the forward is
/// ended here anyway after [`CUT_RECORD_WAIT`] should the connection not get to it.
pub async fn cut_forward(audit: &Audit, f: Arc<OpenForward>, cut: Cut) {
    if f.claimed.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut base = f.fields.base.clone();
    // The version that cut, not the one that allowed.
    base.policy_version = cut.policy_version.clone();
    let event = AuditEvent::ForwardCut {
        base,
        decided: f.fields.decided.clone(),
        reason: cut.code,
        rule: cut.rule.clone(),
        lost_principal: cut.principal.as_deref().map(crate::util::escape),
    };
    match tokio::time::timeout(CUT_RECORD_WAIT, audit.record(event)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "forward.cut not recorded; cutting anyway"),
        Err(_) => warn!("forward.cut not recorded in time; cutting anyway"),
    }
    info!(key_id = %crate::util::escape(&f.identity.key_id), target = %f.target, code = %cut.code, rule = %cut.rule, "forward cut");
    let whole_certificate = matches!(cut.code, RefusalCode::Revoked | RefusalCode::RoleLost);
    let message = cut.message.clone();
    let _ = f.decided.set(Arc::new(cut));
    if !whole_certificate {
        f.signal();
        return;
    }
    f.connection.send_if_modified(|m| {
        if m.is_none() {
            *m = Some(message);
            true
        } else {
            false
        }
    });
    tokio::spawn(async move {
        tokio::time::sleep(CUT_RECORD_WAIT).await;
        f.signal();
    });
}

/// Cuts every forward of connection `conn` for `cut` (its certificate expired).
pub async fn cut_connection(registry: &dyn ForwardRegistry, audit: &Audit, conn: u64, cut: Cut) {
    let mut tasks = tokio::task::JoinSet::new();
    for f in registry.open().into_iter().filter(|f| f.conn == conn) {
        let (audit, cut) = (audit.clone(), cut.clone());
        tasks.spawn(async move { cut_forward(&audit, f, cut).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// Re-checks every open forward whenever the policy in force changes, and at each
/// temporary grant's `until`, until `stop` turns true.
pub async fn run_rechecks(
    registry: Arc<dyn ForwardRegistry>,
    store: Arc<PolicyStore>,
    audit: Audit,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    let mut subscribed = true;
    loop {
        let policy = store.current();
        let now = SystemTime::now();
        for (f, cut) in recheck(&policy, &registry.open(), now) {
            let audit = audit.clone();
            tokio::spawn(async move { cut_forward(&audit, f, cut).await });
        }
        let next = policy.next_grant_end(now).map(|until| {
            tokio::time::Instant::now() + until.duration_since(now).unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            changed = changes.changed(), if subscribed => {
                if changed.is_err() {
                    subscribed = false;
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::fmt::Write as _;
    use std::time::UNIX_EPOCH;

    fn identity(key_id: &str, principals: &[&str]) -> Arc<CertIdentity> {
        Arc::new(CertIdentity {
            key_id: key_id.into(),
            serial: 7,
            principals: principals.iter().map(|s| s.to_string()).collect(),
            groups: vec![],
            idp_groups: vec![],
            valid_after: UNIX_EPOCH,
            valid_before: UNIX_EPOCH + Duration::from_secs(u32::MAX as u64),
            ca_fingerprint: String::new(),
            key_fingerprint: String::new(),
            reason: None,
        })
    }

    fn conn() -> Arc<watch::Sender<Option<String>>> {
        Arc::new(watch::channel(None).0)
    }

    fn fields() -> ForwardFields {
        use crate::audit::{Conn, PeerText};
        ForwardFields {
            base: ForwardBase {
                conn: Conn {
                    conn: 1,
                    peer: "127.0.0.1:1".into(),
                    ssh_user: PeerText::cut("alice"),
                    key_id: None,
                    serial: None,
                    key_fingerprint: None,
                    ca_fingerprint: None,
                },
                host: PeerText::cut("web-1"),
                port: 22,
                policy_version: "v".into(),
            },
            decided: Decided {
                target: "web-1".into(),
                address: "10.0.0.1:22".into(),
                principal: "web-admin".into(),
                grants: Vec::new(),
            },
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::from_toml("p.toml", text).unwrap()
    }

    const BASE: &str = r#"
[hosts.web-1]
address = "10.0.0.1"
labels = { role = "web" }
[hosts.web-2]
address = "10.0.0.2"
labels = { role = "web" }
[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]
[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]
[groups.ops]
members = ["alice"]
principals = ["web-admin"]
[groups.deployers]
members = ["alice"]
principals = ["web-deploy"]
"#;

    #[test]
    fn cuts_what_the_new_policy_no_longer_allows_and_nothing_else() {
        cuts_what_the_new_policy_no_longer_allows(Arc::new(MemoryRegistry::default()));
    }

    /// The PostgreSQL registry cuts exactly as the memory one: it re-checks this replica's
    /// forwards (its rows are written by tasks that need a runtime, absent here).
    #[test]
    fn the_postgres_registry_cuts_the_same() {
        let pg = crate::state::connect::parse("postgresql://u@127.0.0.1:1/x", None, None).unwrap();
        let target = crate::state::connect::Target {
            shown: crate::state::connect::shown(&pg),
            pg,
            replica: "r1".into(),
            lease: Duration::from_secs(15),
        };
        let db = crate::state::db::Db::new(target);
        cuts_what_the_new_policy_no_longer_allows(Arc::new(
            crate::state::forwards::PgRegistry::new(db),
        ));
    }

    fn cuts_what_the_new_policy_no_longer_allows(reg: Arc<dyn ForwardRegistry>) {
        let both = identity("alice", &["web-admin", "web-deploy"]);
        let admin = identity("alice", &["web-admin"]);
        let (r1, _rx1) = register(&reg, 1, conn(), both.clone(), "web-1", fields());
        let (r2, _rx2) = register(&reg, 2, conn(), admin.clone(), "web-2", fields());
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        // An unrelated edit (a new host) cuts nothing.
        let p = policy(&format!("{BASE}[hosts.web-3]\naddress = \"10.0.0.3\"\n"));
        assert!(recheck(&p, &reg.open(), now).is_empty());
        // alice leaves deployers: only the certificate carrying web-deploy is cut.
        let p = policy(&BASE.replace(
            "[groups.deployers]\nmembers = [\"alice\"]",
            "[groups.deployers]\nmembers = []",
        ));
        let cuts = recheck(&p, &reg.open(), now);
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].0.id, r1.forward.id);
        assert_eq!(cuts[0].1.code, "role-lost");
        assert_eq!(cuts[0].1.principal.as_deref(), Some("web-deploy"));
        assert_eq!(cuts[0].1.policy_version, p.version);
        // web-2 leaves role=web: the forward to it is cut, the one to web-1 is not.
        let p = policy(&BASE.replace(
            "address = \"10.0.0.2\"\nlabels = { role = \"web\" }",
            "address = \"10.0.0.2\"\nlabels = { role = \"db\" }",
        ));
        let cuts = recheck(&p, &reg.open(), now);
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].0.id, r2.forward.id);
        assert_eq!(cuts[0].1.code, "host-not-granted");
        // Revoked by key id: both.
        let p = policy(&format!("{BASE}[[revoked]]\nkey_id = \"alice\"\n"));
        let cuts = recheck(&p, &reg.open(), now);
        assert_eq!(cuts.len(), 2);
        assert!(cuts.iter().all(|(_, c)| c.code == "revoked"));
        assert!(
            cuts[0].1.rule.starts_with("[[revoked]] p.toml:"),
            "{cuts:?}"
        );
        drop(r1);
        assert_eq!(reg.open().len(), 1);
    }

    /// The cost of one re-check: 1,000 open forwards under a 10,000-host policy.
    /// `cargo test --config 'profile.dev.package.drawbridge.opt-level=3' --lib
    /// bastion::registry -- --ignored --nocapture` (1.2–1.4 ms on the 2-core test machine).
    #[test]
    #[ignore]
    fn recheck_cost_1000_forwards_10000_hosts() {
        let mut text = String::new();
        for i in 0..10_000 {
            let _ = writeln!(
                text,
                "[hosts.h{i}]\naddress = \"10.{}.{}.{}\"\nlabels = {{ role = \"r{}\" }}",
                i / 65536,
                (i / 256) % 256,
                i % 256,
                i % 50
            );
        }
        for r in 0..50 {
            let _ = writeln!(
                text,
                "[principals.p{r}]\nhosts = {{ role = \"r{r}\" }}\nlogins = [\"root\"]\n\
                 [principals.n{r}]\nhosts = [\"h{r}\", \"h{}\"]\nlogins = [\"deploy\"]",
                r + 50
            );
        }
        for u in 0..1000 {
            let _ = writeln!(
                text,
                "[groups.g{u}]\nmembers = [\"u{u}\"]\nprincipals = [\"p{}\", \"n{}\"]",
                u % 50,
                u % 50
            );
        }
        for r in 0..100 {
            let _ = writeln!(text, "[[revoked]]\nserial = {}", 1_000_000 + r);
        }
        let p = policy(&text);
        let reg: Arc<dyn ForwardRegistry> = Arc::new(MemoryRegistry::default());
        let mut keep = Vec::new();
        for u in 0..1000 {
            let id = identity(
                &format!("u{u}"),
                &[&format!("p{}", u % 50), &format!("n{}", u % 50)],
            );
            keep.push(register(
                &reg,
                u,
                conn(),
                id,
                &format!("h{}", u % 50),
                fields(),
            ));
        }
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let open = reg.open();
        assert!(recheck(&p, &open, now).is_empty());
        let rounds = 20;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            assert!(recheck(&p, &open, now).is_empty());
        }
        let each = started.elapsed() / rounds;
        println!(
            "re-check of {} open forwards under a {}-host policy: {:?} per re-check ({:?} per forward)",
            open.len(),
            p.hosts.len(),
            each,
            each / open.len() as u32
        );
    }
}
