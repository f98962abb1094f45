//! A small raw SSH protocol client for the rows that need hand-made packets
//! (docs/threats.md T19–T21): identification strings, binary packets in the clear (before any key exchange),
//! KEXINIT built and parsed by hand. Every read is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const MSG_DISCONNECT: u8 = 1;
pub const MSG_IGNORE: u8 = 2;
pub const MSG_SERVICE_REQUEST: u8 = 5;
pub const MSG_KEXINIT: u8 = 20;
pub const MSG_NEWKEYS: u8 = 21;
pub const MSG_KEX_ECDH_INIT: u8 = 30;
pub const MSG_KEX_ECDH_REPLY: u8 = 31;
pub const MSG_USERAUTH_REQUEST: u8 = 50;
pub const MSG_CHANNEL_OPEN: u8 = 90;

/// The client's strict-KEX marker (OpenSSH's Terrapin countermeasure).
pub const STRICT_C: &str = "kex-strict-c-v00@openssh.com";
/// The server's strict-KEX marker.
pub const STRICT_S: &str = "kex-strict-s-v00@openssh.com";

/// A TCP connection speaking SSH by hand.
pub struct Raw {
    pub s: TcpStream,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
}

/// How a connection ended, as seen by [`Raw::wait_closed`].
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields not asserted on are shown when an assertion fails"
)]
pub struct Ending {
    /// Closed (EOF or reset) within the limit.
    pub closed: bool,
    /// A clear-text SSH_MSG_DISCONNECT's description, if the server sent one.
    pub disconnect: Option<String>,
    /// Everything read until then.
    pub bytes: Vec<u8>,
    pub after: Duration,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Sends raw bytes (errors ignored: the server may have closed already).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// Sends our identification string.
    pub fn send_banner(&mut self) {
        self.send(b"SSH-2.0-rawssh_test\r\n");
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.s
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads the server's identification line (the `SSH-` line), within 5 s.
    pub fn read_banner(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                if line.starts_with("SSH-") {
                    return line;
                }
                continue;
            }
            if !self.fill(deadline) {
                return String::new();
            }
        }
    }

    /// Sends one clear-text binary packet carrying `payload`.
    pub fn send_packet(&mut self, payload: &[u8]) {
        let p = packet(payload);
        self.send(&p);
    }

    /// Reads one clear-text binary packet's payload, within 5 s.
    pub fn read_packet(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                assert!(len < 256 * 1024, "server sent packet length {len}");
                if self.buf.len() >= 4 + len {
                    let pad = self.buf[4] as usize;
                    let pkt: Vec<u8> = self.buf.drain(..4 + len).collect();
                    return Some(pkt[5..4 + len - pad].to_vec());
                }
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Bytes read but not consumed yet, handed over (e.g. the first encrypted packets that
    /// arrived with NEWKEYS, for `rawssh_session`).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads until the server closes, at most `limit`; notes a clear-text DISCONNECT.
    pub fn wait_closed(&mut self, limit: Duration) -> Ending {
        let started = Instant::now();
        let deadline = started + limit;
        let mut bytes = std::mem::take(&mut self.buf);
        let mut closed = false;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        Ending {
            closed,
            disconnect: find_disconnect(&bytes),
            bytes,
            after: started.elapsed(),
        }
    }
}

/// Frames `payload` as a clear-text binary packet: length, padding length, payload,
/// padding (at least 4 bytes, total a multiple of 8).
pub fn packet(payload: &[u8]) -> Vec<u8> {
    let mut pad = 8 - (5 + payload.len()) % 8;
    if pad < 4 {
        pad += 8;
    }
    let len = 1 + payload.len() + pad;
    let mut p = Vec::with_capacity(4 + len);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.push(pad as u8);
    p.extend_from_slice(payload);
    p.extend(std::iter::repeat_n(0u8, pad));
    p
}

pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A KEXINIT payload offering `kex` (comma-separated) and algorithms russh and OpenSSH
/// both speak.
pub fn kexinit(kex: &str) -> Vec<u8> {
    let mut p = vec![MSG_KEXINIT];
    p.extend_from_slice(&[7u8; 16]);
    for list in [
        kex,
        "ssh-ed25519",
        "aes128-ctr",
        "aes128-ctr",
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        put_string(&mut p, list.as_bytes());
    }
    p.push(0); // first_kex_packet_follows
    put_u32(&mut p, 0); // reserved
    p
}

/// The ten name-lists of a KEXINIT payload (None when it does not parse).
pub fn parse_kexinit(payload: &[u8]) -> Option<Vec<Vec<String>>> {
    if payload.first() != Some(&MSG_KEXINIT) || payload.len() < 17 {
        return None;
    }
    let mut rest = &payload[17..];
    let mut lists = Vec::new();
    for _ in 0..10 {
        if rest.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let s = rest.get(4..4 + n)?;
        lists.push(
            String::from_utf8_lossy(s)
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect(),
        );
        rest = &rest[4 + n..];
    }
    Some(lists)
}

/// A clear-text DISCONNECT's description somewhere in `bytes` (after the banner).
fn find_disconnect(bytes: &[u8]) -> Option<String> {
    let start = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0);
    let mut rest = &bytes[start..];
    while rest.len() >= 6 {
        let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        if len > 256 * 1024 || rest.len() < 4 + len {
            return None;
        }
        let pad = rest[4] as usize;
        let payload = rest.get(5..(4 + len).checked_sub(pad)?)?;
        if payload.first() == Some(&MSG_DISCONNECT) && payload.len() >= 9 {
            let n = u32::from_be_bytes(payload[5..9].try_into().ok()?) as usize;
            return payload
                .get(9..9 + n)
                .map(|d| String::from_utf8_lossy(d).into_owned());
        }
        rest = &rest[4 + len..];
    }
    None
}
