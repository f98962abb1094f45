//! Revocation that really revokes, at the bastion (docs/threats.md, T34, T37, T44): a
//! certificate is all or nothing, open forwards are cut when the policy in force stops
//! allowing them, refusals describe no host the caller may not reach, and a forward's
//! record is on disk before anything reaches its target.
//!
//! Against the real binary (`support::dmz`) with a real OpenSSH `sshd` as web-1 and two
//! real local logins on it: `root` (role web-admin) and a throw-away account made for the
//! test (role web-deploy, standing for `deploy`). The audit-failure test runs the bastion
//! in process with an in-memory audit sink that fails on demand, and a TCP listener that
//! counts accepts as the target.
//!
//! Fails when `sshd` is missing or we are not root (`DRAWBRIDGE_ALLOW_SKIP=1` skips).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::audit::{expect_record_within, record_time as ts};
use crate::support::dmz::{self, Bastion};
use crate::support::net::HeldForward;
use crate::support::ports::free_port;
use crate::support::process::{wait_for_port, wait_until};
use crate::support::ssh::{Ca, Key, SshClient, TestDir, refused};
use crate::support::users::OsUser;
use crate::support::wire::{self, bounded};

/// The policy of these tests. web-1 is the test sshd (role web), db-1 a dead port (role
/// db), echo-1 another host on 127.0.0.1 (role echo). Roles: web-admin (role web, root),
/// web-deploy (web-1, the deploy account), dba (db-1, postgres). Groups: deployers (alice,
/// bob, carol) hold web-deploy; ops (carol, and alice when `alice_in_ops`) hold
/// web-admin. erin holds dba only.
struct Pol {
    sshd_port: u16,
    dead_port: u16,
    echo_port: u16,
    deploy: String,
    alice_in_ops: bool,
    admin_max_ttl: Option<&'static str>,
    /// `(user, principal, until)`
    temporary: Option<(&'static str, &'static str, SystemTime)>,
    revoked_key_ids: Vec<&'static str>,
    /// More text for hosts.toml (an unrelated edit).
    extra_hosts: String,
}

impl Pol {
    fn new(b: &Bastion, deploy: &OsUser) -> Pol {
        Pol {
            sshd_port: b.sshd.port,
            dead_port: b.dead_port,
            echo_port: free_port(),
            deploy: deploy.name.clone(),
            alice_in_ops: true,
            admin_max_ttl: None,
            temporary: None,
            revoked_key_ids: Vec::new(),
            extra_hosts: String::new(),
        }
    }

    fn write(&self, dir: &Path) {
        let hosts = format!(
            "[hosts.web-1]\naddress = \"127.0.0.1:{}\"\nlabels = {{ role = \"web\" }}\n\n\
             [hosts.db-1]\naddress = \"127.0.0.1:{}\"\nlabels = {{ role = \"db\" }}\n\n\
             [hosts.echo-1]\naddress = \"127.0.0.1:{}\"\nlabels = {{ role = \"echo\" }}\n{}",
            self.sshd_port, self.dead_port, self.echo_port, self.extra_hosts
        );
        let max_ttl = self
            .admin_max_ttl
            .map(|t| format!("max_ttl = \"{t}\"\n"))
            .unwrap_or_default();
        let principals = format!(
            "[principals.web-admin]\nhosts = {{ role = \"web\" }}\nlogins = [\"root\"]\n{max_ttl}\n\
             [principals.web-deploy]\nhosts = [\"web-1\"]\nlogins = [\"{}\"]\n\n\
             [principals.dba]\nhosts = [\"db-1\"]\nlogins = [\"postgres\"]\n",
            self.deploy
        );
        let ops = if self.alice_in_ops {
            "[\"alice\", \"carol\"]"
        } else {
            "[\"carol\"]"
        };
        let mut people = format!(
            "[groups.deployers]\nmembers = [\"alice\", \"bob\", \"carol\"]\nprincipals = [\"web-deploy\"]\n\n\
             [groups.ops]\nmembers = {ops}\nprincipals = [\"web-admin\"]\n\n\
             [users.erin]\nprincipals = [\"dba\"]\n"
        );
        if let Some((user, principal, until)) = self.temporary {
            people.push_str(&format!(
                "\n[[temporary]]\nuser = \"{user}\"\nprincipal = \"{principal}\"\nuntil = \"{}\"\nreason = \"INC-15\"\n",
                drawbridge::util::rfc3339(until)
            ));
        }
        let mut revoked = "[[revoked]]\nserial = 666\nreason = \"laptop lost\"\n".to_string();
        for k in &self.revoked_key_ids {
            revoked.push_str(&format!(
                "\n[[revoked]]\nkey_id = \"{k}\"\nreason = \"account taken over\"\n"
            ));
        }
        std::fs::write(dir.join("hosts.toml"), hosts).unwrap();
        std::fs::write(dir.join("principals.toml"), principals).unwrap();
        std::fs::write(dir.join("people.toml"), people).unwrap();
        std::fs::write(dir.join("revoked.toml"), revoked).unwrap();
    }
}

