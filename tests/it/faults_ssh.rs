//! docs/threats.md, "Faults and load", the rows the SSH side shows through the real binary
//! (`support::dmz`): F1 (a flood of stalled unauthenticated connections), F2 (login grace),
//! F3 (idle timeout), F4 (channels per connection), F5 (targets down or dropping
//! packets), F7 (client clock skew) and F11 (a slow-reading target). Every wait is
//! bounded; time bounds are the ones docs/threats.md states.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::support::dmz::{self, Bastion};
use crate::support::drawbridge::PW;
use crate::support::net::{Sink, connect_from_blocking, time_to_close};
use crate::support::process::wait_until;
use crate::support::ssh::{fingerprint, refused};
use crate::support::wire::{self, bounded};

fn with_role(bld: &mut ssh_key::certificate::Builder) {
    bld.valid_principal("web-admin").unwrap();
}

fn bastion_addr(b: &Bastion) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], b.port()))
}

/// What the bastion sent first on `s` within 5 s ("" when it closed without a banner).
fn banner(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Waits until the bastion holds no unauthenticated connection (the readiness probes of
/// the harness took a slot for a moment).
fn wait_unauth_idle(b: &Bastion) {
    wait_until(
        Duration::from_secs(10),
        || b.metric("drawbridge_bastion_unauthenticated_active") == 0,
        || "unauthenticated connections still held".to_string(),
    );
}

// ---------------------------------------------------------------------------------------
// F1

#[test]
fn f01_stalled_unauthenticated_flood_capped_at_accept_and_logins_from_elsewhere_succeed() {
    let Some(b) = dmz::start_with(
        "max_unauthenticated = 8\nmax_unauthenticated_per_source = 3",
        &[],
    ) else {
        return;
    };
    wait_unauth_idle(&b);
    let addr = bastion_addr(&b);
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = b.client("alice", &alice);

    // 1,000 connections from 127.0.0.1 that stall after the banner.
    let mut flood: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap())
        .collect();
    let served: Vec<usize> = flood
        .iter_mut()
        .map(banner)
        .enumerate()
        .filter(|(_, b)| b.starts_with("SSH-2.0-drawbridge"))
        .map(|(i, _)| i)
        .collect();
    // The per-source cap: 3 got a banner, the rest were closed at accept without one.
    assert_eq!(
        served.len(),
        3,
        "connections past the per-source cap were served: {served:?}"
    );
    assert!(b.metric("drawbridge_bastion_connections_dropped_total") >= 997);
    assert_eq!(b.metric("drawbridge_bastion_unauthenticated_active"), 3);

    // A login from elsewhere (127.0.0.2) while the flood holds its places: within 3 s.
    let started = Instant::now();
    let out = c.run(&["-o", "BindAddress=127.0.0.2", "bastion", "whoami"]);
    let took = started.elapsed();
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("from:        127.0.0.2"), "{out:?}");
    assert!(took < Duration::from_secs(3), "login took {took:?}");
    let rec = b.expect_record("ssh.auth.ok", &[("serial", "1")]);
    assert!(
        rec["peer"].as_str().unwrap().starts_with("127.0.0.2:"),
        "{rec}"
    );

    // The global cap: 3 (127.0.0.1) + 3 (127.0.0.3) + 2 (127.0.0.4) = 8 held, the table
    // full. A connection from a fourth address holds less than its share (8 places / 4
    // sources = 2), so it is not dropped: it takes the place of the oldest stalled
    // connection of the biggest holder (127.0.0.1 and 127.0.0.3 hold 3 each; among equals
    // the one waiting longest, the flood).
    let mut more: Vec<TcpStream> = (0..3)
        .map(|_| connect_from_blocking([127, 0, 0, 3], addr))
        .chain((0..2).map(|_| connect_from_blocking([127, 0, 0, 4], addr)))
        .collect();
    for s in &mut more {
        assert!(banner(s).starts_with("SSH-2.0-drawbridge"));
    }
    assert_eq!(b.metric("drawbridge_bastion_unauthenticated_active"), 8);
    let mut newcomer = connect_from_blocking([127, 0, 0, 5], addr);
    let first = banner(&mut newcomer);
    assert!(
        first.starts_with("SSH-2.0-drawbridge"),
        "127.0.0.5, below its share, was not served with the table full: {first:?}"
    );
    wait_until(
        Duration::from_secs(5),
        || b.refusals("pre-auth-evicted") >= 1,
        || "no connection was evicted for 127.0.0.5".to_string(),
    );
    assert_eq!(b.refusals("pre-auth-evicted"), 1, "one place, one eviction");
    assert_eq!(b.metric("drawbridge_bastion_unauthenticated_active"), 8);
    // The one evicted is the flood's oldest: the bastion closed it; every other place
    // (the flood's other two, 127.0.0.3's and 127.0.0.4's) is still held.
    let open_after = |s: &mut TcpStream, limit| {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        time_to_close(s, limit).is_none()
    };
    let closed: Vec<usize> = served
        .iter()
        .copied()
        .filter(|&i| !open_after(&mut flood[i], Duration::from_secs(1)))
        .collect();
    assert_eq!(
        closed,
        vec![served[0]],
        "not the oldest of the biggest holder evicted (served {served:?})"
    );
    for s in &mut more {
        assert!(
            open_after(s, Duration::from_millis(300)),
            "a connection of a source within its share was closed"
        );
    }

    // The flood leaves no audit record (it must not drive the log).
    assert!(b.find("ssh.auth.failed", &[]).is_empty());
    // Places are given back: a login from 127.0.0.1 works once the flood is gone.
    drop(flood);
    drop(more);
    drop(newcomer);
    wait_unauth_idle(&b);
    let out = c.run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
    // Refused at the cap: the flood past its 3 places, and nothing else.
    assert_eq!(b.refusals("pre-auth-cap"), 997);
}

