//! The bastion end to end: drawbridge's SSH front in-process, a real OpenSSH `sshd` as the
//! DMZ host, and the stock OpenSSH client through `ProxyJump`.
//!
//! Skipped (with a note on stderr) when `sshd` is missing or we are not root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use drawbridge::audit::{Audit, MemorySink};
use drawbridge::bastion::{self, BastionKeysInput, BastionMetrics};
use drawbridge::config::SshConfig;
use drawbridge::policy::watch::{PolicyStore, ReloadOutcome};
use serde_json::Value;

/// The keys, the DMZ host and the policy folder of one test.
struct World {
    t: TestDir,
    user_ca: Ca,
    other_ca: Ca,
    host_ca: Ca,
    sshd: Sshd,
    policy_dir: PathBuf,
    audit_path: PathBuf,
    /// A loopback port nothing listens on (an inventory host that is down).
    dead_port: u16,
}

fn world() -> Option<World> {
    if !have_sshd() {
        // A skipped security test must never look like a passed one: skip only when asked.
        if std::env::var_os("DRAWBRIDGE_ALLOW_SKIP").is_some() {
            eprintln!("SKIPPED: needs /usr/sbin/sshd and root (DRAWBRIDGE_ALLOW_SKIP is set)");
            return None;
        }
        panic!(
            "the bastion tests need /usr/sbin/sshd and root: run scripts/test (it installs \
             openssh-server), or set DRAWBRIDGE_ALLOW_SKIP=1 to skip them knowingly"
        );
    }
    let t = TestDir::new();
    let user_ca = Ca::new(&t, "user_ca");
    let other_ca = Ca::new(&t, "other_ca");
    let host_ca = Ca::new(&t, "host_ca");
    let sshd = Sshd::start(
        &t,
        "web-1",
        &[&user_ca.public()],
        &host_ca,
        &[("root", &["web-admin", "short"])],
    )
    .expect("sshd");
    let w = World {
        policy_dir: t.join("policies"),
        audit_path: t.join("var/audit.log"),
        dead_port: free_port(),
        t,
        user_ca,
        other_ca,
        host_ca,
        sshd,
    };
    w.write_policy(true, &[]);
    Some(w)
}

impl World {
    /// Writes the policy folder. `alice_in_ops`: whether alice is still in group ops.
    /// `extra_hosts`: more `(name, address)` inventory entries with label role=web.
    fn write_policy(&self, alice_in_ops: bool, extra_hosts: &[(&str, String)]) {
        let mut hosts = format!(
            "[hosts.web-1]\naddress = \"127.0.0.1:{}\"\nlabels = {{ role = \"web\" }}\n\n\
             [hosts.db-1]\naddress = \"127.0.0.1:{}\"\nlabels = {{ role = \"db\" }}\n",
            self.sshd.port, self.dead_port
        );
        for (name, address) in extra_hosts {
            hosts.push_str(&format!(
                "\n[hosts.{name}]\naddress = \"{address}\"\nlabels = {{ role = \"web\" }}\n"
            ));
        }
        let principals = r#"[principals.web-admin]
hosts = { role = "web" }
logins = ["root"]

[principals.web-deploy]
hosts = ["web-1"]
logins = ["deploy"]

[principals.dba]
hosts = ["db-1"]
logins = ["postgres"]

[principals.short]
hosts = ["web-1"]
logins = ["root"]
max_ttl = "1m"
"#;
        let members = if alice_in_ops {
            r#"["alice", "carol"]"#
        } else {
            r#"["carol"]"#
        };
        let people = format!(
            "[groups.ops]\nmembers = {members}\nprincipals = [\"web-admin\", \"web-deploy\"]\n\n\
             [users.bob]\nprincipals = [\"dba\"]\n\n\
             [users.dave]\nprincipals = [\"short\"]\n"
        );
        let revoked = "[[revoked]]\nserial = 666\nreason = \"laptop lost\"\n";
        let d = &self.policy_dir;
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("hosts.toml"), hosts).unwrap();
        std::fs::write(d.join("principals.toml"), principals).unwrap();
        std::fs::write(d.join("people.toml"), people).unwrap();
        std::fs::write(d.join("revoked.toml"), revoked).unwrap();
    }

    /// A new user key `name` with a certificate from `ca` (None: no certificate).
    #[allow(clippy::too_many_arguments)]
    fn user(
        &self,
        name: &str,
        ca: Option<&Ca>,
        key_id: &str,
        principals: &[&str],
        validity: &str,
        serial: u64,
        options: &[&str],
    ) -> Key {
        let key = self.t.keygen(name);
        if let Some(ca) = ca {
            ca.sign_user(&key.public(), key_id, principals, validity, serial, options);
        }
        key
    }

    fn client(&self, name: &str, bastion_port: u16, key: &Key) -> SshClient {
        let mut c = SshClient::new(&self.t, name, &self.host_ca, bastion_port, name, key);
        c.add_target("web-1", "root");
        c.add_target("db-1", "postgres");
        c
    }

    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Records of `event` whose fields match every `(key, value)` given.
    fn find(&self, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .filter(|r| {
                fields.iter().all(|(k, v)| match &r[*k] {
                    Value::String(s) => s == v,
                    Value::Number(n) => n.to_string() == *v,
                    _ => false,
                })
            })
            .collect()
    }

    /// The first record of `event` matching `fields`, waiting up to 5 s for it (records
    /// of a closing forward are written after the client has gone).
    fn expect_record(&self, event: &str, fields: &[(&str, &str)]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = self.find(event, fields);
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            found = self.find(event, fields);
        }
        assert!(
            !found.is_empty(),
            "no {event} record with {fields:?}; the log has:\n{}",
            self.records()
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        found[0].clone()
    }
}

