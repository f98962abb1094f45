//! Small network tools: a connection from a chosen loopback source, how long a peer takes
//! to close, a target that never reads, and a forward held open through the bastion by
//! the OpenSSH client.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::{Output, wait_until, wait_with_timeout};
use super::ssh::SshClient;

/// A TCP connection to `to` from the loopback address `from` (e.g. 127.0.1.1, so a test
/// can play several clients), within 5 s; `None` when it cannot be made then.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .ok()?
        .ok()
}

/// [`connect_from`] as a blocking socket; fails the test when the connection cannot be
/// made within 5 s.
#[track_caller]
pub fn connect_from_blocking(from: impl Into<IpAddr>, to: SocketAddr) -> TcpStream {
    let from = from.into();
    let rt = super::wire::runtime();
    let s = rt
        .block_on(connect_from(from, to))
        .unwrap_or_else(|| panic!("no connection from {from} to {to} within 5 s"));
    let s = s.into_std().expect("a std socket");
    s.set_nonblocking(false).expect("blocking");
    s
}

/// How long until the peer closes `s` (reading and discarding), at most `limit`; `None`
/// when it is still open then. `s` must have a read timeout (e.g. 200 ms), so that a
/// silent peer cannot hold a read past `limit`.
pub fn time_to_close(s: &mut impl Read, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// A TCP listener on 127.0.0.1 that accepts and never reads (a target that stalls); it
/// holds its connections until dropped (at most 120 s).
pub struct Sink {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("sink address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sink {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `ssh -W TARGET bastion` with its stdin kept open: a forward that lasts until the
/// bastion ends it or the test drops it (the client is killed then). What comes back
/// from the target is read as it arrives; what the client prints on stderr (e.g. why the
/// bastion cut the forward) is kept.
pub struct HeldForward {
    child: Option<Child>,
    /// The client's stdin, for a test that pushes data through the forward.
    pub stdin: Option<ChildStdin>,
    first: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl SshClient {
    /// Opens a held forward to `target` (`HOST:PORT` as the bastion is asked to dial it).
    pub fn hold_forward(&self, target: &str) -> HeldForward {
        let mut child = self
            .command(&["-W", target, "bastion"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssh -W");
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let kept = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    if let Ok(mut s) = kept.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut out = child.stdout.take().expect("piped stdout");
        let (tx, first) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = out.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let mut rest = Vec::new();
            let _ = out.read_to_end(&mut rest);
        });
        HeldForward {
            child: Some(child),
            stdin,
            first,
            stderr,
        }
    }
}

impl HeldForward {
    /// The first bytes the target sent (an sshd's banner), waiting at most `limit`; ""
    /// when nothing came.
    pub fn first_bytes(&self, limit: Duration) -> String {
        self.first.recv_timeout(limit).unwrap_or_default()
    }

    /// Waits at most `limit` for the client to exit by itself (killed then: see
    /// `timed_out`); the stdin is kept open meanwhile.
    pub fn wait(mut self, limit: Duration) -> Output {
        let child = self.child.take().expect("the client runs");
        let mut out = wait_with_timeout(child, limit);
        out.stderr = self.stderr_so_far();
        out
    }

    /// Whether the client has exited by itself (its forward ended), waiting at most
    /// `limit` (`Duration::ZERO`: whether it has already).
    pub fn ended_within(&mut self, limit: Duration) -> bool {
        let child = self.child.as_mut().expect("the client runs");
        let deadline = Instant::now() + limit;
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the client printed on stderr, once it holds `text` (the last of it may come
    /// after the client ended); fails the test when it does not within `limit`.
    #[track_caller]
    pub fn expect_stderr(&self, text: &str, limit: Duration) -> String {
        wait_until(
            limit,
            || self.stderr_so_far().contains(text),
            || format!("the client never said {text:?}: {:?}", self.stderr_so_far()),
        );
        self.stderr_so_far()
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for HeldForward {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
