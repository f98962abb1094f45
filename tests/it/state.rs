//! The PostgreSQL implementations of the shared-state traits (`[state] postgres`) against
//! a throwaway cluster: the same contract tests the in-process implementations pass, and
//! the audit chain failing closed while the database is away and resuming after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::audit::{Audit, AuditEvent};
use drawbridge::identity::LoginLimiter;
use drawbridge::state::connect::{Target, parse};
use drawbridge::state::db::Db;

use crate::support::postgres::Postgres;

fn target(pg: &Postgres, replica: &str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let text = pg.state_config(dir.path(), replica, "3s");
    let pw = dir.path().join("pg_password");
    assert!(text.contains("pg_password"));
    let cfg = parse(&pg.url(), Some(&pw), None).unwrap();
    Target {
        shown: drawbridge::state::connect::shown(&cfg),
        pg: cfg,
        replica: replica.into(),
        lease: Duration::from_secs(3),
    }
}

async fn sql(db: &Db, statement: &'static str) {
    db.run(|c| async move { c.batch_execute(statement).await })
        .await
        .unwrap();
}

/// One cluster for the contracts (a cluster per check would cost seconds each).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_limits_and_counts_keep_the_contracts_of_the_memory_ones() {
    let pg = Postgres::start();
    let t = target(&pg, "r1");
    drawbridge::state::migrate::run(&t).await.unwrap();
    let db = Db::new(t);

    // Each check of the limiter contract starts from an empty table.
    let make_db = db.clone();
    let make = move |max: u32| -> Arc<dyn LoginLimiter> {
        let db = make_db.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(sql(&db, "DELETE FROM login_attempts"))
        });
        Arc::new(drawbridge::state::limiter::PgLimiter::new(
            db,
            max,
            Duration::from_secs(60),
        ))
    };
    drawbridge::identity::limiter::contract::all(&make).await;

    let counts = drawbridge::state::counts::PgCounts::new(db.clone());
    drawbridge::bastion::counts::contract::all(&counts).await;

    // One-time codes: a step claimed on one replica is refused on another.
    use drawbridge::identity::UsedCodes;
    let codes_a = drawbridge::state::used_codes::PgUsedCodes::new(db.clone());
    let codes_b = drawbridge::state::used_codes::PgUsedCodes::new(Db::new(target(&pg, "r2")));
    assert!(codes_a.claim("alice", 100).await);
    assert!(!codes_b.claim("alice", 100).await);
    assert!(!codes_a.claim("alice", 100).await);
    assert!(codes_b.claim("bob", 100).await);
    assert!(codes_b.claim("alice", 101).await);

    // Across replicas: a second replica's count sees the first one's places.
    let t2 = target(&pg, "r2");
    let other = drawbridge::state::counts::PgCounts::new(Db::new(t2));
    use drawbridge::bastion::counts::{ConnectionCounts, NoPlace};
    assert_eq!(other.take("alice", 99, 3).await, Err(NoPlace::Full));
    assert!(other.take("carol", 99, 3).await.is_ok());

    // Device logins: the memory store's contract; a login started on one replica is
    // polled on another (once), and the provider's code is not in the database in clear.
    use drawbridge::identity::Secret;
    use drawbridge::identity::device::pending::{Limits, PollGate};
    use drawbridge::identity::device::store::{DeviceStore, contract};
    use drawbridge::state::device_logins::PgDevices;
    let limits = Limits {
        pending: 64,
        pending_per_source: 3,
        starts_per_minute: 10,
    };
    let r1 = PgDevices::new(db.clone(), limits);
    contract::check(&r1, limits).await;
    let r2 = PgDevices::new(Db::new(target(&pg, "r2")), limits);
    let ip = "192.0.2.200".parse().unwrap();
    assert_eq!(r1.admit(ip).await, Ok(Ok(())));
    let secret = "provider-device-code-in-clear";
    assert_eq!(
        r1.insert(
            "our-code",
            Secret::new(secret.into()),
            ip,
            Duration::from_secs(600),
            Duration::from_secs(1),
        )
        .await,
        Ok(true)
    );
    match r2.gate("our-code").await {
        Ok(PollGate::Ask(c)) => assert_eq!(c.expose(), secret),
        other => panic!("the other replica's poll: {other:?}"),
    }
    assert!(matches!(
        r1.gate("our-code").await,
        Ok(PollGate::SlowDown(_))
    ));
    let in_clear = db
        .run(|c| async move {
            c.query_one(
                "SELECT count(*) FROM device_logins \
                 WHERE position(convert_to('provider-device-code', 'UTF8') in sealed) > 0",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
        })
        .await
        .unwrap();
    assert_eq!(in_clear, 0);
    // The database away: refused, not waved through.
    pg.stop();
    assert!(r2.gate("our-code").await.is_err());
    assert!(r2.admit(ip).await.is_err());
    // A one-time code is refused while the database cannot say it is unused.
    assert!(!codes_a.claim("zed", 200).await);
}