/// The bastion running on its own tokio runtime.
struct Running {
    rt: Option<tokio::runtime::Runtime>,
    port: u16,
    shutdown: tokio::sync::watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<anyhow::Result<()>>,
    metrics: Arc<BastionMetrics>,
    store: Arc<PolicyStore>,
}

fn test_config() -> SshConfig {
    SshConfig {
        shutdown_grace: Duration::from_secs(2),
        ..SshConfig::default()
    }
}

fn start_bastion(w: &World, cfg: SshConfig) -> Running {
    start_bastion_with(w, cfg, None)
}

/// `sink`: audit into this in-memory sink instead of the world's log file.
fn start_bastion_with(w: &World, cfg: SshConfig, sink: Option<MemorySink>) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let host_key = keygen(&w.t.join("bastion_host_key"), "ed25519");
    let host_cert = w
        .host_ca
        .sign_host(&host_key.public(), &["bastion", "127.0.0.1", "localhost"]);
    let keys = BastionKeysInput {
        trusted_user_cas: vec![ssh_key::PublicKey::read_openssh_file(w.user_ca.public()).unwrap()],
        host_key: ssh_key::PrivateKey::read_openssh_file(&host_key.path).unwrap(),
        host_cert: Some(ssh_key::Certificate::read_file(&host_cert).unwrap()),
    };
    let store = PolicyStore::open(&w.policy_dir).expect("policy loads");
    let metrics = BastionMetrics::new();
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let (tx, done) = std::sync::mpsc::channel();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let audit = {
        let _g = rt.enter();
        match sink {
            Some(sink) => Audit::with_sink(Box::new(sink), "test").expect("audit sink"),
            None => {
                std::fs::create_dir_all(w.audit_path.parent().unwrap()).unwrap();
                Audit::open(&w.audit_path, "test").expect("audit log")
            }
        }
    };
    let (s, m) = (store.clone(), metrics.clone());
    rt.spawn(async move {
        let r = bastion::run(
            listener,
            cfg,
            Duration::from_secs(3600 + 60),
            keys,
            s,
            audit,
            m,
            shutdown_rx,
        )
        .await;
        let _ = tx.send(r);
    });
    assert!(wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5)
    ));
    Running {
        rt: Some(rt),
        port,
        shutdown,
        done,
        metrics,
        store,
    }
}

