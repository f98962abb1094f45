//! The bastion end to end: drawbridge's SSH front in-process, a real OpenSSH `sshd` as the
//! DMZ host, and the stock OpenSSH client through `ProxyJump`: the happy path, policy
//! decisions that are not a row of docs/threats.md, certificate-expiry cuts, shutdown, and audit
//! failure with an in-memory sink. The threat rows themselves are `threats_ssh.rs`
//! (t01–t22) and `faults_ssh.rs` (F1–F5, F7, F11), against the real binary.
//!
//! Fails when `sshd` is missing or we are not root (`DRAWBRIDGE_ALLOW_SKIP=1` skips).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::audit::expect_record_in;
use crate::support::dmz::Dmz;
use crate::support::process::wait_for_port;
use crate::support::ssh::{Ca, TestDir, keygen, refused};
use crate::support::sshd::need_sshd;
use crate::support::wire::{self, bounded};
use drawbridge::audit::{Audit, MemorySink};
use drawbridge::bastion::{self, BastionKeysInput, BastionMetrics};
use drawbridge::config::SshConfig;
use drawbridge::policy::watch::{PolicyStore, ReloadOutcome};
use serde_json::Value;

/// The DMZ of one test, with a user CA of its own (the bastion runs in-process here).
fn world() -> Option<Dmz> {
    if !need_sshd() {
        return None;
    }
    let t = TestDir::new();
    let user_ca = Ca::new(&t, "user_ca");
    let host_ca = Ca::new(&t, "host_ca");
    let (trusted, policy_dir) = (user_ca.public(), t.join("policies"));
    Some(Dmz::start(t, user_ca, host_ca, &trusted, &policy_dir))
}

/// The audit log of the in-process bastion.
fn audit_path(w: &Dmz) -> PathBuf {
    w.t.join("var/audit.log")
}