// ---------------------------------------------------------------------------------------
// F2

#[test]
fn f02_dribbling_or_never_authenticating_clients_closed_at_login_grace() {
    let Some(b) = dmz::start_with("login_grace_time = \"3s\"", &[]) else {
        return;
    };
    wait_unauth_idle(&b);
    let addr = bastion_addr(&b);
    let grace = Duration::from_secs(3);
    let limit = Duration::from_secs(15);

    // Silent: connects and never sends a byte.
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        time_to_close(&mut s, limit)
    });
    // A dribbler: our identification string one byte every 200 ms, never finished.
    let dribbler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let started = Instant::now();
        for byte in b"SSH-2.0-".iter().cycle() {
            if started.elapsed() > limit {
                return None;
            }
            if s.write_all(&[*byte]).is_err() {
                return Some(started.elapsed());
            }
            // One read of at most 200 ms between bytes.
            if time_to_close(&mut s, Duration::from_millis(150)).is_some() {
                return Some(started.elapsed());
            }
        }
        None
    });
    // Key exchange done, never authenticates (russh client).
    let port = b.port();
    let never = std::thread::spawn(move || {
        let rt = wire::threaded_runtime();
        rt.block_on(async {
            let started = Instant::now();
            let h = wire::connect(port).await;
            while !h.is_closed() {
                if started.elapsed() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(started.elapsed())
        })
    });
    for (what, t) in [
        ("silent", silent),
        ("dribbler", dribbler),
        ("no auth", never),
    ] {
        let took = t.join().unwrap();
        let took = took.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(
            took >= grace - Duration::from_millis(500) && took < grace + Duration::from_secs(5),
            "{what}: closed after {took:?}, the grace is {grace:?}"
        );
    }
    wait_until(
        Duration::from_secs(5),
        || b.metric("drawbridge_bastion_login_grace_expired_total") >= 3,
        || "login grace expiries not counted".to_string(),
    );
    // Nothing was authenticated or audited for them; a real login still works.
    assert!(b.find("ssh.auth.ok", &[]).is_empty());
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let out = b.client("alice", &alice).run(&["bastion", "whoami"]);
    assert!(out.success(), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// F3

#[test]
fn f03_authenticated_without_a_channel_closed_at_idle_timeout() {
    let Some(b) = dmz::start_with("idle_timeout = \"2s\"", &[]) else {
        return;
    };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = b.client("alice", &alice);
    // -N: authenticated, no channel at all.
    let started = Instant::now();
    let out = c.run(&["-N", "bastion"]);
    let took = started.elapsed();
    assert!(!out.timed_out, "{out:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "closed after {took:?}, the idle timeout is 2 s: {out:?}"
    );
    let ok = b.expect_record("ssh.auth.ok", &[("key_id", "alice")]);
    assert_eq!(ok["serial"], 1);
    assert!(b.find("forward.opened", &[]).is_empty());
}

// ---------------------------------------------------------------------------------------
// F4

#[test]
fn f04_more_than_10_channels_refused() {
    let Some(b) = dmz::start() else { return };
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let cert = wire::cert_with(&ca, &user, "alice", 4, now - 60, now + 300, with_role);
    let rt = wire::runtime();
    rt.block_on(async {
        let (h, ok) = bounded(wire::login(b.port(), &user, cert)).await;
        assert!(ok, "a good certificate was refused");
        // The default cap: 10 channels at once (forwards and sessions alike).
        let mut held = Vec::new();
        for _ in 0..9 {
            let ch = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1))
                .await
                .expect("forward under the cap");
            held.push(ch);
        }
        let session = bounded(h.channel_open_session())
            .await
            .expect("session under the cap");
        let over = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1)).await;
        assert!(over.is_err(), "an 11th channel opened past the cap of 10");
        let over = bounded(h.channel_open_session()).await;
        assert!(over.is_err(), "an 11th session opened past the cap of 10");
        // The connection stays usable: close one, open again.
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
        drop(session);
        drop(held);
    });
    let rec = b.expect_record(
        "forward.refused",
        &[("reason", "too-many-channels"), ("key_id", "alice")],
    );
    assert_eq!(rec["host"], "web-1");
    // Refused before any policy question: the config key, under the version in force.
    assert_eq!(rec["rule"], "ssh.max_channels_per_connection", "{rec}");
    assert!(
        rec["policy_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{rec}"
    );
    assert_eq!(b.find("forward.opened", &[("serial", "4")]).len(), 10);
    assert!(b.refusals("too-many-channels") >= 2);
}