impl Running {
    /// Asks for shutdown and waits (bounded) for `run` to return.
    fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let r = self
            .done
            .recv_timeout(within)
            .map_err(|_| anyhow::anyhow!("bastion did not stop within {within:?}"))?;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        r
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn fingerprint(key: &Key) -> String {
    ssh_key::PublicKey::read_openssh_file(key.public())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

fn refused(out: &Output) {
    assert!(
        !out.success() && !out.timed_out,
        "expected a refusal, got {out:?}"
    );
}

#[test]
fn forwards_through_the_bastion_and_refuses_everything_else() {
    let Some(w) = world() else { return };
    let mut b = start_bastion(&w, test_config());
    let port = b.port;

    // A certificate runs a command on the target through the bastion.
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let c = w.client("alice", port, &alice);
    let out = c.run(&["web-1", "echo", "ok"]);
    assert!(
        out.success(),
        "ssh through the bastion failed: {out:?}\nsshd: {}",
        w.sshd.log()
    );
    assert_eq!(out.stdout.trim(), "ok");
    w.expect_record(
        "ssh.auth.ok",
        &[("key_id", "alice"), ("serial", "1"), ("ssh_user", "alice")],
    );
    let opened = w.expect_record(
        "forward.opened",
        &[
            ("key_id", "alice"),
            ("target", "web-1"),
            ("principal", "web-admin"),
        ],
    );
    assert!(
        opened["policy_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let closed = w.expect_record(
        "forward.closed",
        &[("key_id", "alice"), ("target", "web-1")],
    );
    assert!(closed["bytes_client_to_target"].as_u64().unwrap() > 0);
    assert!(closed["bytes_target_to_client"].as_u64().unwrap() > 0);
    assert!(closed["duration_ms"].as_u64().is_some());

    // whoami and hosts answer; anything else on a session is refused with a message.
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("alice") && out.stdout.contains("web-admin"),
        "{out:?}"
    );
    // Strict KEX is negotiated with the OpenSSH client (Terrapin, row 21), and AES-GCM is
    // offered (PERF-NOTES).
    let out = c.run(&["-vvv", "bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr.contains("will use strict KEX ordering"),
        "{}",
        out.stderr
    );
    let out = c.run(&["-o", "Ciphers=aes128-gcm@openssh.com", "bastion", "whoami"]);
    assert!(out.success(), "AES-GCM not offered: {out:?}");
    let out = c.run(&["bastion", "hosts"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("web-1") && out.stdout.contains("root"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("db-1"), "{out:?}");
    let out = c.run(&["bastion"]);
    refused(&out);
    assert!(out.stderr.contains("shell refused"), "{out:?}");
    w.expect_record(
        "ssh.session.refused",
        &[("key_id", "alice"), ("request", "shell")],
    );
    let out = c.run(&["bastion", "cat", "/etc/passwd"]);
    refused(&out);
    assert!(out.stderr.contains("refused"), "{out:?}");
    w.expect_record(
        "ssh.session.refused",
        &[("key_id", "alice"), ("request", "exec")],
    );

    // Remote forwarding (-R) is refused.
    let out = c.run(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
        "bastion",
    ]);
    refused(&out);
    w.expect_record(
        "forward.refused",
        &[("key_id", "alice"), ("kind", "remote")],
    );

    // A plain key (no -cert.pub beside it).
    let plain = w.user("plain", None, "", &[], "", 0, &[]);
    let out = w.client("plain", port, &plain).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[
            ("reason", "no-certificate"),
            ("key_fingerprint", &fingerprint(&plain)),
        ],
    );

    // A certificate from another CA.
    let mallory = w.user(
        "mallory",
        Some(&w.other_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        2,
        &[],
    );
    let out = w.client("mallory", port, &mallory).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[("reason", "untrusted-ca"), ("serial", "2")],
    );

    // Expired: russh refuses it before our handler; the capture of its log line audits it
    // (`expired_and_not_yet_valid_certificates_are_audited` has the details).
    let old = w.user(
        "old",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-20m:-10m",
        3,
        &[],
    );
    let out = w.client("old", port, &old).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[
            ("reason", "expired"),
            ("key_fingerprint", &fingerprint(&old)),
        ],
    );

    // A host certificate from our (user) CA used as a user certificate.
    let hosty = w.t.keygen("hosty");
    w.user_ca.sign_host(&hosty.public(), &["web-admin"]);
    let out = w.client("hosty", port, &hosty).run(&["web-1", "true"]);
    refused(&out);
    let fp = fingerprint(&hosty);
    // The OpenSSH client does not even offer a host certificate for user auth; it falls
    // back to the bare key. `wire_level_refusals` sends one with a russh client.
    w.expect_record(
        "ssh.auth.failed",
        &[("key_fingerprint", &fp), ("reason", "no-certificate")],
    );

    // Revoked serial.
    let lost = w.user(
        "lost",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        666,
        &[],
    );
    let out = w.client("lost", port, &lost).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[("reason", "revoked"), ("serial", "666")],
    );

    // source-address that does not match the real peer.
    let far = w.user(
        "far",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        4,
        &["source-address=192.0.2.0/24"],
    );
    let out = w.client("far", port, &far).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[("reason", "source-address-mismatch"), ("serial", "4")],
    );