/// T52 at the chain's level: while the database is stopped a record fails within 1 s
/// (so its action is refused) and the log reports unhealthy; once it is back the next
/// record succeeds on a new connection, and the chain in the table verifies with no gap
/// and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_fails_closed_while_postgres_is_down_and_resumes_alone() {
    let pg = Postgres::start();
    let t = target(&pg, "chain-1");
    drawbridge::state::migrate::run(&t).await.unwrap();
    let sink = drawbridge::state::audit_sink::PgSink::open(t.clone()).unwrap();
    let audit = Audit::with_sink(Box::new(sink), "chain-1").unwrap();
    let event = |n: usize| AuditEvent::AuditResumed {
        reason: format!("test record {n}"),
    };
    for n in 0..20 {
        audit.record(event(n)).await.unwrap();
    }
    pg.stop();
    let started = Instant::now();
    let refused = audit.record(event(100)).await;
    let took = started.elapsed();
    assert!(
        refused.is_err(),
        "a record was acknowledged with the database down"
    );
    assert!(took < Duration::from_secs(1), "refused only after {took:?}");
    assert!(!audit.healthy());
    pg.start_again();
    let mut resumed = false;
    for _ in 0..50 {
        if audit.record(event(200)).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        resumed,
        "the chain did not resume after the database came back"
    );
    assert!(audit.healthy());
    for n in 300..310 {
        audit.record(event(n)).await.unwrap();
    }
    // The chain in the table: 31 records, seq 1..=31, every hash linked.
    let (client, conn) = t.pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut text = Vec::new();
    let n = drawbridge::state::audit_sink::read_chain(&client, "chain-1", |l| {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(n, 31);
    let summary =
        drawbridge::audit::record::verify_reader(std::io::BufReader::new(&text[..])).unwrap();
    assert_eq!(summary.records, 31);
    assert!(!String::from_utf8_lossy(&text).contains("test record 100"));
}

/// The PostgreSQL sink keeps the contract the memory and file sinks keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_keeps_the_contract_of_the_file_one() {
    let pg = Postgres::start();
    let t = target(&pg, "contract");
    drawbridge::state::migrate::run(&t).await.unwrap();
    let mut sink = drawbridge::state::audit_sink::PgSink::open(t).unwrap();
    tokio::task::block_in_place(|| drawbridge::audit::sink::contract::all(&mut sink));
}

/// Two processes never write one chain: the second sink for a replica name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_one_replica_chain_is_refused() {
    let pg = Postgres::start();
    let t = target(&pg, "dup");
    drawbridge::state::migrate::run(&t).await.unwrap();
    let _first = drawbridge::state::audit_sink::PgSink::open(t.clone()).unwrap();
    let second = drawbridge::state::audit_sink::PgSink::open(t);
    let e = second.err().expect("a second writer was accepted");
    assert!(e.to_string().contains("each replica needs its own"), "{e}");
}

