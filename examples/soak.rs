//! The load side of `scripts/soak` (docs/threats.md F12: 1,000 forwards held for 10 minutes).
//!
//! Two subcommands, both started by the script:
//!
//! - `soak echo --listen ADDR`: a TCP echo server, the DMZ "target" the forwards reach.
//! - `soak run ...`: logs in to the bastion with a certificate over several SSH connections,
//!   opens `--forwards` `direct-tcpip` channels to the echo target, and as many plain TCP
//!   connections straight to the echo server; holds them all for `--duration`, sending
//!   every `--interval` a small timestamped payload on each (staggered across the interval)
//!   and timing the round trip; samples the bastion's memory; closes everything; writes a
//!   JSON summary.
//!
//! A forward counts as dropped if it fails to open, closes, errors, times out or echoes
//! wrong bytes before the end of the hold. "Added latency" is a percentile of the round
//! trips through the bastion minus the same percentile of the direct ones, measured in the
//! same run on the same schedule.
//!
//! This is an example so it is not shipped: `cargo build --release --example soak`.
#![allow(
    clippy::expect_used,
    reason = "a load tool run by hand, never by a peer: a step that fails ends the run"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use russh::keys::PublicKeyOrCertificate;
use serde_json::json;
use ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey, certificate::CertType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout};

#[derive(Parser)]
#[command(about = "Soak load for drawbridge's bastion (scripts/soak)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A TCP echo server.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this many seconds whatever happens (a bound for the script).
        #[arg(long, default_value_t = 7200)]
        max_seconds: u64,
    },
    /// Open, hold, measure, close; write a JSON summary.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// The bastion's SSH address.
    #[arg(long)]
    bastion: SocketAddr,
    /// The SSH user name given to the bastion (it grants nothing; logged).
    #[arg(long, default_value = "soak")]
    user: String,
    /// Private key file (OpenSSH format).
    #[arg(long)]
    key: PathBuf,
    /// Certificate file for that key (from `POST /v1/certs`).
    #[arg(long)]
    cert: PathBuf,
    /// The host CA public key: the bastion must present a host certificate it signed.
    #[arg(long)]
    host_ca: PathBuf,
    /// Inventory name of the echo target and the port asked for in `direct-tcpip`.
    #[arg(long)]
    target: String,
    #[arg(long)]
    target_port: u16,
    /// The echo server's address, for the direct (no bastion) round trips.
    #[arg(long)]
    echo: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    forwards: usize,
    /// Forwards per SSH connection (the bastion's `ssh.max_channels_per_connection`).
    #[arg(long, default_value_t = 10)]
    per_connection: usize,
    /// SSH connections being set up at once.
    #[arg(long, default_value_t = 8)]
    open_concurrency: usize,
    /// Seconds to hold the forwards.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between two round trips on one forward.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Bytes per round trip (at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// A round trip slower than this many seconds drops its forward.
    #[arg(long, default_value_t = 10)]
    ping_timeout: u64,
    /// The bastion's process id: its memory (and its children's) is sampled.
    #[arg(long)]
    pid: u32,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 5)]
    sample: u64,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 30)]
    progress: u64,
    /// Where to write the JSON summary.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Echo {
            listen,
            max_seconds,
        } => rt.block_on(async {
            match timeout(Duration::from_secs(max_seconds), echo(listen)).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }),
        Cmd::Run(args) => rt.block_on(run(*args)),
    }
}

// ---------------------------------------------------------------------------------------
// The echo target

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: shed, do not stop.
                eprintln!("soak echo: accept: {e}");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// Shared counters

#[derive(Default)]
struct Side {
    rtts_us: Mutex<Vec<u32>>,
    dropped: AtomicUsize,
    reasons: Mutex<Vec<String>>,
}

impl Side {
    fn drop_one(&self, why: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut r = self.reasons.lock().expect("lock");
        if r.len() < 20 {
            r.push(why);
        }
    }

    fn rtts(&self) -> Vec<u32> {
        self.rtts_us.lock().expect("lock").clone()
    }
}

/// Nearest-rank percentile (q in 0..=1) of a sorted slice, in ms.
fn pct_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(f64::from(sorted[k]) / 1000.0)
}