/// The bastion with this file's policy in force, the deploy account, and its policy.
struct World {
    b: Bastion,
    deploy: OsUser,
    pol: Pol,
}

fn world_with(ssh_extra: &str, edit: impl FnOnce(&mut Pol)) -> Option<World> {
    let b = dmz::start_with(ssh_extra, &[])?;
    let deploy = OsUser::create();
    b.sshd.set_principals(&deploy.name, &["web-deploy"]);
    let mut pol = Pol::new(&b, &deploy);
    edit(&mut pol);
    b.reload_policy(|dir| pol.write(dir));
    Some(World { b, deploy, pol })
}

/// [`world`] with bob also holding web-admin through a temporary grant ending in about 10
/// s; and that end.
fn bob_admin_until_in_10s() -> Option<(World, SystemTime)> {
    let until = in_secs(10);
    let w = world_with("", |p| p.temporary = Some(("bob", "web-admin", until)))?;
    Some((w, until))
}

fn world() -> Option<World> {
    world_with("", |_| {})
}

impl World {
    /// Applies `edit` to the policy, writes it, SIGHUP, waits for it to be applied.
    fn change(&mut self, edit: impl FnOnce(&mut Pol)) {
        edit(&mut self.pol);
        let pol = &self.pol;
        self.b.reload_policy(|dir| pol.write(dir));
    }

    /// A client with a certificate from our CA for `key_id` carrying `principals`,
    /// reaching web-1 as root (`web-1`) and as the deploy account (`web-1-deploy`).
    fn client(
        &self,
        name: &str,
        key_id: &str,
        principals: &[&str],
        validity: &str,
    ) -> (SshClient, Key) {
        static SERIAL: AtomicU64 = AtomicU64::new(1500);
        let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
        let key = self.b.user(name, key_id, principals, validity, serial, &[]);
        let mut c = self.b.client(name, &key);
        c.add_target_as("web-1-deploy", "web-1", &self.deploy.name);
        (c, key)
    }

    fn records(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        self.b.find(event, fields)
    }
}

/// The OpenSSH client holding a forward to web-1 open (`ssh -W`, stdin kept open): returns
/// once sshd's banner came back through it.
fn hold(c: &SshClient) -> HeldForward {
    let f = c.hold_forward("web-1:22");
    let banner = f.first_bytes(Duration::from_secs(20));
    assert!(
        banner.starts_with("SSH-2.0-OpenSSH"),
        "no forward: {banner:?}"
    );
    f
}

/// The `forward.cut` record of `key_id` (waiting up to `limit` for it) and how long after
/// `since` it was written, which must be under a second (`what` names `since`).
#[track_caller]
fn cut_within_1s(
    w: &World,
    key_id: &str,
    since: SystemTime,
    limit: Duration,
    what: &str,
) -> (Value, Duration) {
    let cut = expect_record_within(
        &w.b.audit_path(),
        "forward.cut",
        &[("key_id", key_id)],
        limit,
    );
    let after = ts(&cut).duration_since(since).unwrap_or_default();
    println!("{key_id}: forward.cut {after:?} after {what}");
    assert!(after < Duration::from_secs(1), "cut {after:?} after {what}");
    (cut, after)
}

/// A whole second at least `secs` from now (policy times have whole seconds).
fn in_secs(secs: u64) -> SystemTime {
    let t = SystemTime::now() + Duration::from_secs(secs);
    UNIX_EPOCH + Duration::from_secs(drawbridge::util::unix_secs(t) + 1)
}

