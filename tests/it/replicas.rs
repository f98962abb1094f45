//! Three `drawbridge serve` replicas sharing `ca/` and a PostgreSQL cluster, behind
//! HAProxy (TCP mode for the API and for SSH, health checked on `/healthz`): what one
//! replica decides holds on all (login lockouts, the per-user connection cap), every
//! replica's chain is complete, a killed replica loses no record of the others and its
//! rows expire, and a database outage fails closed and heals by itself (T52, T53); with
//! the policy from signed Git commits, every replica applies a signed commit (cutting its
//! own forwards) and refuses the unsigned and the forged (T51).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::audit::record_time as ts;
use crate::support::dmz::{Dmz, write_dmz_policy};
use crate::support::drawbridge::{Drawbridge, PW};
use crate::support::haproxy::Haproxy;
use crate::support::postgres::Postgres;
use crate::support::process::{run_with_timeout, wait_until};
use crate::support::signed_git::{Signers, commit_signed, commit_unsigned, init};
use crate::support::ssh::{Key, SshClient, TestDir};

/// The replicas, their database and load balancer, and the DMZ behind them.
struct Replicas {
    lb: Haproxy,
    r: Vec<Drawbridge>,
    dmz: Dmz,
    pg: Postgres,
    ca: PathBuf,
}

const N: usize = 3;

fn start(ssh_extra: &str) -> Replicas {
    start_full(ssh_extra, None, "").0
}

/// The replicas with `[policy] git` naming one repository (r1's `policies/` folder made a
/// Git work tree, polled every 200 ms) and `signers`' allowed_signers file; the first
/// commit (signed by alice) is in force at start.
fn start_git(signers: &Signers) -> (Replicas, String) {
    let (reps, first) = start_full("", Some(signers), "");
    (reps, first.unwrap_or_default())
}

/// The replicas; `extra` is appended to every replica's drawbridge.toml (e.g. an
/// `[[oidc]]` block).
fn start_full(ssh_extra: &str, git: Option<&Signers>, extra: &str) -> (Replicas, Option<String>) {
    let pg = Postgres::start();
    let t = TestDir::new();
    let mut r = Vec::new();
    let first = Drawbridge::prepare_with_ssh(&[], "", ssh_extra);
    let (code, out, err) = first.cli(&["ca", "init"], None);
    assert_eq!(code, 0, "ca init: {out}{err}");
    let ca = first.path().join("ca");
    let trusted = ca.join("trusted_user_ca_keys.pub");
    let dmz = Dmz::start(
        t,
        first.ca("user_ca"),
        first.ca("host_ca"),
        &trusted,
        &first.path().join("policies"),
    );
    // One repository for all replicas, each fetching it into its own bare clone.
    let repo = dmz.policy_dir.clone();
    let first_commit = git.map(|signers| {
        init(&repo);
        commit_signed(&repo, &signers.alice, "the first policy")
    });
    let policy = git
        .map(|signers| {
            format!(
                "[policy]\ngit = \"{}\"\nref = \"main\"\npoll = \"200ms\"\nallowed_signers = \"{}\"\n\n",
                repo.display(),
                signers.allowed.display()
            )
        })
        .unwrap_or_default();
    let mut first = Some(first);
    for i in 1..=N {
        // r1 is the folder `ca init` ran in (its `ca/` is the one the others use).
        let mut d = first
            .take()
            .unwrap_or_else(|| Drawbridge::prepare_with_ssh(&[], "", ssh_extra));
        // One `ca/` (and users file) for all; a state section naming the replica.
        let state = pg.state_config(d.path(), &format!("r{i}"), "3s");
        let shared = if i == 1 {
            format!("{policy}{state}")
        } else {
            format!(
                "[paths]\nca = \"{}\"\nusers = \"{}\"\n\n{policy}{state}",
                ca.display(),
                ca.join("users.toml").display()
            )
        };
        let cfg = d.path().join("drawbridge.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}\n{shared}\n{extra}")).unwrap();
        write_dmz_policy(
            &d.path().join("policies"),
            dmz.sshd.port,
            dmz.dead_port,
            true,
            &[],
        );
        d.launch(&[]);
        r.push(d);
    }
    let lb = Haproxy::start(&r.iter().map(|d| (d.api, d.ssh)).collect::<Vec<_>>());
    let reps = Replicas { lb, r, dmz, pg, ca };
    reps.wait_all_up();
    (reps, first_commit)
}