fn summary(mut xs: Vec<u32>) -> serde_json::Value {
    xs.sort_unstable();
    let mean = if xs.is_empty() {
        None
    } else {
        Some(xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64 / 1000.0)
    };
    json!({
        "count": xs.len(),
        "p50_ms": pct_ms(&xs, 0.50),
        "p90_ms": pct_ms(&xs, 0.90),
        "p99_ms": pct_ms(&xs, 0.99),
        "p999_ms": pct_ms(&xs, 0.999),
        "max_ms": pct_ms(&xs, 1.0),
        "mean_ms": mean,
    })
}

// ---------------------------------------------------------------------------------------
// One round trip

/// Sends `len` bytes naming (`id`, `seq`) and the send time, reads them back, compares.
/// Returns the round trip in µs.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    id: u32,
    seq: u32,
    len: usize,
    epoch: Instant,
    limit: Duration,
) -> Result<u32, String> {
    let mut out = vec![0u8; len];
    let t0 = Instant::now();
    let stamp = t0.duration_since(epoch).as_nanos() as u64;
    out[0..4].copy_from_slice(&id.to_be_bytes());
    out[4..8].copy_from_slice(&seq.to_be_bytes());
    out[8..16].copy_from_slice(&stamp.to_be_bytes());
    for (i, b) in out.iter_mut().enumerate().skip(16) {
        *b = (i as u32 ^ id ^ seq.rotate_left(8)) as u8;
    }
    let mut back = vec![0u8; len];
    let trip = async {
        s.write_all(&out).await?;
        s.flush().await?;
        s.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(())
    };
    match timeout(limit, trip).await {
        Err(_) => return Err(format!("no echo within {} s", limit.as_secs())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("closed".into());
        }
        Ok(Err(e)) => return Err(format!("error: {e}")),
        Ok(Ok(())) => {}
    }
    let rtt = t0.elapsed();
    if back != out {
        return Err("wrong bytes echoed".into());
    }
    Ok(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX))
}

/// Pings every `interval` from `first` until `end` (then once more, so every forward is
/// proven alive at the end) and hands the stream back for closing.
#[allow(clippy::too_many_arguments)]
async fn hold<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: u32,
    first: Instant,
    interval: Duration,
    end: Instant,
    a: &RunArgs,
    epoch: Instant,
    side: &Side,
    pings: &AtomicU64,
) -> Option<S> {
    let limit = Duration::from_secs(a.ping_timeout);
    let mut next = first;
    let mut seq = 1u32;
    loop {
        let last = next >= end;
        if last {
            sleep_until(end).await;
        } else {
            sleep_until(next).await;
        }
        match ping(&mut s, id, seq, a.payload, epoch, limit).await {
            Ok(us) => {
                if !last {
                    side.rtts_us.lock().expect("lock").push(us);
                }
                pings.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                side.drop_one(format!(
                    "#{id} at {:.1} s: {why}",
                    epoch.elapsed().as_secs_f64()
                ));
                return None;
            }
        }
        if last {
            return Some(s);
        }
        seq += 1;
        next += interval;
    }
}

/// Half-closes and waits for the far end's close (the echo server closes after EOF).
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<(), String> {
    let done = async {
        s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .await
            .map_err(|e| format!("read after EOF: {e}"))?;
        if rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after EOF", rest.len()))
        }
    };
    timeout(Duration::from_secs(10), done)
        .await
        .unwrap_or_else(|_| Err("no close within 10 s".into()))
}

// ---------------------------------------------------------------------------------------
// Memory of the bastion

/// User + system CPU seconds of `pid` so far (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces and parentheses: split after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), 12 and 13 after the name; clock ticks,
    // which are 100 per second on Linux (sysconf(_SC_CLK_TCK)).
    (ticks(11) + ticks(12)) / 100.0
}

/// (RSS kB, PSS kB, processes) of `root` and its descendants, from smaps_rollup.
fn memory_kb(root: u32) -> (u64, u64, usize) {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let path = t.path().join("children");
                if let Ok(text) = std::fs::read_to_string(path) {
                    pids.extend(
                        text.split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    let (mut rss, mut pss, mut n) = (0, 0, 0);
    for p in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue;
        };
        n += 1;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "Rss:" => rss += v,
                "Pss:" => pss += v,
                _ => {}
            }
        }
    }
    (rss, pss, n)
}