    // force-command: the bastion runs no commands.
    let forced = w.user(
        "forced",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        5,
        &["force-command=/bin/true"],
    );
    let out = w.client("forced", port, &forced).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "ssh.auth.failed",
        &[("reason", "force-command"), ("serial", "5")],
    );

    // A host that is not in the inventory.
    let mut c2 = w.client("alice2", port, &alice);
    c2.add_target_as("nowhere", "nowhere.example.org", "root");
    let out = c2.run(&["nowhere", "true"]);
    refused(&out);
    assert!(out.stderr.contains("not in the inventory"), "{out:?}");
    w.expect_record(
        "forward.refused",
        &[("reason", "unknown-host"), ("host", "nowhere.example.org")],
    );
    // A host the user may not reach (a role for web-1 used to dial db-1).
    let out = c.run(&["db-1", "true"]);
    refused(&out);
    w.expect_record(
        "forward.refused",
        &[("reason", "denied"), ("key_id", "alice"), ("host", "db-1")],
    );

    // A principal's max_ttl: dave's cert is 3 minutes old, `short` allows 1 minute.
    let dave = w.user(
        "dave",
        Some(&w.user_ca),
        "dave",
        &["short"],
        "-4m:+5m",
        7,
        &[],
    );
    let out = w.client("dave", port, &dave).run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "forward.refused",
        &[("reason", "ttl-exceeded"), ("key_id", "dave")],
    );

    // The bastion allows it, the target's principals file does not: refused by sshd.
    let deployer = w.user(
        "deployer",
        Some(&w.user_ca),
        "alice",
        &["web-deploy"],
        "-1m:+5m",
        8,
        &[],
    );
    let out = w
        .client("deployer", port, &deployer)
        .run(&["web-1", "true"]);
    refused(&out);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    w.expect_record(
        "forward.opened",
        &[("serial", "8"), ("principal", "web-deploy")],
    );

    // Removed from the group in Git after issuance: cut off at the next connection.
    let out = c.run(&["web-1", "true"]);
    assert!(out.success(), "{out:?}");
    w.write_policy(false, &[]);
    match b.store.reload() {
        ReloadOutcome::Applied { .. } => {}
        other => panic!("reload: {other:?}"),
    }
    let out = c.run(&["web-1", "true"]);
    refused(&out);
    w.expect_record(
        "forward.refused",
        &[("reason", "denied"), ("key_id", "alice"), ("host", "web-1")],
    );

    // Refusals are counted by reason.
    for code in [
        "no-certificate",
        "untrusted-ca",
        "revoked",
        "unknown-host",
        "denied",
    ] {
        assert!(b.metrics.refusals_of(code) > 0, "no {code} refusal counted");
    }

    b.stop(Duration::from_secs(10)).expect("clean stop");
    let summary = drawbridge::audit::verify(&w.audit_path);
    assert!(
        summary.is_ok(),
        "audit chain broken: {:?}",
        summary.err().map(|e| e.to_string())
    );
}

#[test]
fn unauthenticated_connections_are_capped_and_timed_out() {
    let Some(w) = world() else { return };
    let cfg = SshConfig {
        max_unauthenticated_per_source: 2,
        login_grace_time: Duration::from_secs(2),
        ..test_config()
    };
    let b = start_bastion(&w, cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], b.port));
    let banner = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    // The readiness probe of start_bastion held a slot for a moment: wait it out.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quiet = 0;
    while quiet < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let idle = b.metrics.connections_total.load(Ordering::Relaxed) >= 1
            && b.metrics.unauthenticated_active.load(Ordering::Relaxed) == 0;
        quiet = if idle { quiet + 1 } else { 0 };
    }
    let mut s1 = TcpStream::connect(addr).unwrap();
    let mut s2 = TcpStream::connect(addr).unwrap();
    assert!(banner(&mut s1).starts_with("SSH-2.0-drawbridge"));
    let b2 = banner(&mut s2);
    assert!(
        b2.starts_with("SSH-2.0-drawbridge"),
        "{b2:?} total={} dropped={} unauth={}",
        b.metrics.connections_total.load(Ordering::Relaxed),
        b.metrics.connections_dropped.load(Ordering::Relaxed),
        b.metrics.unauthenticated_active.load(Ordering::Relaxed)
    );
    // F1: the third from the same source is dropped at accept (no banner).
    let mut s3 = TcpStream::connect(addr).unwrap();
    assert_eq!(banner(&mut s3), "");
    eventually(|| b.metrics.connections_dropped.load(Ordering::Relaxed) >= 1);
    assert!(b.metrics.connections_dropped.load(Ordering::Relaxed) >= 1);
    // F2: the stalled ones are closed at the login grace limit.
    let started = Instant::now();
    for s in [&mut s1, &mut s2] {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "not closed at the grace limit"
    );
    // The socket closes a moment before the counter moves: wait for it (bounded).
    eventually(|| b.metrics.login_grace_expired.load(Ordering::Relaxed) >= 2);
    assert!(
        b.metrics.login_grace_expired.load(Ordering::Relaxed) >= 2,
        "after {:?}: grace={} total={} dropped={} unauth={}",
        started.elapsed(),
        b.metrics.login_grace_expired.load(Ordering::Relaxed),
        b.metrics.connections_total.load(Ordering::Relaxed),
        b.metrics.connections_dropped.load(Ordering::Relaxed),
        b.metrics.unauthenticated_active.load(Ordering::Relaxed),
    );
    // Slots are given back: a real login works again.
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let out = w
        .client("alice", b.port, &alice)
        .run(&["web-1", "echo", "ok"]);
    assert!(out.success(), "{out:?}");
}