impl Replicas {
    fn cacert(&self) -> PathBuf {
        self.ca.join("tls.crt")
    }

    /// curl against `https://127.0.0.1:PORT{path}`: (status, body).
    fn curl_at(&self, port: u16, path: &str, args: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
            .arg(self.cacert())
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("https://127.0.0.1:{port}{path}"));
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `POST /v1/certs` through the load balancer as `user` with `password`.
    fn issue(&self, user: &str, password: &str, key: &Path) -> (u16, String) {
        let auth = format!("{user}:{password}");
        let data = format!("@{}", key.display());
        self.curl_at(
            self.lb.api,
            "/v1/certs",
            &["-u", &auth, "--data-binary", &data],
        )
    }

    fn healthz(&self, i: usize) -> u16 {
        self.curl_at(self.r[i].api.port(), "/healthz", &[]).0
    }

    fn wait_all_up(&self) {
        // Through the balancer, every replica answers once HAProxy's checks passed.
        wait_until(
            Duration::from_secs(15),
            || (0..self.r.len()).all(|i| self.healthz(i) == 200),
            || "a replica is not healthy".into(),
        );
        std::thread::sleep(Duration::from_millis(800));
    }

    /// Replica `i`'s chain, read back from PostgreSQL with `audit export`.
    fn chain(&self, i: usize) -> Vec<Value> {
        // Replica r1 is never the one killed.
        let (code, out, err) = self.r[0].cli(
            &["audit", "export", "--replica", &format!("r{}", i + 1)],
            None,
        );
        assert_eq!(code, 0, "audit export: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Replica `i`'s records `event` whose fields equal `fields`.
    fn find(&self, i: usize, event: &str, fields: &[(&str, &str)]) -> Vec<Value> {
        self.chain(i)
            .into_iter()
            .filter(|r| r["event"] == event && fields.iter().all(|(k, v)| r[*k] == *v))
            .collect()
    }

    /// The first such record in replica `i`'s chain, waiting up to `limit` for it.
    #[track_caller]
    fn expect(&self, i: usize, event: &str, fields: &[(&str, &str)], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = self.find(i, event, fields).into_iter().next() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} {fields:?} in r{}'s chain after {limit:?}; its log: {}",
                i + 1,
                self.r[i].server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn count(&self, i: usize, event: &str) -> usize {
        self.chain(i).iter().filter(|r| r["event"] == event).count()
    }

    fn verify_postgres(&self) -> (i32, String) {
        let (code, out, err) = self.r[0].cli(&["audit", "verify-postgres"], None);
        (code, out + &err)
    }

    fn client(&self, name: &str, key: &Key) -> SshClient {
        self.dmz.client(name, self.lb.ssh, key)
    }

    /// Rows of a table in the shared database, counted by `psql`-free SQL through the
    /// service's own client library.
    fn rows(&self, sql: &str) -> i64 {
        let url = self.pg.url();
        let sql = sql.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut cfg: tokio_postgres::Config = url.parse().unwrap();
            cfg.password(crate::support::postgres::PASSWORD);
            let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c.query_one(sql.as_str(), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        })
    }
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

fn serial_of(cert_line: &str) -> u64 {
    ssh_key::Certificate::from_openssh(cert_line.trim())
        .unwrap_or_else(|e| panic!("not a certificate ({e}): {cert_line}"))
        .serial()
}

/// Issuance and `ssh -J` through the balancer reach all three replicas; five wrong
/// passwords spread over them lock the user on every one; the per-user connection cap
/// counts connections on all replicas; every chain verifies.
#[test]
fn three_replicas_share_lockouts_and_the_connection_cap() {
    let reps = start("max_connections_per_user = 2");
    reps.r[0].add_user("alice", PW);
    reps.r[0].add_user("dave", PW);
    let key = crate::support::ssh::keygen(&reps.r[0].path().join("alice_key"), "ed25519");

    // Issuance spread over the replicas.
    for _ in 0..6 {
        let (status, body) = reps.issue("alice", PW, &key.public());
        assert_eq!(status, 200, "{body}");
        serial_of(&body);
    }
    for i in 0..N {
        assert!(
            reps.count(i, "cert.issued") >= 1,
            "replica r{} issued nothing: HAProxy did not spread",
            i + 1
        );
    }

    // ssh -J through the balancer, spread over the replicas.
    let carol = reps
        .dmz
        .user("carol", "carol", &["web-admin"], "-1m:+10m", 11, &[]);
    let client = reps.client("carol", &carol);
    for _ in 0..3 {
        let out = client.run(&["web-1", "echo", "ok"]);
        assert!(out.success(), "{out:?}");
    }
    for i in 0..N {
        assert!(
            reps.count(i, "ssh.auth.ok") >= 1,
            "no SSH login reached r{}",
            i + 1
        );
    }

    // A replica's chain exported from PostgreSQL is a file `audit verify` and `audit
    // search` read as they read the file log.
    let export = reps.r[0].path().join("r2-export.log");
    let (code, _, err) = reps.r[0].cli(
        &[
            "audit",
            "export",
            "--replica",
            "r2",
            "-o",
            export.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "audit export: {err}");
    let (code, out, err) = reps.r[0].cli(&["audit", "verify", export.to_str().unwrap()], None);
    assert_eq!(code, 0, "audit verify of the export: {out}{err}");
    let (code, out, err) = reps.r[0].cli(
        &[
            "audit",
            "search",
            "--json",
            "--event",
            "ssh.auth.ok",
            "--user",
            "carol",
            export.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "audit search of the export: {err}");
    let found: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), reps.find(1, "ssh.auth.ok", &[]).len(), "{out}");
    assert!(
        !found.is_empty() && found.iter().all(|r| r["key_id"] == "carol"),
        "{out}"
    );

    // Five wrong passwords over the balancer (round robin: every replica sees some) lock
    // dave on every replica, even with the right password.
    for _ in 0..5 {
        let (status, _) = reps.issue("dave", "wrong-password", &key.public());
        assert_eq!(status, 401);
    }
    for i in 0..N {
        let auth = format!("dave:{PW}");
        let data = format!("@{}", key.public().display());
        let (status, body) = reps.curl_at(
            reps.r[i].api.port(),
            "/v1/certs",
            &["-u", &auth, "--data-binary", &data],
        );
        assert_eq!(status, 429, "dave is not locked on r{}: {body}", i + 1);
    }

    // The cap of two connections per user holds across replicas: two held forwards (on
    // two replicas), and a third connection, on the third replica, is refused.
    let f1 = client.hold_forward("web-1:22");
    let f2 = client.hold_forward("web-1:22");
    assert!(f1.first_bytes(Duration::from_secs(10)).starts_with("SSH-"));
    assert!(f2.first_bytes(Duration::from_secs(10)).starts_with("SSH-"));
    let third = client.run(&["web-1", "echo", "ok"]);
    assert!(
        !third.success(),
        "a third connection of carol was let in with two open on other replicas: {third:?}"
    );
    let refusals: usize = (0..N)
        .map(|i| {
            reps.chain(i)
                .iter()
                .filter(|r| {
                    r["event"] == "ssh.auth.failed" && r["reason"] == "too-many-connections"
                })
                .count()
        })
        .sum();
    assert!(refusals >= 1, "the refusal was not audited");
    drop(f1);
    drop(f2);
    // Places are given back when the connections end.
    wait_until(
        Duration::from_secs(10),
        || client.run(&["web-1", "echo", "ok"]).success(),
        || "carol could not connect again after her connections ended".into(),
    );

    let (code, out) = reps.verify_postgres();
    assert_eq!(code, 0, "{out}");
    for i in 1..=N {
        assert!(out.contains(&format!("r{i}: ok")), "{out}");
    }
    for i in 0..N {
        let problems = crate::support::audit::schema_problems(&reps.chain(i));
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

/// T53 then T52: a replica killed with `kill -9` under load; the others keep serving, every
/// answered certificate's record is in a chain, the dead replica's forward rows expire.
/// Then PostgreSQL stops: issuance and new SSH connections are refused within 1 s, the
/// replicas report it on `/healthz`, open forwards go on; it starts again and service
/// resumes with no restart, every chain verifying.
#[test]
fn a_killed_replica_and_a_database_outage() {
    let reps = start("");
    reps.r[0].add_user("alice", PW);
    let key = crate::support::ssh::keygen(&reps.r[0].path().join("alice_key"), "ed25519");
    let carol = reps
        .dmz
        .user("carol", "carol", &["web-admin"], "-1m:+10m", 12, &[]);
    let client = reps.client("carol", &carol);

    // One held forward per replica (round robin).
    let held: Vec<_> = (0..N).map(|_| client.hold_forward("web-1:22")).collect();
    for h in &held {
        assert!(h.first_bytes(Duration::from_secs(10)).starts_with("SSH-"));
    }
    wait_until(
        Duration::from_secs(5),
        || reps.rows("SELECT count(*) FROM open_forwards WHERE replica = 'r3'") >= 1,
        || {
            format!(
                "r3 holds no forward row ({} rows in all); r3's log: {}",
                reps.rows("SELECT count(*) FROM open_forwards"),
                reps.r[2].server_log()
            )
        },
    );

    assert!(reps.rows("SELECT count(*) FROM ssh_connections WHERE replica = 'r3'") >= 1);

    // Load: issuance through the balancer while r3 is killed.
    let mut serials = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if !killed && started.elapsed() > Duration::from_secs(1) {
            kill9(reps.r[2].pid().unwrap());
            killed = true;
        }
        let (status, body) = reps.issue("alice", PW, &key.public());
        if status == 200 {
            serials.push(serial_of(&body));
        } else {
            failed += 1;
        }
    }
    assert!(
        serials.len() >= 10,
        "too few certificates: {} ({failed} failed)",
        serials.len()
    );
    // After the kill HAProxy redispatches: the last seconds were all served.
    for _ in 0..5 {
        let (status, body) = reps.issue("alice", PW, &key.public());
        assert_eq!(status, 200, "{body}");
        serials.push(serial_of(&body));
    }
    let mut recorded = std::collections::HashSet::new();
    for i in 0..N {
        for r in reps.chain(i) {
            if r["event"] == "cert.issued" {
                recorded.insert(r["serial"].as_u64().unwrap_or(0));
            }
        }
    }
    for s in &serials {
        assert!(
            recorded.contains(s),
            "certificate {s} was answered with no record committed"
        );
    }
    // The dead replica's rows expire with its lease (3 s).
    wait_until(
        Duration::from_secs(8),
        || {
            reps.rows("SELECT count(*) FROM open_forwards WHERE replica = 'r3'") == 0
                && reps.rows("SELECT count(*) FROM ssh_connections WHERE replica = 'r3'") == 0
        },
        || "r3's forward and connection rows did not expire".into(),
    );
    assert!(reps.rows("SELECT count(*) FROM open_forwards WHERE replica <> 'r3'") >= 1);

    // The database stops.
    let mut survivors = Vec::new();
    for mut h in held {
        if !h.ended_within(Duration::ZERO) {
            survivors.push(h);
        }
    }
    assert!(!survivors.is_empty());
    reps.pg.stop();
    let t0 = Instant::now();
    // curl's own timings: from the request sent (TLS done) to the first byte of the
    // answer is the replica's time to refuse, whatever curl's start costs on a loaded
    // machine.
    let (status, body) = reps.curl_at(
        reps.r[0].api.port(),
        "/v1/certs",
        &[
            "-u",
            &format!("alice:{PW}"),
            "--data-binary",
            &format!("@{}", key.public().display()),
            "-w",
            // (replaces curl_at's own -w, keeping its last line: the status)
            "\n%{time_appconnect} %{time_starttransfer}\n%{http_code}",
        ],
    );
    let took = t0.elapsed();
    let (body, timings) = body.rsplit_once('\n').unwrap_or((&body, ""));
    let t: Vec<f64> = timings
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(t.len(), 2, "curl timings: {timings:?}");
    let refused_in = t[1] - t[0];
    assert_eq!(status, 503, "{body}");
    assert!(
        refused_in < 1.0,
        "the replica took {refused_in:.3} s to refuse (curl in all: {took:?})"
    );
    assert!(
        body.contains("state_unavailable") || body.contains("audit_unavailable"),
        "{body}"
    );
    // Health says why, on every surviving replica.
    for i in 0..2 {
        let (code, health) = reps.curl_at(reps.r[i].api.port(), "/healthz", &[]);
        assert_eq!(code, 503, "r{} says healthy with the database down", i + 1);
        assert!(
            health.contains("state_unavailable") && health.contains("PostgreSQL"),
            "r{}'s /healthz does not say why: {health}",
            i + 1
        );
    }
    let t0 = Instant::now();
    let out = reps
        .dmz
        .client("carol2", reps.r[0].ssh.port(), &carol)
        .run(&["web-1", "echo", "ok"]);
    assert!(
        !out.success(),
        "a new SSH connection was let in with the database down"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // With a reason, in the client's words (through -J: the jump's `ssh` says it).
    let said = "the shared state database cannot be reached; new connections are refused";
    assert!(out.stderr.contains(said), "ssh said: {}", out.stderr);
    for mut h in survivors {
        assert!(
            !h.ended_within(Duration::from_millis(200)),
            "an open forward was cut"
        );
        drop(h);
    }

    // It comes back: service resumes without a restart.
    reps.pg.start_again();
    wait_until(
        Duration::from_secs(15),
        || reps.issue("alice", PW, &key.public()).0 == 200,
        || "issuance did not resume".into(),
    );
    let out = client.run(&["web-1", "echo", "ok"]);
    assert!(out.success(), "{out:?}");
    let (code, out) = reps.verify_postgres();
    assert_eq!(code, 0, "{out}");
    for i in 1..=N {
        assert!(out.contains(&format!("r{i}: ok")), "{out}");
    }
}

/// T51 on three replicas: one repository polled by all. An unsigned commit and one signed
/// by a key not in allowed_signers are refused (and recorded) by every replica, the first
/// commit staying in force on all with alice's forwards open; then a signed commit taking
/// alice out of group ops is applied by every replica, each cutting the forward it holds
/// within 1 s of its reload.
#[test]
fn t51_a_signed_commit_cuts_forwards_on_every_replica_and_bad_commits_are_refused_on_all() {
    let keys = TestDir::new();
    let signers = Signers::new(&keys);
    let (reps, first) = start_git(&signers);
    let repo = reps.dmz.policy_dir.clone();
    for i in 0..N {
        let started = reps.expect(i, "service.started", &[], Duration::from_secs(5));
        assert_eq!(started["policy_version"], first.as_str(), "r{}", i + 1);
    }

    // One forward of alice (group ops: web-admin) held on each replica, straight to its
    // SSH port.
    let alice = reps
        .dmz
        .user("alice", "alice", &["web-admin"], "-1m:+10m", 1901, &[]);
    let mut held = Vec::new();
    for i in 0..N {
        let c = reps
            .dmz
            .client(&format!("alice-r{}", i + 1), reps.r[i].ssh.port(), &alice);
        let f = c.hold_forward("web-1:22");
        let banner = f.first_bytes(Duration::from_secs(20));
        assert!(
            banner.starts_with("SSH-2.0-OpenSSH"),
            "no forward through r{}: {banner:?}",
            i + 1
        );
        held.push((c, f));
    }

    // Unsigned: refused by every replica, the first commit stays.
    reps.dmz.write_policy(false, &[]);
    let unsigned = commit_unsigned(&repo, "alice leaves ops, unsigned");
    for i in 0..N {
        let r = reps.expect(
            i,
            "policy.rejected",
            &[("commit", &unsigned)],
            Duration::from_secs(10),
        );
        assert_eq!(r["reason"], "unsigned", "r{}: {r}", i + 1);
        assert_eq!(r["policy_version"], first.as_str(), "r{}: {r}", i + 1);
    }
    // Signed by mallory, who is not in allowed_signers: refused by every replica too.
    let forged = commit_signed(&repo, &signers.mallory, "alice leaves ops, by mallory");
    for i in 0..N {
        let r = reps.expect(
            i,
            "policy.rejected",
            &[("commit", &forged)],
            Duration::from_secs(10),
        );
        assert_eq!(r["reason"], "unknown-signer", "r{}: {r}", i + 1);
        assert_eq!(r["policy_version"], first.as_str(), "r{}: {r}", i + 1);
    }
    for (i, (_, f)) in held.iter_mut().enumerate() {
        assert!(
            reps.find(i, "policy.reloaded", &[]).is_empty(),
            "r{} applied a refused commit",
            i + 1
        );
        assert!(
            !f.ended_within(Duration::ZERO),
            "alice's forward on r{} was cut by a refused commit",
            i + 1
        );
    }

    // Signed by alice: every replica applies it and cuts the forward it holds.
    let second = commit_signed(&repo, &signers.alice, "alice leaves ops");
    for i in 0..N {
        let reloaded = reps.expect(
            i,
            "policy.reloaded",
            &[("policy_version", &second)],
            Duration::from_secs(10),
        );
        let cut = reps.expect(
            i,
            "forward.cut",
            &[("key_id", "alice")],
            Duration::from_secs(5),
        );
        let after = ts(&cut).duration_since(ts(&reloaded)).unwrap_or_default();
        println!("r{}: forward.cut {after:?} after policy.reloaded", i + 1);
        assert!(
            after < Duration::from_secs(1),
            "r{} cut {after:?} after its reload",
            i + 1
        );
        assert_eq!(cut["reason"], "role-lost", "r{}: {cut}", i + 1);
        assert_eq!(cut["policy_version"], second.as_str(), "r{}: {cut}", i + 1);
    }
    for (i, (_, f)) in held.iter_mut().enumerate() {
        assert!(
            f.ended_within(Duration::from_secs(3)),
            "alice's forward on r{} is still open",
            i + 1
        );
    }
    // Cutting a connection whose client then leaves at once panicked no connection task.
    for (i, d) in reps.r.iter().enumerate() {
        let log = d.server_log();
        assert!(!log.contains("panicked"), "r{} panicked: {log}", i + 1);
    }
    let (code, out) = reps.verify_postgres();
    assert_eq!(code, 0, "{out}");
}

/// A device login started on one replica is polled on the others (the logins in progress
/// are in PostgreSQL, behind a round-robin balancer any poll may land anywhere): pending
/// there, finished there once the person logged in at the provider, then used up on every
/// replica; the token it gave gets a certificate through the balancer.
#[test]
fn a_device_login_started_on_one_replica_is_finished_on_another() {
    let idp = crate::support::oidc_provider::OidcProvider::start(600, 1);
    let (reps, _) = start_full("", None, &idp.config());
    let (status, body) = reps.curl_at(reps.r[0].api.port(), "/v1/device", &["-X", "POST"]);
    assert_eq!(status, 200, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let code = started["device_code"].as_str().unwrap().to_string();
    // Polled as the README does it: `curl -d '{"device_code":"…"}'` (curl's form type).
    let poll = |i: usize| -> (u16, Value) {
        let body = serde_json::json!({ "device_code": code }).to_string();
        let (s, b) = reps.curl_at(reps.r[i].api.port(), "/v1/device/token", &["-d", &body]);
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    };
    // Before the person logs in: pending on another replica, not an unknown code.
    let (s, v) = poll(1);
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "r2: {v}\n{}",
        reps.r[1].server_log()
    );
    let uri = started["verification_uri_complete"].as_str().unwrap();
    idp.approve(uri, "erin", &["ops"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut interval = 1;
    let token = loop {
        std::thread::sleep(Duration::from_secs(interval));
        let (s, v) = poll(2);
        if s == 200 {
            break v["token"].as_str().unwrap().to_string();
        }
        match v["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            _ => panic!("r3: {s} {v}\n{}", reps.r[2].server_log()),
        }
        assert!(Instant::now() < deadline, "the device login never ended");
    };
    for i in 0..N {
        let (s, v) = poll(i);
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "r{}: {v}",
            i + 1
        );
    }
    let key = crate::support::ssh::keygen(&reps.r[0].path().join("erin_key"), "ed25519");
    let (s, body) = reps.curl_at(
        reps.lb.api,
        "/v1/certs",
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data-binary",
            &format!("@{}", key.public().display()),
        ],
    );
    assert_eq!(s, 200, "{body}");
    // The provider's code never reached the database in clear, nor ours.
    assert_eq!(
        reps.rows(&format!(
            "SELECT count(*) FROM device_logins WHERE position(convert_to('{code}', 'UTF8') in sealed) > 0"
        )),
        0
    );
}