/// The first record of `event` matching `fields`, waiting up to 5 s for it.
fn expect_record(w: &Dmz, event: &str, fields: &[(&str, &str)]) -> Value {
    expect_record_in(&audit_path(w), event, fields)
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

fn start_bastion(w: &Dmz, cfg: SshConfig) -> Running {
    start_bastion_with(w, cfg, None)
}

/// `sink`: audit into this in-memory sink instead of the world's log file.
fn start_bastion_with(w: &Dmz, cfg: SshConfig, sink: Option<MemorySink>) -> Running {
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
                let path = audit_path(w);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                Audit::open(&path, "test").expect("audit log")
            }
        }
    };
    let (s, m) = (store.clone(), metrics.clone());
    rt.spawn(async move {
        let r = bastion::run(bastion::BastionParts {
            listener,
            cfg,
            max_cert_validity: Duration::from_secs(3600 + 60),
            keys,
            policy: s,
            audit,
            metrics: m,
            shutdown: shutdown_rx,
            recording: None,
        })
        .await;
        let _ = tx.send(r);
    });
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    );
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
    let alice = w.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = w.client("alice", port, &alice);
    let out = c.run(&["web-1", "echo", "ok"]);
    assert!(
        out.success(),
        "ssh through the bastion failed: {out:?}\nsshd: {}",
        w.sshd.log()
    );
    assert_eq!(out.stdout.trim(), "ok");
    expect_record(
        &w,
        "ssh.auth.ok",
        &[("key_id", "alice"), ("serial", "1"), ("ssh_user", "alice")],
    );
    let opened = expect_record(
        &w,
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
    let closed = expect_record(
        &w,
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
    // AES-GCM is offered (bench/RESULTS.md: faster than chacha20 here); strict KEX is threats_ssh t21.
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
    let dave = w.user("dave", "dave", &["short"], "-4m:+5m", 7, &[]);
    let out = w.client("dave", port, &dave).run(&["web-1", "true"]);
    refused(&out);
    expect_record(
        &w,
        "forward.refused",
        &[("reason", "ttl-exceeded"), ("key_id", "dave")],
    );

    // The bastion allows it, the target's principals file does not: refused by sshd.
    let deployer = w.user("deployer", "alice", &["web-deploy"], "-1m:+5m", 8, &[]);
    let out = w
        .client("deployer", port, &deployer)
        .run(&["web-1", "true"]);
    refused(&out);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    expect_record(
        &w,
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
    expect_record(
        &w,
        "forward.refused",
        &[("reason", "denied"), ("key_id", "alice"), ("host", "web-1")],
    );

    // Refusals are counted by reason (the other codes: threats_ssh, via /metrics).
    for code in ["ttl-exceeded", "denied"] {
        assert!(b.metrics.refusals_of(code) > 0, "no {code} refusal counted");
    }

    b.stop(Duration::from_secs(10)).expect("clean stop");
    let summary = drawbridge::audit::verify(&audit_path(&w));
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
    let alice = w.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = w.client("alice", b.port, &alice);
    // A held forward: ssh -W with stdin open; sshd's banner comes back through it.
    let forward = c.hold_forward("web-1:22");
    let banner = forward.first_bytes(Duration::from_secs(15));
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
    drop(forward);
    expect_record(
        &w,
        "forward.closed",
        &[("key_id", "alice"), ("end", "shutdown")],
    );
    assert!(drawbridge::audit::verify(&audit_path(&w)).is_ok());
    assert!(Path::new(&audit_path(&w)).exists());
}

/// The per-user connection limit (`ssh.max_connections_per_user`, by certificate key id).
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
    expect_record(
        &w,
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
    let alice = w.user("alice", "alice", &["web-admin"], "-1m:+10s", 1, &[]);
    let c = w.client("alice", b.port, &alice);
    let started = Instant::now();
    // A held forward (stdin open) that would last for ever.
    let out = c.hold_forward("web-1:22").wait(Duration::from_secs(25));
    assert!(!out.timed_out, "the connection outlived its certificate");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The forward was open (so the login worked) and ended with the connection.
    expect_record(&w, "forward.opened", &[("key_id", "alice")]);
    expect_record(&w, "forward.closed", &[("key_id", "alice")]);
}

#[test]
fn audit_failure_fails_closed_and_recovers() {
    let Some(w) = world() else { return };
    let sink = MemorySink::new();
    let b = start_bastion_with(&w, test_config(), Some(sink.clone()));
    let alice = w.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
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

/// A target that keeps Nagle's algorithm on (as sshd does) and sends two small messages
/// in a row is not held up by a delayed ACK from the bastion: the second leaves the
/// target's kernel only when the first is ACKed, and the bastion ACKs small reads at once
/// (`bastion::quickack`). Without that, the bastion's socket is in Linux's "ping-pong"
/// mode after a few quick exchanges, and its ACK, with the second message behind it,
/// waits 40 ms: the stall that was most of what `ssh -J` added over a direct `ssh`.
#[test]
fn a_nagled_targets_second_small_message_is_not_held_by_a_delayed_ack() {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(w) = world() else { return };
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = target.local_addr().unwrap().port();
    w.write_policy(true, &[("nagle-1", format!("127.0.0.1:{tport}"))]);
    const TRIES: usize = 5;
    std::thread::spawn(move || {
        for s in target.incoming().take(TRIES) {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 4];
            for _ in 0..3 {
                let _ = s.write_all(b"ping");
                let _ = s.read_exact(&mut b);
            }
            let _ = s.write_all(b"A");
            let _ = s.write_all(b"B");
            let _ = s.read(&mut b);
        }
    });
    let b = start_bastion(&w, test_config());
    let ca = ssh_key::PrivateKey::read_openssh_file(&w.user_ca.key.path).unwrap();
    let user = ssh_key::PrivateKey::read_openssh_file(&w.t.keygen("wire").path).unwrap();
    let now = wire::now();
    let cert = wire::cert(&ca, &user, now - 60, now + 300, |bld| {
        bld.valid_principal("web-admin").unwrap();
    });
    let rt = wire::runtime();
    let waits: Vec<Duration> = rt.block_on(bounded(async {
        let (h, ok) = wire::login(b.port, &user, cert).await;
        assert!(ok);
        let mut waits = Vec::new();
        for _ in 0..TRIES {
            let ch = h
                .channel_open_direct_tcpip("nagle-1", tport.into(), "127.0.0.1", 1)
                .await
                .expect("the forward opens");
            let mut s = ch.into_stream();
            let mut buf = [0u8; 4];
            for _ in 0..3 {
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"ping");
                s.write_all(b"pong").await.unwrap();
            }
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            let start = Instant::now();
            s.read_exact(&mut one).await.unwrap();
            waits.push(start.elapsed());
            assert_eq!(&one, b"B");
        }
        waits
    }));
    assert!(
        waits.iter().any(|d| *d < Duration::from_millis(15)),
        "the target's second small message waited for the bastion's delayed ACK: {waits:?}"
    );
}

/// The client's side of the same stall, at the key exchange, as the OpenSSH client's
/// `ssh -W` process (Nagle on) does it: KEXINIT, then at once ECDH_INIT. The second waits
/// in the client's kernel until the bastion ACKs the first; the bastion must not leave
/// that ACK to the 40 ms delayed-ACK timer (`bastion::quickack` on the client's socket).
/// Timed from writing ECDH_INIT to the first byte of the bastion's reply.
#[test]
fn a_nagled_clients_ecdh_init_is_not_held_by_a_delayed_ack() {
    use crate::support::rawssh::{self, MSG_KEX_ECDH_INIT, MSG_KEX_ECDH_REPLY, MSG_KEXINIT};
    use std::io::{Read, Write};
    // Not `rawssh::Raw`: this test needs the client socket's Nagle left on.
    fn read_packet(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let n = u32::from_be_bytes(len) as usize;
        assert!(n < 64 * 1024, "packet length {n}");
        let mut p = vec![0u8; n];
        s.read_exact(&mut p).unwrap();
        p
    }
    let Some(w) = world() else { return };
    let b = start_bastion(&w, test_config());
    let kexinit = rawssh::kexinit("curve25519-sha256");
    let mut ecdh_init = vec![MSG_KEX_ECDH_INIT];
    rawssh::put_string(&mut ecdh_init, &[9u8; 32]);
    let mut waits = Vec::new();
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"SSH-2.0-nagled_test\r\n").unwrap();
        // The bastion's version line, then its KEXINIT.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
            assert!(line.len() < 256, "{line:?}");
        }
        assert!(line.starts_with(b"SSH-2.0-"), "{line:?}");
        assert_eq!(read_packet(&mut s).get(1), Some(&MSG_KEXINIT), "KEXINIT");
        s.write_all(&rawssh::packet(&kexinit)).unwrap();
        s.write_all(&rawssh::packet(&ecdh_init)).unwrap();
        let start = Instant::now();
        let reply = read_packet(&mut s);
        waits.push(start.elapsed());
        assert_eq!(
            reply.get(1),
            Some(&MSG_KEX_ECDH_REPLY),
            "ECDH_REPLY: {reply:?}"
        );
    }
    assert!(
        waits.iter().any(|d| *d < Duration::from_millis(15)),
        "the client's ECDH_INIT waited for the bastion's delayed ACK: {waits:?}"
    );
}
