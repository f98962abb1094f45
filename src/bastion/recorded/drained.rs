//! The outer channel's stream as the SSH server inside it sees it, with its read side
//! always drained.
//!
//! The server inside the channel does not read while it is blocked writing (waiting for
//! the outer channel's window). If nothing read the outer channel meanwhile, the client's
//! own packets (its window adjustments above all) would fill the channel's bounded queue,
//! the outer session would block delivering to it, and so never process the outer window
//! adjustment the write waits for: both directions would stop for good. Here a task reads
//! the outer channel at all times into a queue the server reads from. The queue is
//! bounded by what the client may send: channel data only within the windows the inner
//! server granted, plus small control packets; past [`MAX_QUEUED`] the session ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

/// Bytes read from the client and not yet taken by the inner server, at most.
pub const MAX_QUEUED: usize = 32 * 1024 * 1024;

/// One outer stream, its read side drained by a task of its own.
pub struct Drained<S> {
    queue: mpsc::UnboundedReceiver<io::Result<Bytes>>,
    current: Bytes,
    queued: Arc<AtomicUsize>,
    write: WriteHalf<S>,
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Drained<S> {
    pub fn new(stream: S) -> Drained<S> {
        let (read, write) = tokio::io::split(stream);
        let (tx, queue) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(drain(read, tx, queued.clone()));
        Drained {
            queue,
            current: Bytes::new(),
            queued,
            write,
            ended: false,
        }
    }
}

async fn drain<S: AsyncRead>(
    mut read: ReadHalf<S>,
    tx: mpsc::UnboundedSender<io::Result<Bytes>>,
    queued: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let item = match read.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if queued.fetch_add(n, Ordering::SeqCst) + n > MAX_QUEUED {
                    Err(io::Error::other(
                        "the client sent more than the session's windows allow",
                    ))
                } else {
                    Ok(Bytes::copy_from_slice(&buf[..n]))
                }
            }
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        if tx.send(item).is_err() || stop {
            return;
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for Drained<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.current.is_empty() {
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match this.queue.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.queued.fetch_sub(chunk.len(), Ordering::SeqCst);
                    this.current = chunk;
                }
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current[..n]);
        this.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for Drained<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The peer's bytes are taken off the stream while nobody reads the `Drained`, and
    /// arrive whole and in order when it is read.
    #[tokio::test]
    async fn the_read_side_is_drained_while_nobody_reads() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut d = Drained::new(ours);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // A 1 KiB pipe: without the drain this write could not finish before a read.
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.write_all(&data))
            .await
            .expect("the peer's write finished while nothing read the Drained")
            .expect("write");
        drop(peer);
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
    }

    /// A peer that sends past the cap while nothing reads ends the stream with an error
    /// (the inner session ends); what came before the cap is still read in order.
    #[tokio::test]
    async fn a_peer_past_the_cap_ends_the_stream_with_an_error() {
        use std::time::Duration;
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let mut d = Drained::new(ours);
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0usize;
        while sent <= MAX_QUEUED + chunk.len() {
            match tokio::time::timeout(Duration::from_secs(2), peer.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        assert!(sent >= MAX_QUEUED, "only {sent} bytes could be sent");
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(5), d.read(&mut buf))
                .await
                .expect("the read ended")
            {
                Ok(0) => panic!("the stream ended without an error after {got} bytes"),
                Ok(n) => {
                    assert!(buf[..n].iter().all(|b| *b == 7));
                    got += n;
                }
                Err(e) => break e,
            }
        };
        assert!(got <= MAX_QUEUED, "{got} bytes were queued");
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
