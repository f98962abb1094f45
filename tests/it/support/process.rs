//! Child processes with every wait bounded: one runner that drains stdout and stderr while
//! it waits (a chatty child never blocks on a full pipe) and kills the child at its limit,
//! and one poll that fails the test, saying what it waited for, when its time runs out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The longest any single external command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished (or killed) command left behind.
#[derive(Debug)]
pub struct Output {
    /// `None` when the command was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    /// The exit code; -1 when killed (by the timeout or a signal).
    pub fn code(&self) -> i32 {
        self.status.and_then(|s| s.code()).unwrap_or(-1)
    }
    /// stdout then stderr, for assertion messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with stdin closed, capturing output, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// Runs `cmd` with `input` on its stdin (closed after it; closed at once for `None`),
/// capturing output, killing it after `timeout`.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A child that exits without reading its input closes the pipe: not our failure.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    wait_with_timeout(child, timeout)
}

/// A child process killed (and reaped) when this is dropped, also when the test fails
/// before it got to stop it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command that must succeed within [`COMMAND_TIMEOUT`]; fails the test with its
/// output otherwise.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT);
    assert!(out.success(), "{shown} failed: {out:?}");
    out
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut b);
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// Waits for a spawned child (stdout/stderr piped) at most `timeout`, then kills it; the
/// pipes are read while it runs.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let out_t = drain(child.stdout.take());
    let err_t = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        timed_out,
    }
}

/// Polls `cond` every 50 ms until it holds; past `limit` the test fails with `why()` (called
/// then, so it can show the state at the end, e.g. a server log).
#[track_caller]
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            panic!("not within {limit:?}: {}", why());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something accepts TCP on `addr` within `limit`.
pub fn listens_within(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits until something accepts TCP on `addr`; fails the test after `limit`.
#[track_caller]
pub fn wait_for_port(addr: SocketAddr, limit: Duration) {
    assert!(
        listens_within(addr, limit),
        "nothing listens on {addr} after {limit:?}"
    );
}

/// Resident memory of a process (`"self"` or a pid), in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