/// Waits up to 5 s for `cond`.
fn eventually(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_reading_target_does_not_grow_memory() {
    let Some(w) = world() else { return };
    // A target that accepts and never reads.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let (s, _) = sink.accept().unwrap();
        std::thread::sleep(Duration::from_secs(40));
        drop(s);
    });
    w.write_policy(true, &[("sink", sink_addr.to_string())]);
    let b = start_bastion(&w, test_config());
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let c = w.client("alice", b.port, &alice);
    let before = rss_kib();

    const TOTAL: u64 = 256 * 1024 * 1024;
    let mut child = c
        .command(&["-W", "sink:22", "bastion"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let wr = written.clone();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        while wr.load(Ordering::Relaxed) < TOTAL {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            wr.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });

    // Wait until the client is stalled: no progress for 2 s (bounded at 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if now > 0 && still_since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let pushed = written.load(Ordering::Relaxed);
    let to_target = b.metrics.bytes_client_to_target.load(Ordering::Relaxed);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
    drop(held);
    eprintln!("pushed {pushed} bytes, {to_target} reached the target socket, RSS +{grown_mib} MiB");
    assert!(
        pushed < TOTAL,
        "the client was never pushed back: the bastion buffers without bound"
    );
    assert!(pushed > 0, "nothing was sent");
    assert!(
        to_target < 64 * 1024 * 1024,
        "{to_target} bytes written towards a target that reads nothing"
    );
    assert!(grown_mib < 64, "bastion memory grew by {grown_mib} MiB");
}