#[derive(Default)]
struct Memory {
    samples: Mutex<Vec<(f64, u64, u64)>>,
}

impl Memory {
    fn sample(&self, pid: u32, epoch: Instant) -> (u64, u64) {
        let (rss, pss, _) = memory_kb(pid);
        self.samples
            .lock()
            .expect("lock")
            .push((epoch.elapsed().as_secs_f64(), rss, pss));
        (rss, pss)
    }

    fn peak(&self) -> (u64, u64) {
        let s = self.samples.lock().expect("lock");
        (
            s.iter().map(|x| x.1).max().unwrap_or(0),
            s.iter().map(|x| x.2).max().unwrap_or(0),
        )
    }
}

// ---------------------------------------------------------------------------------------
// SSH client

struct Client {
    host_ca: ssh_key::Fingerprint,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::Certificate(c) => {
                c.cert_type() == CertType::Host && c.validate([&self.host_ca]).is_ok()
            }
            PublicKeyOrCertificate::PublicKey { .. } => false,
        })
    }
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    secs: u64,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match timeout(Duration::from_secs(secs), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {secs} s")),
    }
}

type Handle = russh::client::Handle<Client>;
type Forward = russh::ChannelStream<russh::client::Msg>;

/// One SSH connection with `n` forwards, each proven by one round trip.
#[allow(clippy::too_many_arguments)]
async fn connect(
    a: &RunArgs,
    cfg: Arc<russh::client::Config>,
    key: Arc<PrivateKey>,
    cert: Certificate,
    host_ca: ssh_key::Fingerprint,
    first_id: u32,
    n: usize,
    epoch: Instant,
    side: &Side,
) -> (Option<Handle>, Vec<(u32, Forward)>) {
    let fail_all = |why: String| {
        for i in 0..n {
            side.drop_one(format!("#{} open: {why}", first_id + i as u32));
        }
    };
    let mut h = match bounded(
        "connect",
        30,
        russh::client::connect(cfg, a.bastion, Client { host_ca }),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            fail_all(e);
            return (None, Vec::new());
        }
    };
    match bounded("auth", 30, h.authenticate_openssh_cert(&a.user, key, cert)).await {
        Ok(r) if r.success() => {}
        Ok(_) => {
            fail_all("certificate refused".into());
            return (None, Vec::new());
        }
        Err(e) => {
            fail_all(e);
            return (None, Vec::new());
        }
    }
    let limit = Duration::from_secs(a.ping_timeout);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = first_id + i as u32;
        let opened = bounded(
            "open",
            30,
            h.channel_open_direct_tcpip(
                a.target.as_str(),
                u32::from(a.target_port),
                "127.0.0.1",
                40000 + id,
            ),
        )
        .await;
        let mut s = match opened {
            Ok(ch) => ch.into_stream(),
            Err(e) => {
                side.drop_one(format!("#{id} {e}"));
                continue;
            }
        };
        match ping(&mut s, id, 0, a.payload, epoch, limit).await {
            Ok(_) => out.push((id, s)),
            Err(e) => side.drop_one(format!("#{id} first round trip: {e}")),
        }
    }
    (Some(h), out)
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.payload < 16 {
        bail!("--payload must be at least 16 bytes");
    }
    if a.per_connection == 0 || a.forwards == 0 {
        bail!("--forwards and --per-connection must be positive");
    }
    let a = Arc::new(a);
    let key = Arc::new(
        PrivateKey::read_openssh_file(&a.key)
            .with_context(|| format!("reading {}", a.key.display()))?,
    );
    let cert = read_cert(&a.cert)?;
    let host_ca = PublicKey::read_openssh_file(&a.host_ca)
        .with_context(|| format!("reading {}", a.host_ca.display()))?
        .fingerprint(HashAlg::Sha256);
    // Ask for the bastion's host certificate (russh's client offers none by default).
    let preferred = russh::Preferred {
        host_key_certificates: std::borrow::Cow::Owned(vec![ssh_key::Algorithm::Ed25519]),
        ..Default::default()
    };
    let cfg = Arc::new(russh::client::Config {
        nodelay: true,
        preferred,
        ..Default::default()
    });

    let epoch = Instant::now();
    let through = Arc::new(Side::default());
    let direct = Arc::new(Side::default());
    let memory = Arc::new(Memory::default());
    let (start_rss, start_pss) = memory.sample(a.pid, epoch);
    eprintln!(
        "soak: bastion idle: RSS {} MiB, PSS {} MiB",
        start_rss / 1024,
        start_pss / 1024
    );

    // The memory sampler runs from before the first connection to after the last close.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (memory, sampling, pid, every) = (
            memory.clone(),
            sampling.clone(),
            a.pid,
            Duration::from_secs(a.sample.max(1)),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                sleep(every).await;
                memory.sample(pid, epoch);
            }
        })
    };

    // --- open -----------------------------------------------------------------------------
    let t_open = Instant::now();
    let conns = a.forwards.div_ceil(a.per_connection);
    let gate = Arc::new(tokio::sync::Semaphore::new(a.open_concurrency.max(1)));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let n = a.per_connection.min(a.forwards - c * a.per_connection);
        let (a, cfg, key, cert, host_ca, through, gate) = (
            a.clone(),
            cfg.clone(),
            key.clone(),
            cert.clone(),
            host_ca,
            through.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let first = (c * a.per_connection) as u32;
            connect(&a, cfg, key, cert, host_ca, first, n, epoch, &through).await
        }));
    }
    let mut handles = Vec::new();
    let mut forwards = Vec::new();
    for t in tasks {
        let (h, f) = t.await?;
        handles.extend(h);
        forwards.extend(f);
    }
    let open_failed = through.dropped.load(Ordering::Relaxed);
    let mut directs = Vec::new();
    for i in 0..a.forwards as u32 {
        match bounded("direct connect", 10, TcpStream::connect(a.echo)).await {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                let limit = Duration::from_secs(a.ping_timeout);
                match ping(&mut s, i, 0, a.payload, epoch, limit).await {
                    Ok(_) => directs.push((i, s)),
                    Err(e) => direct.drop_one(format!("direct #{i} first round trip: {e}")),
                }
            }
            Err(e) => direct.drop_one(format!("direct #{i} {e}")),
        }
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    let (open_rss, open_pss) = memory.sample(a.pid, epoch);
    eprintln!(
        "soak: {} of {} forwards open over {} SSH connections in {:.1} s ({} failed); \
         {} direct connections; bastion RSS {} MiB, PSS {} MiB",
        forwards.len(),
        a.forwards,
        handles.len(),
        open_secs,
        open_failed,
        directs.len(),
        open_rss / 1024,
        open_pss / 1024
    );

    // --- hold -----------------------------------------------------------------------------
    let interval = Duration::from_secs_f64(a.interval);
    let hold_start = Instant::now() + Duration::from_secs(1);
    let end = hold_start + Duration::from_secs(a.duration);
    let pings = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(a.pid);
    let n = a.forwards as f64;
    let slot = |i: u32, half: f64| hold_start + interval.mul_f64((f64::from(i) + half) / n);
    let mut held = Vec::new();
    for (id, s) in forwards {
        let (a, side, pings) = (a.clone(), through.clone(), pings.clone());
        let first = slot(id, 0.0);
        held.push(tokio::spawn(async move {
            hold(s, id, first, interval, end, &a, epoch, &side, &pings).await
        }));
    }
    let mut held_direct = Vec::new();
    for (id, s) in directs {
        let (a, side, pings) = (a.clone(), direct.clone(), pings.clone());
        let first = slot(id, 0.5);
        held_direct.push(tokio::spawn(async move {
            hold(s, id, first, interval, end, &a, epoch, &side, &pings).await
        }));
    }
    let progress = {
        let (through, pid, every) = (
            through.clone(),
            a.pid,
            Duration::from_secs(a.progress.max(1)),
        );
        let (pings, total) = (pings.clone(), a.forwards);
        tokio::spawn(async move {
            let mut next = hold_start + every;
            while next < end {
                sleep_until(next).await;
                let (rss, pss, _) = memory_kb(pid);
                let mut r = through.rtts();
                r.sort_unstable();
                eprintln!(
                    "soak: {:>4.0} s  forwards alive {}  round trips (both kinds) {}  through p50/p99 {:.2}/{:.2} ms  bastion RSS {} MiB PSS {} MiB",
                    next.duration_since(hold_start).as_secs_f64(),
                    total - through.dropped.load(Ordering::Relaxed),
                    pings.load(Ordering::Relaxed),
                    pct_ms(&r, 0.5).unwrap_or(f64::NAN),
                    pct_ms(&r, 0.99).unwrap_or(f64::NAN),
                    rss / 1024,
                    pss / 1024
                );
                next += every;
            }
        })
    };
    let mut alive = Vec::new();
    for t in held {
        alive.extend(t.await?);
    }
    let mut alive_direct = Vec::new();
    for t in held_direct {
        alive_direct.extend(t.await?);
    }
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let hold_cpu = cpu_seconds(a.pid) - cpu0;
    progress.abort();
    let (end_rss, end_pss) = memory.sample(a.pid, epoch);

    // --- close ----------------------------------------------------------------------------
    let alive_at_end = alive.len();
    let mut closing = Vec::new();
    for s in alive {
        closing.push(tokio::spawn(close(s)));
    }
    let mut close_failed = Vec::new();
    for t in closing {
        if let Err(e) = t.await? {
            close_failed.push(e);
        }
    }
    for s in alive_direct {
        let _ = close(s).await;
    }
    for h in &handles {
        let _ = bounded(
            "disconnect",
            10,
            h.disconnect(russh::Disconnect::ByApplication, "soak done", "en"),
        )
        .await;
    }
    drop(handles);
    sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.abort();
    let (after_rss, after_pss) = memory.sample(a.pid, epoch);
    let (peak_rss, peak_pss) = memory.peak();

    // --- summary --------------------------------------------------------------------------
    let t_rtts = through.rtts();
    let d_rtts = direct.rtts();
    let ts = summary(t_rtts);
    let ds = summary(d_rtts);
    let added = |k: &str| match (ts[k].as_f64(), ds[k].as_f64()) {
        (Some(t), Some(d)) => Some(t - d),
        _ => None,
    };
    let samples = memory.samples.lock().expect("lock").clone();
    let out = json!({
        "forwards": a.forwards,
        "per_connection": a.per_connection,
        "connections": conns,
        "duration_s": a.duration,
        "interval_s": a.interval,
        "payload_bytes": a.payload,
        "ping_timeout_s": a.ping_timeout,
        "opened": a.forwards - open_failed,
        "open_failed": open_failed,
        "open_seconds": open_secs,
        "hold_seconds": hold_secs,
        "hold_cpu_seconds": hold_cpu,
        "dropped": through.dropped.load(Ordering::Relaxed) - open_failed,
        "alive_at_end": alive_at_end,
        "drop_reasons": *through.reasons.lock().expect("lock"),
        "close_failed": close_failed.len(),
        "close_reasons": close_failed.iter().take(10).collect::<Vec<_>>(),
        "direct_dropped": direct.dropped.load(Ordering::Relaxed),
        "direct_drop_reasons": *direct.reasons.lock().expect("lock"),
        "through": ts,
        "direct": ds,
        "added": {
            "p50_ms": added("p50_ms"), "p90_ms": added("p90_ms"),
            "p99_ms": added("p99_ms"), "max_ms": added("max_ms"),
        },
        "memory_kb": {
            "start_rss": start_rss, "start_pss": start_pss,
            "open_rss": open_rss, "open_pss": open_pss,
            "peak_rss": peak_rss, "peak_pss": peak_pss,
            "end_rss": end_rss, "end_pss": end_pss,
            "after_close_rss": after_rss, "after_close_pss": after_pss,
            "samples": samples.len(),
            "every_s": a.sample,
        },
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "soak: held {:.0} s; {} of {} forwards alive at the end ({} failed to open, {} dropped); \
         {} closed with an error",
        hold_secs,
        alive_at_end,
        a.forwards,
        open_failed,
        out["dropped"],
        close_failed.len()
    );
    Ok(())
}

fn read_cert(path: &Path) -> anyhow::Result<Certificate> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Certificate::from_openssh(text.trim()).with_context(|| format!("parsing {}", path.display()))
}