fn lost_role(role: &str) -> String {
    format!("your certificate carries role {role} that you no longer hold: get a new certificate")
}

// ---------------------------------------------------------------------------------------
// T34: a certificate is all or nothing

#[test]
fn t34_a_role_removed_from_a_group_refuses_the_whole_certificate() {
    let Some(mut w) = world() else { return };
    let (c, _) = w.client("alice", "alice", &["web-deploy", "web-admin"], "-1m:+10m");
    // Both logins work while alice holds both roles.
    let out = c.run(&["web-1", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "root");
    let out = c.run(&["web-1-deploy", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), w.deploy.name);

    // alice leaves ops (web-admin) in Git; she keeps web-deploy through deployers.
    w.change(|p| p.alice_in_ops = false);
    let version = w.records("policy.reloaded", &[]).pop().unwrap()["policy_version"].clone();
    let out = c.run(&["web-1", "whoami"]);
    refused(&out);
    assert!(
        !out.stdout.contains("root"),
        "root login through a lost role: {out:?}"
    );
    assert!(out.stderr.contains(&lost_role("web-admin")), "{out:?}");
    // The deploy login with the same certificate is refused too: all or nothing.
    let out = c.run(&["web-1-deploy", "true"]);
    refused(&out);
    assert!(out.stderr.contains(&lost_role("web-admin")), "{out:?}");
    let rec = w.b.expect_record(
        "forward.refused",
        &[
            ("key_id", "alice"),
            ("reason", "denied"),
            ("lost_principal", "web-admin"),
        ],
    );
    assert_eq!(rec["message"], lost_role("web-admin"));
    assert_eq!(rec["policy_version"], version);
    assert!(
        rec["rule"]
            .as_str()
            .unwrap()
            .contains("web-admin no longer held"),
        "{rec}"
    );

    // `hosts` says so too.
    let out = c.run(&["bastion", "hosts"]);
    assert!(out.stdout.contains(&lost_role("web-admin")), "{out:?}");

    // A new certificate with what she still holds works, as deploy only.
    let (c2, _) = w.client("alice2", "alice", &["web-deploy"], "-1m:+10m");
    let out = c2.run(&["web-1-deploy", "whoami"]);
    assert!(out.success(), "{out:?}");
    let opened = w
        .records("forward.opened", &[("key_id", "alice")])
        .pop()
        .unwrap();
    assert_eq!(
        opened["grants"],
        serde_json::json!([{"principal": "web-deploy", "via": "group", "group": "deployers"}])
    );
    let out = c2.run(&["web-1", "true"]);
    refused(&out);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
}

#[test]
fn t34_an_ended_temporary_grant_refuses_the_whole_certificate() {
    let Some((w, until)) = bob_admin_until_in_10s() else {
        return;
    };
    // bob's certificate outlives his temporary grant of web-admin.
    let (c, _) = w.client("bob", "bob", &["web-deploy", "web-admin"], "-1m:+10m");
    let out = c.run(&["web-1", "whoami"]);
    assert!(out.success(), "before the grant's end: {out:?}");
    assert_eq!(out.stdout.trim(), "root");
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(300));
    }
    // No file changed: the grant ended by itself.
    let out = c.run(&["web-1", "whoami"]);
    refused(&out);
    assert!(
        !out.stdout.contains("root"),
        "root login past the grant's end: {out:?}"
    );
    assert!(out.stderr.contains(&lost_role("web-admin")), "{out:?}");
    let rec = w.b.expect_record(
        "forward.refused",
        &[("key_id", "bob"), ("lost_principal", "web-admin")],
    );
    assert!(
        rec["rule"].as_str().unwrap().contains("temporary grant"),
        "{rec}"
    );
    // While it held, forward.opened named how each role was held.
    let opened = w.b.expect_record("forward.opened", &[("key_id", "bob")]);
    assert!(
        opened["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["principal"] == "web-admin"
                && g["via"] == "temporary"
                && g["reason"] == "INC-15"),
        "{opened}"
    );
}