#[test]
fn shutdown_drains_open_forwards_then_cuts_them() {
    let Some(w) = world() else { return };
    let mut b = start_bastion(&w, test_config());
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let c = w.client("alice", b.port, &alice);
    // A held forward: ssh -W with stdin open; sshd's banner comes back through it.
    let mut child = c
        .command(&["-W", "web-1:22", "bastion"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    let banner = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner:?}");
    assert_eq!(b.metrics.forwards_active.load(Ordering::Relaxed), 1);
    let started = Instant::now();
    b.stop(Duration::from_secs(15)).expect("clean stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "forward cut before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(12), "{took:?}");
    let _ = child.kill();
    let _ = child.wait();
    w.expect_record(
        "forward.closed",
        &[("key_id", "alice"), ("end", "shutdown")],
    );
    assert!(drawbridge::audit::verify(&w.audit_path).is_ok());
    assert!(Path::new(&w.audit_path).exists());
}

/// A russh client, to send what the OpenSSH client will not: host certificates, "forever"
/// certificates, empty principals, many channels.
mod wire {
    use super::*;
    use ssh_key::certificate::Builder;

    pub struct AnyServer;
    impl russh::client::Handler for AnyServer {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A certificate for `user` signed by `ca`, with `edit` applied to the builder.
    pub fn cert(
        ca: &ssh_key::PrivateKey,
        user: &ssh_key::PrivateKey,
        after: u64,
        before: u64,
        edit: impl FnOnce(&mut Builder),
    ) -> ssh_key::Certificate {
        let mut b = Builder::new(
            [1u8; 16],
            user.public_key().key_data().clone(),
            after,
            before,
        )
        .unwrap();
        b.key_id("alice").unwrap();
        b.serial(4242).unwrap();
        edit(&mut b);
        b.sign(ca).unwrap()
    }

    pub async fn login(
        port: u16,
        key: &ssh_key::PrivateKey,
        cert: ssh_key::Certificate,
    ) -> (russh::client::Handle<AnyServer>, bool) {
        let config = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect(config, ("127.0.0.1", port), AnyServer)
            .await
            .unwrap();
        let ok = h
            .authenticate_openssh_cert("wire", Arc::new(key.clone()), cert)
            .await
            .map(|r| r.success())
            .unwrap_or(false);
        (h, ok)
    }
}

/// Awaits `f` at most 20 s.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[test]
fn wire_level_refusals() {
    use ssh_key::certificate::CertType;
    let Some(w) = world() else { return };
    let cfg = SshConfig {
        max_channels_per_connection: 3,
        max_connections_per_user: 2,
        ..test_config()
    };
    let b = start_bastion(&w, cfg);
    let ca = ssh_key::PrivateKey::read_openssh_file(&w.user_ca.key.path).unwrap();
    let user = ssh_key::PrivateKey::read_openssh_file(&w.t.keygen("wire").path).unwrap();
    let now = wire::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = b.port;
    let with_role = |bld: &mut ssh_key::certificate::Builder| {
        bld.valid_principal("web-admin").unwrap();
    };

    rt.block_on(async {
        // Host certificate as user certificate (row 4).
        let c = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
            with_role(bld);
            bld.cert_type(CertType::Host).unwrap();
        });
        let (_, ok) = bounded(wire::login(port, &user, c)).await;
        assert!(!ok);
        // "Forever" (row 6): russh skips its own window check for it.
        let c = wire::cert(&ca, &user, now - 60, u64::MAX, with_role);
        let (_, ok) = bounded(wire::login(port, &user, c)).await;
        assert!(!ok);
        // Empty principals (row 5).
        let c = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
            bld.all_principals_valid().unwrap();
        });
        let (_, ok) = bounded(wire::login(port, &user, c)).await;
        assert!(!ok);
        // Longer than the global maximum (row 6).
        let c = wire::cert(&ca, &user, now - 60, now + 7200, with_role);
        let (_, ok) = bounded(wire::login(port, &user, c)).await;
        assert!(!ok);

        // A good one; then the channel cap (F4).
        let good = wire::cert(&ca, &user, now - 60, now + 300, with_role);
        let (h, ok) = bounded(wire::login(port, &user, good.clone())).await;
        assert!(ok, "a good certificate is refused");
        let mut held = Vec::new();
        for _ in 0..3 {
            let ch = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1))
                .await
                .expect("forward under the cap");
            held.push(ch);
        }
        let over = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)).await;
        assert!(over.is_err(), "a 4th channel opened past the cap of 3");
        // The connection stays usable after a refusal: close one, open again.
        let first = held.remove(0);
        first.close().await.unwrap();
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let again = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)).await;
            if let Ok(ch) = again {
                held.push(ch);
                break;
            }
            assert!(Instant::now() < deadline, "channel place not given back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Connections per user (key id): two allowed, the third refused.
        let (_h2, ok2) = bounded(wire::login(port, &user, good.clone())).await;
        assert!(ok2);
        let (_h3, ok3) = bounded(wire::login(port, &user, good.clone())).await;
        assert!(!ok3, "a third connection for the same key id was accepted");
        drop(held);
    });

    for (reason, serial) in [
        ("not-user-certificate", "4242"),
        ("no-expiry", "4242"),
        ("no-principals", "4242"),
        ("validity-too-long", "4242"),
        ("too-many-connections", "4242"),
    ] {
        w.expect_record("ssh.auth.failed", &[("reason", reason), ("serial", serial)]);
    }
    w.expect_record(
        "forward.refused",
        &[("reason", "too-many-channels"), ("key_id", "alice")],
    );
    assert!(b.metrics.refusals_of("too-many-channels") >= 1);
}

#[test]
fn idle_connections_and_down_targets() {
    let Some(w) = world() else { return };
    let cfg = SshConfig {
        idle_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..test_config()
    };
    let b = start_bastion(&w, cfg);
    // F3: authenticated, no channel: closed at the idle timeout.
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let c = w.client("alice", b.port, &alice);
    let started = Instant::now();
    let out = c.run(&["-N", "bastion"]);
    assert!(
        !out.timed_out && started.elapsed() < Duration::from_secs(10),
        "{out:?}"
    );
    w.expect_record("ssh.auth.ok", &[("key_id", "alice")]);
    // F5: the target is down: an open failure, quickly, audited.
    let bob = w.user("bob", Some(&w.user_ca), "bob", &["dba"], "-1m:+5m", 2, &[]);
    let started = Instant::now();
    let out = w.client("bob", b.port, &bob).run(&["db-1", "true"]);
    refused(&out);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        out.stderr.contains("cannot connect") || out.stderr.contains("open failed"),
        "{out:?}"
    );
    w.expect_record(
        "forward.refused",
        &[
            ("reason", "connect-failed"),
            ("key_id", "bob"),
            ("target", "db-1"),
        ],
    );
}

