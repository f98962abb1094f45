//! Rows T38–T41 of `docs/threats.md`: no unauthenticated client can starve, flood or
//! out-guess drawbridge. Each test runs the real binary (and, for the bastion, a real OpenSSH
//! client and sshd) and has a control that must pass alongside the attack.
//!
//! - T38: idle HTTPS connections (no byte after the handshake; HTTP/2 that only sends
//!   SETTINGS and answers PINGs) from a few addresses are closed, and capped per source,
//!   while `/healthz` answers from elsewhere;
//! - T39: 100 KB user names and a 60 KB certificate key id grow the audit log by a few
//!   KiB, not by what the client sent;
//! - T40: pre-auth SSH connections held from four addresses leave room for a login
//!   from a fifth, yet 200 `ssh -J` at once from one address all pass;
//! - T41: 30 concurrent wrong passwords for one user: at most the limit are tried.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::dmz;
use crate::support::drawbridge::{Drawbridge, PW};
use crate::support::idle_api::{Held, Idle, hold};
use crate::support::net::connect_from;
use crate::support::process::{Output, wait_until, wait_with_timeout};
use crate::support::ssh::Ca;
use crate::support::wire::threaded_runtime;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// T38: idle HTTPS connections.

#[test]
fn t38_idle_https_connections_are_closed_and_capped_per_source_while_healthz_answers() {
    // 16 connections in all, 4 per source: three sources trying 8 each would take every
    // slot without the per-source cap, and hold them for ever without the deadlines.
    let d = Drawbridge::start_with_api("max_connections = 16\nmax_connections_per_source = 4");
    assert_eq!(d.curl("/healthz", &[]).status, 200);
    let rt = threaded_runtime();
    let api = d.api;
    let plain = d.tls_client(&[b"h2", b"http/1.1"]);
    let h2 = d.tls_client(&[b"h2"]);
    let started = Instant::now();
    let tasks: Vec<_> = [
        ("127.0.1.1", false),
        ("127.0.1.2", false),
        ("127.0.1.3", true),
    ]
    .iter()
    .flat_map(|(from, is_h2)| {
        let cfg = if *is_h2 { h2.clone() } else { plain.clone() };
        (0..8).map(move |_| (ip(from), *is_h2, cfg.clone()))
    })
    .map(|(from, h2, cfg)| {
        rt.spawn(hold(
            api,
            cfg,
            from,
            Idle {
                h2,
                one_request: false,
            },
        ))
    })
    .collect();

    // The control: /healthz from 127.0.0.1 answers throughout, each within 5 s.
    let mut checks = 0;
    while started.elapsed() < Duration::from_secs(18) {
        let t = Instant::now();
        let r = d.curl("/healthz", &["--max-time", "5"]);
        assert_eq!(
            r.status,
            200,
            "/healthz did not answer after {:?} (took {:?})",
            started.elapsed(),
            t.elapsed()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(checks >= 10);

    let held: Vec<Held> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    eprintln!("{checks} /healthz answered; idle connections: {held:?}");
    let served = held.iter().filter(|h| **h != Held::NotServed).count();
    assert_eq!(
        served, 12,
        "4 connections per source should have been served: {held:?}"
    );
    for h in &held {
        match h {
            Held::NotServed => {}
            Held::Closed(after) => assert!(
                *after <= Duration::from_secs(15),
                "an idle connection was closed only after {after:?}: {held:?}"
            ),
            Held::StillOpen => panic!("an idle connection was never closed: {held:?}"),
        }
    }
    assert_eq!(d.curl("/healthz", &[]).status, 200);
}

#[test]
fn t38_keep_alive_and_http2_connections_idle_after_a_request_are_closed() {
    let d = Drawbridge::start_with_api("idle_timeout = \"3s\"");
    let rt = threaded_runtime();
    let (h1, h2) = (d.tls_client(&[b"http/1.1"]), d.tls_client(&[b"h2"]));
    let api = d.api;
    let held = rt.block_on(async move {
        let after_one = |h2| Idle {
            h2,
            one_request: true,
        };
        let a = tokio::spawn(hold(api, h1, ip("127.0.1.5"), after_one(false)));
        let b = tokio::spawn(hold(api, h2, ip("127.0.1.6"), after_one(true)));
        (a.await.unwrap(), b.await.unwrap())
    });
    eprintln!(
        "idle after one request: HTTP/1.1 {:?}, HTTP/2 {:?}",
        held.0, held.1
    );
    for h in [held.0, held.1] {
        match h {
            Held::Closed(after) => assert!(
                after <= Duration::from_secs(8),
                "closed only after {after:?} with idle_timeout 3s: {held:?}"
            ),
            other => panic!("an idle connection was not closed: {other:?} ({held:?})"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// T39: peer-chosen strings of 100 KB.

fn audit_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `POST /v1/login` over HTTP/1.1 as `user` with a wrong password, from our own TLS
/// client (curl stalls on a header this large); the status, or 0 when the server closed
/// without an answer.
fn login_as(d: &Drawbridge, rt: &tokio::runtime::Runtime, user: &str) -> u16 {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:wrong"));
    rt.block_on(request(d, "POST", "/v1/login", format!("Basic {basic}")))
}

/// One HTTP/1.1 request with `authorization` on its own TLS connection; the status, or 0
/// when the server closed without an answer.
async fn request(d: &Drawbridge, method: &str, path: &str, authorization: String) -> u16 {
    let cfg = d.tls_client(&[b"http/1.1"]);
    let api = d.api;
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls_pki_types::ServerName::from(api.ip()), tcp)
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: drawbridge\r\nAuthorization: {authorization}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Forged bearer tokens cost their sender nothing, so one source gets a budget of records
/// (32 at once, then 4 a second) and the rest are counted in `login.failed.repeated`: the
/// log grows by a few records a second, and no refusal goes unaccounted for.
#[test]
fn t39_a_flood_of_forged_bearer_tokens_from_one_source_is_recorded_as_counts() {
    let d = Drawbridge::start("");
    let rt = threaded_runtime();
    let token_records = |d: &Drawbridge| {
        d.events("login.failed")
            .into_iter()
            .filter(|r| r["method"] == "token")
            .count()
    };
    let before = token_records(&d);
    let started = Instant::now();
    let mut refused = 0;
    // 4 × 30 at once (under the per-source connection cap), each token different.
    for batch in 0..4 {
        let statuses: Vec<u16> = rt.block_on(async {
            let all = (0..30).map(|i| {
                let token = format!("Bearer forged.{batch}.{i}.{}", "x".repeat(200));
                request(&d, "GET", "/v1/ssh_config", token)
            });
            futures::future::join_all(all).await
        });
        for s in statuses {
            assert_eq!(s, 401, "a forged token was not refused with 401");
            refused += 1;
        }
    }
    let took = started.elapsed();
    let counted = |d: &Drawbridge| -> u64 {
        d.events("login.failed.repeated")
            .iter()
            .filter(|r| r["method"] == "token")
            .map(|r| r["repeats"].as_u64().unwrap_or(0))
            .sum()
    };
    // Every refusal is either a record or counted in a repeated record (written within
    // a second or so).
    wait_until(
        Duration::from_secs(5),
        || (token_records(&d) - before) as u64 + counted(&d) == refused,
        || {
            format!(
                "{refused} refusals, {} records, {} counted",
                token_records(&d) - before,
                counted(&d)
            )
        },
    );
    let recorded = token_records(&d) - before;
    let allowed = 32 + 4 * (took.as_secs() as usize + 2);
    assert!(
        recorded <= allowed && recorded < refused as usize,
        "{recorded} records for {refused} forged tokens in {took:?} (budget {allowed})"
    );
}

#[test]
fn t39_huge_user_names_and_key_ids_grow_the_audit_log_by_little() {
    let Some(b) = dmz::start() else {
        return;
    };
    b.d.add_user("alice", PW);
    let rt = threaded_runtime();
    // Let the start-up records settle, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let before = audit_len(&b.audit_path());

    // 12 logins with 100 KB user names, each different.
    for i in 0..12 {
        let name = format!("{i:02}{}", "\u{1}".repeat(100 * 1024));
        let status = login_as(&b.d, &rt, &name);
        assert!(
            matches!(status, 401 | 429 | 431),
            "login {i} with a 100 KB name: {status}"
        );
    }
    // 12 logins with 8 KB names (under the Authorization cap: decoded, refused, recorded).
    for i in 0..12 {
        let name = format!("{i:02}{}", "n".repeat(8 * 1024));
        let status = login_as(&b.d, &rt, &name);
        assert!(
            matches!(status, 401 | 429),
            "login {i} with an 8 KB name: {status}"
        );
    }

    // One SSH attempt with a self-signed certificate whose key id is 60 KB of \x01.
    let key = b.t.keygen("selfsigned");
    let self_ca = Ca { key: key.clone() };
    let key_id = "\u{1}".repeat(60 * 1000);
    self_ca.sign_user(&key.public(), &key_id, &["web-admin"], "-1m:+5m", 7, &[]);
    let out = b.client("selfsigned", &key).run(&["bastion", "whoami"]);
    assert!(!out.success(), "a self-signed certificate got in: {out:?}");
    let rec = b.expect_record("ssh.auth.failed", &[("reason", "untrusted-ca")]);

    let grown = audit_len(&b.audit_path()) - before;
    assert!(
        grown < 64 * 1024,
        "the audit log grew by {grown} bytes for 24 logins and one SSH attempt"
    );
    // What is kept is enough to tell the attempts apart.
    assert_eq!(rec["key_id_len"], 60_000, "{rec}");
    assert_eq!(rec["key_id_sha256"].as_str().unwrap().len(), 64, "{rec}");
    assert!(rec["key_id"].as_str().unwrap().len() <= 260, "{rec}");
    let cut: Vec<_> = b
        .records()
        .into_iter()
        .filter(|r| r["event"] == "login.failed" && r["user_len"] == 8 * 1024 + 2)
        .collect();
    assert!(!cut.is_empty(), "no 8 KB name recorded cut");
    for r in &cut {
        assert!(r["user"].as_str().unwrap().len() <= 260, "{r}");
    }
    eprintln!("audit log grew by {grown} bytes");
}

#[test]
fn t39_a_flood_of_refused_certificates_from_one_source_is_recorded_as_counts() {
    let Some(b) = dmz::start() else {
        return;
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = audit_len(&b.audit_path());
    // A self-signed certificate with a 4 KB key id of control bytes, tried by 40 clients
    // at once: 80 refusals (the certificate, then the OpenSSH client's fallback to the
    // bare key).
    let key = b.t.keygen("flood");
    let self_ca = Ca { key: key.clone() };
    self_ca.sign_user(
        &key.public(),
        &"\u{1}".repeat(4096),
        &["web-admin"],
        "-1m:+5m",
        9,
        &[],
    );
    let c = b.client("flood", &key);
    let started = Instant::now();
    let children: Vec<_> = (0..40)
        .map(|_| {
            c.command(&["bastion", "whoami"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for ch in children {
        assert!(!wait_with_timeout(ch, Duration::from_secs(60)).success());
    }
    let took = started.elapsed();
    let refused = b.refusals("untrusted-ca") + b.refusals("no-certificate");
    // Every refusal is on record, one by one or as a count, within about two seconds.
    let on_record = || {
        let records = b.records();
        let one_by_one = records
            .iter()
            .filter(|r| r["event"] == "ssh.auth.failed")
            .count() as u64;
        let counted: u64 = records
            .iter()
            .filter(|r| r["event"] == "ssh.auth.failed.repeated")
            .map(|r| r["repeats"].as_u64().unwrap())
            .sum();
        (one_by_one, counted)
    };
    wait_until(
        Duration::from_secs(5),
        || {
            let (a, b) = on_record();
            a + b == refused
        },
        || format!("{refused} refusals, on record {:?}", on_record()),
    );
    let (one_by_one, counted) = on_record();
    let grown = audit_len(&b.audit_path()) - before;
    eprintln!(
        "{refused} refusals in {took:?}: {one_by_one} records, {counted} counted; the log grew by {grown} bytes"
    );
    assert!(refused >= 40, "{refused}");
    assert!(
        one_by_one <= 32 + 4 * (took.as_secs() + 2),
        "{one_by_one} records for {refused} refusals in {took:?}"
    );
    assert!(grown < 64 * 1024, "the audit log grew by {grown} bytes");
    // /metrics shows the log's size (and, from the second scrape on, its growth rate).
    let size = b.metric("drawbridge_audit_log_bytes");
    assert!(size >= before + grown, "{size} < {}", before + grown);
    let text = b.d.curl("/metrics", &[]).text();
    assert!(
        text.contains("drawbridge_audit_log_growth_bytes_per_second")
            && text.contains("drawbridge_audit_disk_free_bytes"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// T40: fair pre-auth places at the bastion.

#[test]
fn t40_four_addresses_holding_preauth_places_leave_room_for_a_login() {
    let Some(b) = dmz::start() else {
        return;
    };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = b.client("alice", &alice);
    let addr = SocketAddr::from(([127, 0, 0, 1], b.port()));
    let rt = threaded_runtime();
    // 64 connections from each of 127.0.1.1–127.0.1.4 that read the banner and stall.
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for last in 1..=4u8 {
            for _ in 0..64 {
                if let Some(s) = connect_from(IpAddr::from([127, 0, 1, last]), addr).await {
                    held.push(s);
                }
            }
        }
        held
    });
    // Let the bastion take (or drop) them all.
    std::thread::sleep(Duration::from_millis(500));
    let active = b.metric("drawbridge_bastion_unauthenticated_active");
    let dropped = b.metric("drawbridge_bastion_connections_dropped_total");

    let started = Instant::now();
    let out = c.run(&["bastion", "whoami"]);
    let took = started.elapsed();
    assert!(
        out.success(),
        "login from 127.0.0.1 failed with {active} pre-auth connections held ({dropped} dropped): {out:?}"
    );
    assert!(took < Duration::from_secs(3), "login took {took:?}");
    eprintln!(
        "{} connections, {active} held, {dropped} dropped; login took {took:?}",
        held.len()
    );
    drop(held);
}

#[test]
fn t40_two_hundred_ssh_j_at_once_from_one_address_all_pass() {
    // Every limit is the default: one certificate holds all 200 connections, as an Ansible
    // control host with 200 forks does.
    let Some(b) = dmz::start_with("", &[]) else {
        return;
    };
    let alice = b.user("alice", "alice", &["web-admin"], "-1m:+5m", 1, &[]);
    let c = b.client("alice", &alice);
    let target = format!("web-1:{}", b.sshd.port);
    let started = Instant::now();
    let children: Vec<_> = (0..200)
        .map(|_| {
            c.command(&["-W", &target, "bastion"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| wait_with_timeout(ch, Duration::from_secs(60)))
        .collect();
    let took = started.elapsed();
    let failed: Vec<_> = outs.iter().filter(|o| !o.success()).collect();
    let dropped = b.metric("drawbridge_bastion_connections_dropped_total");
    let ok = b.metric("drawbridge_bastion_auth_ok_total");
    eprintln!(
        "200 ssh -W in {took:?}: {} failed, {dropped} dropped, {ok} authenticated",
        failed.len()
    );
    assert_eq!(dropped, 0, "connections refused before authentication");
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

// ---------------------------------------------------------------------------------------
// T41: concurrent wrong passwords.

#[test]
fn t41_thirty_concurrent_wrong_passwords_try_at_most_the_limit() {
    let d = Drawbridge::start("[login]\nmax_failures = 5\nwindow = \"1m\"\nhash_queue = 64\n");
    d.add_user("alice", PW);
    let url = d.url("/v1/login");
    let children: Vec<_> = (0..30)
        .map(|i| {
            // From different addresses, so only the per-user limit can stop them.
            Command::new("curl")
                .args(["--silent", "--max-time", "60", "--cacert"])
                .arg(d.cacert())
                .args(["--interface", &format!("127.0.2.{}", i + 1)])
                .args(["-u", &format!("alice:wrong{i}"), "-X", "POST"])
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .arg(&url)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<u16> = children
        .into_iter()
        .map(|ch| {
            let out = wait_with_timeout(ch, Duration::from_secs(90));
            assert!(!out.timed_out, "curl did not finish within 90 s");
            out.stdout.trim().parse().unwrap_or(0)
        })
        .collect();
    let tried = codes.iter().filter(|c| **c == 401).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    eprintln!("30 concurrent wrong passwords: {tried} × 401, {limited} × 429");
    assert!(
        tried <= 5,
        "{tried} passwords tried with a limit of 5: {codes:?}"
    );
    assert_eq!(tried + limited, 30, "{codes:?}");
    // The right password is refused too while the user is over the limit.
    let r = d.curl("/v1/login", &["-u", &format!("alice:{PW}"), "-X", "POST"]);
    assert_eq!(r.status, 429, "{}", r.text());
}