#[test]
fn t34_a_lowered_max_ttl_refuses_the_whole_certificate() {
    let Some(mut w) = world() else { return };
    // Issued 3 minutes ago (valid_after backdated 60 s more).
    let (c, _) = w.client("carol", "carol", &["web-deploy", "web-admin"], "-4m:+10m");
    let out = c.run(&["web-1", "whoami"]);
    assert!(out.success(), "{out:?}");
    // web-admin now allows certificates up to 2 minutes old; web-deploy has no limit.
    w.change(|p| p.admin_max_ttl = Some("2m"));
    let out = c.run(&["web-1", "whoami"]);
    refused(&out);
    assert!(
        !out.stdout.contains("root"),
        "root login past max_ttl: {out:?}"
    );
    assert!(
        out.stderr.contains(
            "your certificate carries role web-admin that allows certificates up to 2m old"
        ),
        "{out:?}"
    );
    let out = c.run(&["web-1-deploy", "true"]);
    refused(&out);
    let rec = w.b.expect_record(
        "forward.refused",
        &[
            ("key_id", "carol"),
            ("reason", "ttl-exceeded"),
            ("lost_principal", "web-admin"),
        ],
    );
    assert!(
        rec["rule"].as_str().unwrap().contains("max_ttl 2m"),
        "{rec}"
    );
}

// ---------------------------------------------------------------------------------------
// T37: live cut-off

#[test]
fn t37_an_open_forward_is_cut_within_1s_of_a_group_removal_and_not_by_an_unrelated_edit() {
    let Some(mut w) = world() else { return };
    let (alice, _) = w.client("alice", "alice", &["web-deploy", "web-admin"], "-1m:+10m");
    let (carol, _) = w.client("carol", "carol", &["web-deploy", "web-admin"], "-1m:+10m");
    let mut a = hold(&alice);
    let mut c = hold(&carol);

    // An unrelated edit: a new host. Nothing is cut.
    w.change(|p| {
        p.extra_hosts =
            "\n[hosts.web-9]\naddress = \"127.0.0.1:9\"\nlabels = { role = \"web\" }\n".into()
    });
    assert!(
        !a.ended_within(Duration::from_millis(1500)),
        "cut by an unrelated edit"
    );
    assert!(!c.ended_within(Duration::ZERO));
    assert!(w.records("forward.cut", &[]).is_empty());

    // alice leaves ops: her forward is cut, carol's is not.
    let asked = Instant::now();
    w.change(|p| p.alice_in_ops = false);
    let reloaded = w.records("policy.reloaded", &[]).pop().unwrap();
    let (cut, after) = cut_within_1s(
        &w,
        "alice",
        ts(&reloaded),
        Duration::from_secs(5),
        "the reload (group removal)",
    );
    assert!(
        a.ended_within(Duration::from_secs(3)),
        "alice's forward still open"
    );
    // The client is told why.
    a.expect_stderr(&lost_role("web-admin"), Duration::from_secs(3));
    println!(
        "group removal: forward.cut {after:?} after policy.reloaded, client gone {:?} after SIGHUP",
        asked.elapsed()
    );
    assert_eq!(cut["reason"], "role-lost");
    assert_eq!(cut["lost_principal"], "web-admin");
    assert_eq!(cut["policy_version"], reloaded["policy_version"]);
    assert!(
        cut["rule"]
            .as_str()
            .unwrap()
            .contains("web-admin no longer held"),
        "{cut}"
    );
    assert_eq!(cut["target"], "web-1");
    w.b.expect_record("forward.closed", &[("key_id", "alice"), ("end", "cut")]);
    assert!(
        !c.ended_within(Duration::from_millis(500)),
        "carol's forward was cut"
    );
    assert_eq!(w.records("forward.cut", &[]).len(), 1);
}

#[test]
fn t37_an_open_forward_is_cut_within_1s_of_a_revocation() {
    let Some(mut w) = world() else { return };
    let (alice, _) = w.client("alice", "alice", &["web-admin"], "-1m:+10m");
    let mut a = hold(&alice);
    w.change(|p| p.revoked_key_ids.push("alice"));
    let reloaded = w.records("policy.reloaded", &[]).pop().unwrap();
    let (cut, _) = cut_within_1s(
        &w,
        "alice",
        ts(&reloaded),
        Duration::from_secs(5),
        "the reload (revocation)",
    );
    assert!(
        a.ended_within(Duration::from_secs(3)),
        "the forward is still open"
    );
    a.expect_stderr("your certificate is revoked", Duration::from_secs(3));
    assert_eq!(cut["reason"], "revoked");
    assert_eq!(cut["policy_version"], reloaded["policy_version"]);
    let rule = cut["rule"].as_str().unwrap();
    assert!(
        rule.starts_with("[[revoked]] ") && rule.contains("key_id \"alice\": account taken over"),
        "{cut}"
    );
    // And no new forward.
    let out = alice.run(&["web-1", "true"]);
    refused(&out);
}