#[test]
fn connections_are_cut_when_the_certificate_expires() {
    let Some(w) = world() else { return };
    let cfg = SshConfig {
        disconnect_on_cert_expiry: true,
        ..test_config()
    };
    let b = start_bastion(&w, cfg);
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+10s",
        1,
        &[],
    );
    let c = w.client("alice", b.port, &alice);
    let started = Instant::now();
    // A held forward (stdin open) that would last for ever.
    let mut child = c
        .command(&["-W", "web-1:22", "bastion"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let out = wait_with_timeout(child, Duration::from_secs(25));
    assert!(!out.timed_out, "the connection outlived its certificate");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The forward was open (so the login worked) and ended with the connection.
    w.expect_record("forward.opened", &[("key_id", "alice")]);
    w.expect_record("forward.closed", &[("key_id", "alice")]);
}

#[test]
fn audit_failure_fails_closed_and_recovers() {
    let Some(w) = world() else { return };
    let sink = MemorySink::new();
    let b = start_bastion_with(&w, test_config(), Some(sink.clone()));
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    let c = w.client("alice", b.port, &alice);
    assert!(c.run(&["web-1", "true"]).success());

    // An authenticated connection made while the log works...
    let ca = ssh_key::PrivateKey::read_openssh_file(&w.user_ca.key.path).unwrap();
    let user = ssh_key::PrivateKey::read_openssh_file(&w.t.keygen("wire").path).unwrap();
    let now = wire::now();
    let cert = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
        bld.valid_principal("web-admin").unwrap();
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (h, ok) = rt.block_on(bounded(wire::login(b.port, &user, cert)));
    assert!(ok);

    // ...then the disk fails (F6): no new authentication, no new forward.
    sink.set_failing(true);
    let out = c.run(&["web-1", "true"]);
    refused(&out);
    let opened = rt.block_on(bounded(h.channel_open_direct_tcpip(
        "web-1",
        22,
        "127.0.0.1",
        1,
    )));
    assert!(opened.is_err(), "a forward opened without its audit record");
    assert!(b.metrics.refusals_of("audit-unavailable") >= 2);

    // The disk comes back: service resumes without a restart.
    sink.set_failing(false);
    let out = c.run(&["web-1", "echo", "back"]);
    assert!(out.success(), "{out:?}");
    assert!(sink.lines().iter().any(|l| l.contains("forward.opened")));
}

#[test]
fn protocol_garbage_and_hostile_names_do_not_hurt() {
    let Some(w) = world() else { return };
    let b = start_bastion(&w, test_config());
    let addr = SocketAddr::from(([127, 0, 0, 1], b.port));
    // Rows 19, 20: garbage after the banner, a 0xFFFFFFFF packet length, a message before
    // key exchange. Each connection is dropped; the bastion keeps serving.
    for junk in [
        &b"SSH-2.0-x\r\n\xff\xff\xff\xff\x00\x00"[..],
        &b"SSH-2.0-x\r\n\x00\x00\x00\x0c\x0a\x5a\x00\x00\x00\x07session"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 4096][..],
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => assert!(Instant::now() < deadline, "junk connection kept open"),
            }
        }
    }
    // Row 22: a user name with a newline and ESC is stored escaped.
    let ca = ssh_key::PrivateKey::read_openssh_file(&w.user_ca.key.path).unwrap();
    let user = ssh_key::PrivateKey::read_openssh_file(&w.t.keygen("wire").path).unwrap();
    let now = wire::now();
    let cert = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
        bld.valid_principal("web-admin").unwrap();
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bounded(async {
        let config = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect(config, ("127.0.0.1", b.port), wire::AnyServer)
            .await
            .unwrap();
        let r = h
            .authenticate_openssh_cert("evil\n\u{1b}[31m\0", Arc::new(user.clone()), cert)
            .await
            .unwrap();
        assert!(r.success());
    }));
    let rec = w.expect_record("ssh.auth.ok", &[("serial", "4242")]);
    let shown = rec["ssh_user"].as_str().unwrap();
    assert!(
        !shown.contains('\n') && !shown.contains('\u{1b}') && !shown.contains('\0'),
        "{shown:?}"
    );
    // Still serving.
    let alice = w.user(
        "alice",
        Some(&w.user_ca),
        "alice",
        &["web-admin"],
        "-1m:+5m",
        1,
        &[],
    );
    assert!(
        w.client("alice", b.port, &alice)
            .run(&["web-1", "true"])
            .success()
    );
}

