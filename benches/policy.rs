//! Policy load and decision time on a big generated policy:
//! 10,000 hosts, 1,000 principals, 5,000 users (in 500 groups and [users] entries).
//!
//! `cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used)]

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use drawbridge::policy::{Policy, Query};

const HOSTS: usize = 10_000;
const PRINCIPALS: usize = 1_000;
const USERS: usize = 5_000;
const GROUPS: usize = 500;

fn generate(dir: &Path) {
    let mut hosts = String::new();
    for i in 0..HOSTS {
        writeln!(
            hosts,
            "[hosts.h{i}]\naddress = \"10.{}.{}.{}\"\nlabels = {{ role = \"r{}\", env = \"{}\" }}\n",
            i / 65_536,
            (i / 256) % 256,
            i % 256,
            i % 100,
            if (i / 100) % 2 == 0 { "prod" } else { "staging" }
        )
        .unwrap();
    }
    let mut principals = String::new();
    for i in 0..PRINCIPALS {
        let hosts = match i % 10 {
            0 => "\"*\"".to_string(),
            1..=5 => format!("{{ role = \"r{}\", env = \"prod\" }}", i % 100),
            _ => {
                let names: Vec<String> = (0..20)
                    .map(|k| format!("\"h{}\"", (i * 37 + k * 101) % HOSTS))
                    .collect();
                format!("[{}]", names.join(", "))
            }
        };
        writeln!(
            principals,
            "[principals.p{i}]\nhosts = {hosts}\nlogins = [\"l{}\", \"deploy\"]\nmax_ttl = \"15m\"\n",
            i % 7
        )
        .unwrap();
    }
    let mut people = String::new();
    for g in 0..GROUPS {
        let members: Vec<String> = (0..10).map(|k| format!("\"u{}\"", g * 10 + k)).collect();
        writeln!(
            people,
            "[groups.g{g}]\nmembers = [{}]\nprincipals = [\"p{}\", \"p{}\"]\n",
            members.join(", "),
            (g * 2 + 1) % PRINCIPALS,
            (g * 2 + 2) % PRINCIPALS
        )
        .unwrap();
    }
    for u in 0..USERS {
        writeln!(
            people,
            "[users.u{u}]\nprincipals = [\"p{}\"]\nsource = [\"192.0.2.0/24\"]\n",
            (u * 13) % PRINCIPALS
        )
        .unwrap();
    }
    for t in 0..100 {
        writeln!(
            people,
            "[[temporary]]\nuser = \"u{t}\"\nprincipal = \"p{}\"\nuntil = 2030-01-01T00:00:00Z\nreason = \"INC-{t}\"\n",
            t * 3
        )
        .unwrap();
    }
    std::fs::write(dir.join("hosts.toml"), hosts).unwrap();
    std::fs::write(dir.join("principals.toml"), principals).unwrap();
    std::fs::write(dir.join("people.toml"), people).unwrap();
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path());
    let policy = Policy::load(tmp.path()).unwrap();
    assert_eq!(policy.hosts.len(), HOSTS);
    assert_eq!(policy.principals.len(), PRINCIPALS);
    assert_eq!(policy.users.len(), USERS);

    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("load_10k_hosts_1k_principals_5k_users", |b| {
        b.iter(|| Policy::load(black_box(tmp.path())).unwrap())
    });
    g.finish();

    let now = SystemTime::now();
    // u1234: [users] p(1234*13 % 1000) = p42, group g123 → p247, p248.
    let allow = Query {
        user: "u1234",
        extra_groups: &[],
        host: "h4242",
        login: Some("deploy"),
        within: None,
        now,
    };
    let deny = Query {
        user: "u1234",
        extra_groups: &[],
        host: "h4243",
        login: Some("root"),
        within: None,
        now,
    };
    let decision = policy.decide(&allow);
    let decision_deny = policy.decide(&deny);
    eprintln!("allow case: {decision:?}\ndeny case: {decision_deny:?}");
    c.bench_function("decide_allow", |b| {
        b.iter(|| policy.decide(black_box(&allow)))
    });
    c.bench_function("decide_deny", |b| {
        b.iter(|| policy.decide(black_box(&deny)))
    });
    let within = vec!["p42".to_string()];
    let bastion = Query {
        login: None,
        within: Some(&within),
        ..allow.clone()
    };
    c.bench_function("decide_bastion_within", |b| {
        b.iter(|| policy.decide(black_box(&bastion)))
    });
    c.bench_function("resolve_target", |b| {
        b.iter(|| policy.resolve_target(black_box("10.0.16.146"), black_box(22)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
