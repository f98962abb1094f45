//! API clients that hold a connection without making progress: TLS with no byte after the
//! handshake, HTTP/2 that only acknowledges SETTINGS and answers PINGs, or either one idle
//! after a single request. What the server does with them (never serves, closes after how
//! long, or leaves open) is what the API's connection limits are judged by.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::h2raw::{
    ACK, END_HEADERS, END_STREAM, HEADERS, PING, PREFACE, SETTINGS, frame, get_healthz,
};
use super::net::connect_from;

/// How long a held connection is watched before the test gives up on it.
pub const WATCH: Duration = Duration::from_secs(25);

/// How an idle connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// No TLS handshake within 5 s (refused at accept, or left in the backlog).
    NotServed,
    /// Handshake done, then closed by the server after this long.
    Closed(Duration),
    /// Still open after [`WATCH`].
    StillOpen,
}

/// What the client does after the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// Speak HTTP/2 (preface, SETTINGS, acknowledgements, PING answers); else HTTP/1.1.
    pub h2: bool,
    /// Send one `GET /healthz` first (HTTP/1.1 keep-alive, or one HTTP/2 stream).
    pub one_request: bool,
}

/// Connects to `api` from `from`, finishes the TLS handshake with `tls` (its ALPN
/// offer chooses the protocol), then holds the connection as `idle` says, reading
/// whatever comes, until the server closes it or [`WATCH`] runs out.
pub async fn hold(
    api: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    from: IpAddr,
    idle: Idle,
) -> Held {
    let Some(tcp) = connect_from(from, api).await else {
        return Held::NotServed;
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::from(api.ip());
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await
    else {
        return Held::NotServed;
    };
    let started = Instant::now();
    let mut hello = Vec::new();
    if idle.h2 {
        hello.extend_from_slice(PREFACE);
        frame(&mut hello, SETTINGS, 0, 0, &[]);
        if idle.one_request {
            let block = get_healthz(&api.ip().to_string());
            frame(&mut hello, HEADERS, END_STREAM | END_HEADERS, 1, &block);
        }
    } else if idle.one_request {
        hello.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    }
    if !hello.is_empty() && s.write_all(&hello).await.is_err() {
        return Held::Closed(started.elapsed());
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let left = WATCH.saturating_sub(started.elapsed());
        let n = match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return Held::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) => return Held::Closed(started.elapsed()),
            Ok(Ok(n)) => n,
        };
        if !idle.h2 {
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut reply = Vec::new();
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            match ty {
                SETTINGS if flags & ACK == 0 => frame(&mut reply, SETTINGS, ACK, 0, &[]),
                PING if flags & ACK == 0 => frame(&mut reply, PING, ACK, 0, &buf[9..9 + len]),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        if !reply.is_empty() && s.write_all(&reply).await.is_err() {
            return Held::Closed(started.elapsed());
        }
    }
}