/// Certificates russh refuses before calling drawbridge's handler (outside their window,
/// or badly signed) still leave an `ssh.auth.failed` record with the right reason, via the
/// `lib_refusals` capture of russh's log line.
#[test]
fn expired_and_not_yet_valid_certificates_are_audited() {
    let Some(w) = world() else { return };
    let b = start_bastion(&w, test_config());
    let port = b.port;

    // The OpenSSH client: russh refuses the certificate, the client falls back to the bare
    // key; the record of the certificate's refusal carries that key's fingerprint.
    for (name, validity, serial) in [("stale", "-20m:-10m", 31u64), ("early", "+10m:+20m", 32)] {
        let key = w.user(
            name,
            Some(&w.user_ca),
            "alice",
            &["web-admin"],
            validity,
            serial,
            &[],
        );
        let out = w.client(name, port, &key).run(&["bastion", "whoami"]);
        refused(&out);
        assert!(out.stderr.contains("Permission denied"), "{out:?}");
        let fp = fingerprint(&key);
        let rec = w.expect_record(
            "ssh.auth.failed",
            &[
                ("reason", "expired"),
                ("key_fingerprint", &fp),
                ("ssh_user", name),
                ("refused_by", "russh"),
            ],
        );
        assert!(
            rec["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{rec}"
        );
        assert!(rec["conn"].as_u64().is_some(), "{rec}");
        // The fallback is refused under its own reason, on the same connection.
        let fallback = w.expect_record(
            "ssh.auth.failed",
            &[("reason", "no-certificate"), ("key_fingerprint", &fp)],
        );
        assert_eq!(fallback["conn"], rec["conn"]);
        // One record per refused certificate.
        assert_eq!(
            w.find(
                "ssh.auth.failed",
                &[("reason", "expired"), ("key_fingerprint", &fp)]
            )
            .len(),
            1
        );
    }
    assert!(b.metrics.refusals_of("expired") >= 2);

    // A client that does not fall back (russh's): audited when its connection ends, with
    // no key fingerprint (russh logs nothing about the certificate).
    let ca = ssh_key::PrivateKey::read_openssh_file(&w.user_ca.key.path).unwrap();
    let user = ssh_key::PrivateKey::read_openssh_file(&w.t.keygen("wired").path).unwrap();
    let now = wire::now();
    // Multi-threaded, so the client's connection tasks still run (and close) once
    // `block_on` has returned.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let with_role = |bld: &mut ssh_key::certificate::Builder| {
        bld.valid_principal("web-admin").unwrap();
    };
    rt.block_on(async {
        let old = wire::cert(&ca, &user, now - 1200, now - 600, with_role);
        let (h, ok) = bounded(wire::login(port, &user, old)).await;
        assert!(!ok, "an expired certificate was accepted");
        drop(h);
        // A good certificate with one bit of its signature flipped.
        let good = wire::cert(&ca, &user, now - 60, now + 300, with_role);
        let mut bytes = good.to_bytes().unwrap();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let bad = ssh_key::Certificate::from_bytes(&bytes).unwrap();
        assert!(bad.verify_signature().is_err());
        let (h, ok) = bounded(wire::login(port, &user, bad)).await;
        assert!(!ok, "a badly signed certificate was accepted");
        drop(h);
    });
    let unkeyed = |reason: &str| {
        w.find(
            "ssh.auth.failed",
            &[("reason", reason), ("refused_by", "russh")],
        )
        .into_iter()
        .filter(|r| r["key_fingerprint"].is_null())
        .count()
    };
    eventually(|| unkeyed("expired") == 1 && unkeyed("bad-signature") == 1);
    assert_eq!(unkeyed("expired"), 1, "{:#?}", w.records());
    assert_eq!(unkeyed("bad-signature"), 1, "{:#?}", w.records());
    assert!(b.metrics.refusals_of("bad-signature") >= 1);
    assert!(b.metrics.refusals_of("expired") >= 3);
}