// ---------------------------------------------------------------------------------------
// F5

/// A listener whose accept queue is full and never drained: further SYNs are dropped, as
/// by a firewall that drops packets. Holds its filler connections.
struct Blackhole {
    _listener: tokio::net::TcpListener,
    _fillers: Vec<TcpStream>,
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn blackhole() -> Blackhole {
    let rt = wire::runtime();
    let listener = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        sock.listen(1).unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    Blackhole {
        _listener: listener,
        _fillers: fillers,
        addr,
        _rt: rt,
    }
}

#[test]
fn f05_target_down_or_dropping_packets_fails_the_channel_open_within_5s_connection_stays_up() {
    let hole = blackhole();
    let down = crate::support::ports::free_port();
    let Some(b) = dmz::start_with(
        "connect_timeout = \"3s\"",
        &[
            ("down", format!("127.0.0.1:{down}")),
            ("blackhole", hole.addr.to_string()),
        ],
    ) else {
        return;
    };
    let ca = b.ca_key();
    let user = wire::read_key(&b.t.keygen("wire").path);
    let now = wire::now();
    let cert = wire::cert_with(&ca, &user, "alice", 5, now - 60, now + 300, with_role);
    let rt = wire::runtime();
    rt.block_on(async {
        let (h, ok) = bounded(wire::login(b.port(), &user, cert)).await;
        assert!(ok);
        for target in ["down", "blackhole"] {
            let started = Instant::now();
            let r = bounded(h.channel_open_direct_tcpip(target, 22, "127.0.0.1", 1)).await;
            let took = started.elapsed();
            assert!(r.is_err(), "{target}: the channel opened");
            assert!(
                took < Duration::from_secs(5),
                "{target}: failed after {took:?}"
            );
            // The SSH connection stays up: a forward to a live host on it works.
            let ch = bounded(h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 1))
                .await
                .unwrap_or_else(|e| panic!("after {target}: {e:?}"));
            drop(ch);
        }
    });
    // The forward was decided and recorded before the dial: a failed dial ends it with
    // `forward.closed` (`end` = the failure), after its `forward.opened`; it is no refusal.
    for (target, end) in [("down", "connect-failed"), ("blackhole", "connect-timeout")] {
        let fields = [("target", target), ("serial", "5")];
        let opened = b.expect_record("forward.opened", &fields);
        let closed = b.expect_record("forward.closed", &[("end", end), fields[0], fields[1]]);
        assert_eq!(closed["reason"], end, "{closed}");
        assert!(
            closed["message"].as_str().unwrap().starts_with(target),
            "{closed}"
        );
        assert_eq!(closed["bytes_client_to_target"], 0, "{closed}");
        let records = b.records();
        let at = |r: &serde_json::Value| records.iter().position(|x| x == r).unwrap();
        assert!(at(&opened) < at(&closed), "{opened} after {closed}");
        assert!(
            b.find("forward.refused", &[("target", target)]).is_empty(),
            "{target}: a failed dial recorded as a refusal"
        );
    }
    // What the OpenSSH user sees.
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 6, &[]);
    let c = b.client("alice", &alice);
    let out = c.run(&["-W", "down:22", "bastion"]);
    refused(&out);
    assert!(out.stderr.contains("down: cannot connect"), "{out:?}");
    let out = c.run(&["-W", "blackhole:22", "bastion"]);
    refused(&out);
    assert!(
        out.stderr.contains("blackhole: no answer within 3s"),
        "{out:?}"
    );
    assert!(b.refusals("connect-timeout") >= 2);
    assert!(b.refusals("connect-failed") >= 2);
}

