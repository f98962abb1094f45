//! The in-process ceiling for `scripts/bench-issuance`: user certificates signed per
//! second on one core (plan as the API makes it, Ed25519 signature, OpenSSH line), with
//! no HTTP, no token check and no audit write.
//!
//! `cargo bench --bench sign` prints `sign_user_cert: N/s (M µs each)`; `-- --seconds S`
//! sets the measuring time (default 2).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drawbridge::issuer::{CaKey, CertPlan, sign_user_cert};
use ssh_key::{Algorithm, PrivateKey};

fn main() -> anyhow::Result<()> {
    let mut seconds = 2.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds"
            && let Some(v) = args.next()
        {
            seconds = v.parse()?;
        }
    }
    let ca = CaKey::generate("bench-ca")?;
    let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
    let user = PrivateKey::random(&mut rng, Algorithm::Ed25519)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut extensions = BTreeMap::new();
    extensions.insert("permit-pty".to_string(), String::new());
    extensions.insert("groups@drawbridge".to_string(), "bench".to_string());
    let plan = CertPlan {
        key_id: "bench".into(),
        principals: vec!["bench".into()],
        valid_after: now - 60,
        valid_before: now + 300,
        ttl: Duration::from_secs(300),
        asked_ttl: Duration::from_secs(300),
        capped_by: None,
        extensions,
        critical_options: BTreeMap::new(),
        omitted_groups: Vec::new(),
    };
    // Warm up, then measure.
    for _ in 0..200 {
        sign_user_cert(&ca, user.public_key(), &plan)?.openssh_line()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            let line = sign_user_cert(&ca, user.public_key(), &plan)?.openssh_line()?;
            std::hint::black_box(line);
        }
        n += 100;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sign_user_cert: {:.0}/s ({:.1} µs each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    Ok(())
}