/// A password in the `[state] postgres` URL stops `serve` at start, saying where the
/// password goes instead, without repeating it.
#[test]
fn serve_refuses_a_postgres_url_carrying_a_password() {
    let d = crate::support::drawbridge::Drawbridge::prepare(
        &crate::support::drawbridge::FIXTURE_POLICY,
        "[state]\npostgres = \"postgresql://drawbridge:hunter2-secret@127.0.0.1:1/x\"\nreplica = \"r1\"\n",
    );
    let (code, out, err) = d.cli(&["serve"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("carries a password"), "{err}");
    assert!(err.contains("password_file"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
}

/// T52 with a database that stops answering without closing anything (paused, as behind
/// a dead network): a login's count and an SSH connection's place are refused within 1 s
/// instead of waiting on the socket, and both work again once it answers, on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_stops_answering_is_refused_within_a_second() {
    use drawbridge::bastion::counts::{ConnectionCounts, NoPlace};
    use drawbridge::identity::limiter::Refused;
    let pg = Postgres::start();
    let t = target(&pg, "frozen");
    drawbridge::state::migrate::run(&t).await.unwrap();
    let db = Db::new(t);
    let limiter =
        drawbridge::state::limiter::PgLimiter::new(db.clone(), 5, Duration::from_secs(60));
    let counts = drawbridge::state::counts::PgCounts::new(db.clone());
    let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let now = std::time::SystemTime::now();
    limiter.reserve("alice", ip, now).await.unwrap();
    counts.take("alice", 1, 5).await.unwrap();

    pg.freeze(true);
    let started = Instant::now();
    let login = limiter.reserve("alice", ip, now).await;
    let took = started.elapsed();
    let started = Instant::now();
    let place = counts.take("alice", 2, 5).await;
    let took_place = started.elapsed();
    pg.freeze(false);
    assert!(matches!(login, Err(Refused::Unavailable(_))), "{login:?}");
    assert!(took < Duration::from_secs(1), "a login waited {took:?}");
    assert!(matches!(place, Err(NoPlace::Unavailable(_))), "{place:?}");
    assert!(
        took_place < Duration::from_secs(1),
        "a connection waited {took_place:?}"
    );
    assert!(!db.healthy());

    let mut back = false;
    for _ in 0..50 {
        if limiter.reserve("alice", ip, now).await.is_ok()
            && counts.take("alice", 3, 5).await.is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the shared state did not come back by itself");
    assert!(db.healthy());
}

/// `session list` with `[state] postgres` reads every replica's chain from the database:
/// sessions running on two live replicas are listed live with their replica named (their
/// recordings are on those replicas), and a session whose replica's lease ran out (the
/// replica died with it) is not live.
#[test]
fn session_list_live_shows_the_sessions_of_every_replica() {
    let pg = Postgres::start();
    let t = target(&pg, "r1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        drawbridge::state::migrate::run(&t).await.unwrap();
        let db = Db::new(t);
        // What r2's and r3's chains hold while each runs one recorded session, and r4's
        // (dead: its lease ran out) with one it never ended.
        sql(
            &db,
            r#"
            INSERT INTO replicas (replica, lease_until) VALUES
                ('r2', now() + interval '1 minute'),
                ('r3', now() + interval '1 minute'),
                ('r4', now() - interval '1 minute');
            INSERT INTO audit_records (replica, seq, hash, line) VALUES
                ('r2', 1, 'h', '{"seq":1,"event":"session.started","ts":"2026-12-01T01:00:00.000Z","session":"s2a","key_id":"alice","target":"web-1","login":"root"}'),
                ('r2', 2, 'h', '{"seq":2,"event":"session.started","ts":"2026-12-01T01:01:00.000Z","session":"s2b","key_id":"bob","target":"web-1","login":"root"}'),
                ('r2', 3, 'h', '{"seq":3,"event":"session.ended","ts":"2026-12-01T01:02:00.000Z","session":"s2b","key_id":"bob","target":"web-1","login":"root","end":"closed","exit_status":0}'),
                ('r3', 1, 'h', '{"seq":1,"event":"session.started","ts":"2026-12-01T01:03:00.000Z","session":"s3a","key_id":"carol","target":"web-1","login":"root"}'),
                ('r4', 1, 'h', '{"seq":1,"event":"session.started","ts":"2026-12-01T01:04:00.000Z","session":"s4a","key_id":"dave","target":"web-1","login":"root"}');
            "#,
        )
        .await;
    });
    let dir = tempfile::tempdir().unwrap();
    let config = pg.state_config(dir.path(), "r1", "3s");
    std::fs::write(dir.path().join("drawbridge.toml"), config).unwrap();
    let list = |args: &[&str]| {
        let mut all = vec!["--config", "drawbridge.toml", "session", "list"];
        all.extend_from_slice(args);
        let (code, out, err) = crate::support::drawbridge::run(&all, dir.path(), None);
        assert_eq!(code, 0, "{out}{err}");
        out
    };

    let live = list(&["--live"]);
    let rows: Vec<Vec<&str>> = live
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["SESSION", "REPLICA", "STARTED"], "{live}");
    let ids: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(ids, [("s2a", "r2"), ("s3a", "r3")], "{live}");
    assert!(
        live.lines().nth(1).unwrap().ends_with("on r2"),
        "the recording is on r2: {live}"
    );

    let all = list(&[]);
    let line = |id: &str| {
        all.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id}: {all}"))
            .to_string()
    };
    assert!(line("s2b").contains("closed, exit 0"), "{all}");
    assert!(
        line("s4a").contains("replica gone (lease expired)"),
        "{all}"
    );
}