// ---------------------------------------------------------------------------------------
// F7

#[test]
fn f07_certificates_usable_with_clocks_60s_off() {
    let Some(b) = dmz::start() else { return };
    b.d.add_user("alice", PW);
    let key = b.t.keygen("alice");
    let data = format!("@{}", key.public().display());
    let r = b.d.curl(
        "/v1/certs",
        &["-u", &format!("alice:{PW}"), "--data-binary", &data],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(key.cert(), &r.body).unwrap();
    let cert = ssh_key::Certificate::from_openssh(r.text().trim()).unwrap();
    let now = wire::now();
    // Backdated by the skew allowance.
    let backdated = now.saturating_sub(cert.valid_after());
    assert!(
        (58..=90).contains(&backdated),
        "valid_after is {backdated} s before now"
    );
    // The bastion's own check, made at the time of a verifier 60 s behind or ahead.
    let trusted = drawbridge::bastion::TrustedCas::new(&[ssh_key::PublicKey::read_openssh_file(
        b.user_ca.public(),
    )
    .unwrap()]);
    let verify = |at: SystemTime, c: &ssh_key::Certificate| {
        drawbridge::bastion::verify_certificate(
            c,
            &trusted,
            &drawbridge::policy::Policy::default(),
            "127.0.0.1".parse().unwrap(),
            at,
            Duration::from_secs(3660),
        )
    };
    let t = SystemTime::now();
    for skew in [-58i64, 0, 60] {
        let at = if skew < 0 {
            t - Duration::from_secs(skew.unsigned_abs())
        } else {
            t + Duration::from_secs(skew as u64)
        };
        assert!(verify(at, &cert).is_ok(), "refused {skew} s off");
    }
    // Without the backdating, a verifier 58 s behind would refuse it.
    let ca = b.ca_key();
    let unskewed = wire::cert_with(
        &ca,
        &wire::read_key(&key.path),
        "alice",
        7,
        now,
        now + 300,
        with_role,
    );
    assert_eq!(
        verify(t - Duration::from_secs(58), &unskewed),
        Err(drawbridge::bastion::Refusal::NotYetValid)
    );
    // And the issued certificate works end to end at once.
    let out = b.client("alice", &key).run(&["web-1", "echo", "ok"]);
    assert!(out.success(), "{out:?}");
    b.expect_record("ssh.auth.ok", &[("key_fingerprint", &fingerprint(&key))]);
}

// ---------------------------------------------------------------------------------------
// F11

#[test]
fn f11_slow_reading_target_memory_bounded() {
    // A target that accepts and never reads.
    let sink = Sink::start();
    let Some(b) = dmz::start_with("", &[("sink", sink.addr.to_string())]) else {
        return;
    };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 11, &[]);
    let c = b.client("alice", &alice);
    let before = b.rss_kib();

    const TOTAL: u64 = 256 * 1024 * 1024;
    let mut forward = c.hold_forward("sink:22");
    let mut stdin = forward.stdin.take().unwrap();
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
    let grown_mib = b.rss_kib().saturating_sub(before) / 1024;
    let to_target = b.metric("drawbridge_bastion_bytes_client_to_target_total");
    drop(forward);
    let _ = writer.join();
    drop(sink);
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
    b.expect_record("forward.opened", &[("target", "sink"), ("serial", "11")]);
}