#[test]
fn t37_a_temporary_grant_reaching_its_until_cuts_with_no_file_change() {
    let Some((w, until)) = bob_admin_until_in_10s() else {
        return;
    };
    let (bob, _) = w.client("bob", "bob", &["web-deploy", "web-admin"], "-1m:+10m");
    let mut f = hold(&bob);
    let reloads = w.records("policy.reloaded", &[]).len();
    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        !f.ended_within(left.saturating_sub(Duration::from_millis(300))),
        "cut before the grant's end"
    );
    let (cut, _) = cut_within_1s(&w, "bob", until, Duration::from_secs(5), "the grant's end");
    assert!(ts(&cut) >= until, "cut before the grant's end: {cut}");
    assert!(f.ended_within(Duration::from_secs(3)));
    assert_eq!(cut["reason"], "role-lost");
    f.expect_stderr(&lost_role("web-admin"), Duration::from_secs(3));
    assert_eq!(cut["lost_principal"], "web-admin");
    assert!(cut["rule"].as_str().unwrap().contains("ended at"), "{cut}");
    assert_eq!(
        w.records("policy.reloaded", &[]).len(),
        reloads,
        "the policy was reloaded"
    );
}

#[test]
fn t37_disconnect_on_cert_expiry_cuts_at_the_certificates_end() {
    let Some(w) = world_with("disconnect_on_cert_expiry = true", |_| {}) else {
        return;
    };
    let (alice, key) = w.client("alice", "alice", &["web-admin"], "-1m:+8s");
    let cert = ssh_key::Certificate::read_file(&key.cert()).unwrap();
    let valid_before = UNIX_EPOCH + Duration::from_secs(cert.valid_before());
    let mut f = hold(&alice);
    let (cut, _) = cut_within_1s(
        &w,
        "alice",
        valid_before,
        Duration::from_secs(20),
        "the certificate's end",
    );
    assert!(
        ts(&cut) >= valid_before - Duration::from_millis(10),
        "{cut}"
    );
    assert_eq!(cut["reason"], "certificate-expired");
    assert!(f.ended_within(Duration::from_secs(3)));
}

// ---------------------------------------------------------------------------------------
// T44: refusals that reveal nothing

