//! The bastion end to end: drawbridge's SSH front in-process, a real OpenSSH `sshd` as the
//! DMZ host, and the stock OpenSSH client through `ProxyJump`: the happy path, policy
//! decisions that are not a THREATS row, certificate-expiry cuts, shutdown, and audit
//! failure with an in-memory sink. The THREATS rows themselves are `threats_ssh.rs`
//! (t01–t22) and `faults_ssh.rs` (F1–F5, F7, F11), against the real binary.
//!
//! Fails when `sshd` is missing or we are not root (`DRAWBRIDGE_ALLOW_SKIP=1` skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::wire::{self, bounded};
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
    host_ca: Ca,
    sshd: Sshd,
    policy_dir: PathBuf,
    audit_path: PathBuf,
    /// A loopback port nothing listens on (an inventory host that is down).
    dead_port: u16,
}

fn world() -> Option<World> {
    if !need_sshd() {
        return None;
    }
    let t = TestDir::new();
    let user_ca = Ca::new(&t, "user_ca");
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
        host_ca,
        sshd,
    };
    w.write_policy(true, &[]);
    Some(w)
}

impl World {
    /// Writes the policy folder (`common::write_dmz_policy`). `alice_in_ops`: whether
    /// alice is still in group ops; `extra_hosts`: more inventory entries (role web).
    fn write_policy(&self, alice_in_ops: bool, extra_hosts: &[(&str, String)]) {
        write_dmz_policy(
            &self.policy_dir,
            self.sshd.port,
            self.dead_port,
            alice_in_ops,
            extra_hosts,
        );
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

    /// The first record of `event` matching `fields`, waiting up to 5 s for it.
    fn expect_record(&self, event: &str, fields: &[(&str, &str)]) -> Value {
        expect_record_in(&self.audit_path, event, fields)
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

    // whoami and hosts answer (the refusals of everything else: threats_ssh t18).
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("alice") && out.stdout.contains("web-admin"),
        "{out:?}"
    );
    // AES-GCM is offered (PERF-NOTES); strict KEX is threats_ssh t21.
    let out = c.run(&["-o", "Ciphers=aes128-gcm@openssh.com", "bastion", "whoami"]);
    assert!(out.success(), "AES-GCM not offered: {out:?}");
    let out = c.run(&["bastion", "hosts"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("web-1") && out.stdout.contains("root"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("db-1"), "{out:?}");
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

    // Refusals are counted by reason (the other codes: threats_ssh, via /metrics).
    for code in ["ttl-exceeded", "denied"] {
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

/// DESIGN, "Limits: connections per user" (by certificate key id).
#[test]
fn connections_per_user_are_capped() {
    let Some(w) = world() else { return };
    let cfg = SshConfig {
        max_connections_per_user: 2,
        ..test_config()
    };
    let b = start_bastion(&w, cfg);
    let ca = wire::read_key(&w.user_ca.key.path);
    let user = wire::read_key(&w.t.keygen("wire").path);
    let now = wire::now();
    let good = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
        bld.valid_principal("web-admin").unwrap();
    });
    let rt = wire::runtime();
    rt.block_on(async {
        // Two allowed, the third refused; a place comes back when one closes.
        let (h1, ok1) = bounded(wire::login(b.port, &user, good.clone())).await;
        assert!(ok1, "a good certificate is refused");
        let (_h2, ok2) = bounded(wire::login(b.port, &user, good.clone())).await;
        assert!(ok2);
        let (_h3, ok3) = bounded(wire::login(b.port, &user, good.clone())).await;
        assert!(!ok3, "a third connection for the same key id was accepted");
        h1.disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
            .unwrap();
        drop(h1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_h, ok) = bounded(wire::login(b.port, &user, good.clone())).await;
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the user's place was not given back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    w.expect_record(
        "ssh.auth.failed",
        &[("reason", "too-many-connections"), ("serial", "4242")],
    );
    assert!(b.metrics.refusals_of("too-many-connections") >= 1);
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