#[test]
fn t44_refusals_for_unreachable_hosts_hold_no_inventory_name_or_address() {
    let Some(w) = world() else { return };
    // erin holds dba (db-1) only.
    let (erin, _) = w.client("erin", "erin", &["dba"], "-1m:+10m");
    let sshd_port = w.b.sshd.port.to_string();
    let echo_port = w.pol.echo_port.to_string();
    let asks: Vec<String> = vec![
        format!("web-1:{sshd_port}"),
        "web-1:2200".into(),
        format!("127.0.0.1:{sshd_port}"),
        "127.0.0.1:22".into(),
        "127.0.0.1:23".into(),
        format!("127.0.0.1:{echo_port}"),
        "WEB-1:22".into(),
        "web-1.:22".into(),
        "Echo-1:22".into(),
        "nowhere:22".into(),
    ];
    let mut texts = Vec::new();
    for ask in &asks {
        let out = erin.run(&["-W", ask, "bastion"]);
        refused(&out);
        let (host, port) = ask.rsplit_once(':').unwrap();
        let rec = w.b.expect_record(
            "forward.refused",
            &[("key_id", "erin"), ("host", host), ("port", port)],
        );
        let shown = rec["message"].as_str().unwrap().to_string();
        assert!(out.stderr.contains(&shown), "{ask}: {out:?}");
        for secret in [
            "web-1",
            "echo-1",
            "shared",
            &sshd_port,
            &echo_port,
            "127.0.0.1",
        ] {
            assert!(
                host.contains(secret) || !shown.contains(secret),
                "{ask}: the refusal {shown:?} names {secret:?}"
            );
        }
        texts.push((ask.clone(), shown));
    }
    // Inventory hosts and unknown ones read the same.
    assert_eq!(
        texts.iter().find(|(a, _)| a == "web-1:2200").unwrap().1,
        "host \"web-1\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)"
    );
    assert_eq!(
        texts.iter().find(|(a, _)| a == "nowhere:22").unwrap().1,
        "host \"nowhere\" is not in the inventory or not granted to you (the bastion's `hosts` command lists the hosts you may reach)"
    );
    // The address erin's db-1 shares: only db-1 is named.
    let shared = &texts.iter().find(|(a, _)| a == "127.0.0.1:22").unwrap().1;
    assert!(shared.ends_with("connect by host name: db-1"), "{shared}");
    // The audit log keeps what erin was not told.
    let rec = w.b.expect_record(
        "forward.refused",
        &[("key_id", "erin"), ("host", "web-1"), ("port", "2200")],
    );
    assert!(rec["detail"].as_str().unwrap().contains("web-1"), "{rec}");
    // Hints stay for hosts the caller may reach.
    let (alice, _) = w.client("alice", "alice", &["web-deploy", "web-admin"], "-1m:+10m");
    let out = alice.run(&["-W", "WEB-1:22", "bastion"]);
    refused(&out);
    assert!(out.stderr.contains("write \"web-1\""), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// The record is on disk before anything reaches the target (F6 for forwards)

#[test]
fn a_forward_whose_record_cannot_be_written_never_reaches_the_target() {
    use drawbridge::audit::{Audit, MemorySink};
    let t = TestDir::new();
    // The target: counts the TCP connections it accepts.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    std::thread::spawn(move || {
        for s in target.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let pdir = t.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("policy.toml"),
        format!(
            "[hosts.counter]\naddress = \"127.0.0.1:{target_port}\"\n\n\
             [principals.web-admin]\nhosts = [\"counter\"]\nlogins = [\"root\"]\n\n\
             [groups.ops]\nmembers = [\"alice\"]\nprincipals = [\"web-admin\"]\n"
        ),
    )
    .unwrap();
    let user_ca = Ca::new(&t, "user_ca");
    let host_key = t.keygen("bastion_host_key");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = MemorySink::new();
    let audit = {
        let _g = rt.enter();
        Audit::with_sink(Box::new(sink.clone()), "test").unwrap()
    };
    let keys = drawbridge::bastion::BastionKeysInput {
        trusted_user_cas: vec![ssh_key::PublicKey::read_openssh_file(user_ca.public()).unwrap()],
        host_key: wire::read_key(&host_key.path),
        host_cert: None,
    };
    let store = drawbridge::policy::watch::PolicyStore::open(&pdir).expect("policy");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    rt.spawn(drawbridge::bastion::run(
        drawbridge::bastion::BastionParts {
            listener,
            cfg: drawbridge::config::SshConfig::default(),
            max_cert_validity: Duration::from_secs(3660),
            keys,
            policy: store,
            audit,
            metrics: drawbridge::bastion::BastionMetrics::new(),
            shutdown: stop_rx,
            recording: None,
        },
    ));
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    );

    let ca = wire::read_key(&user_ca.key.path);
    let user = wire::read_key(&t.keygen("alice").path);
    let now = wire::now();
    let cert = wire::cert_with(&ca, &user, "alice", 9, now - 60, now + 300, |b| {
        b.valid_principal("web-admin").unwrap();
    });
    rt.block_on(async {
        let (h, ok) = bounded(wire::login(port, &user, cert)).await;
        assert!(ok, "login refused");
        // The log works: the forward opens and reaches the target.
        let ch = bounded(h.channel_open_direct_tcpip("counter", 22, "127.0.0.1", 1))
            .await
            .expect("forward refused while the log works");
        drop(ch);
        // (Blocking this thread is fine: the session runs on the runtime's workers.)
        wait_until(
            Duration::from_secs(5),
            || accepts.load(Ordering::SeqCst) >= 1,
            || "the target saw no connection".into(),
        );
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
        // The log fails: refused, and nothing reaches the target.
        sink.set_failing(true);
        let r = bounded(h.channel_open_direct_tcpip("counter", 22, "127.0.0.1", 2)).await;
        assert!(r.is_err(), "a forward opened without its record");
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "the bastion dialed the target before its forward.opened record was written"
    );
    let _ = stop.send(true);
    rt.shutdown_timeout(Duration::from_secs(2));
}
