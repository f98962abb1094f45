//! Immediate ACKs after small reads, so a peer's Nagle never waits on our delayed ACK.
//!
//! The OpenSSH client's `ssh -W` process (the one `ssh -J` starts) and sshd leave Nagle's
//! algorithm on for everything but interactive sessions. When such a peer sends two small
//! messages in a row with nothing from us in between (KEXINIT then ECDH_INIT; a channel's
//! exit status then its close), the second waits in the peer's kernel for our ACK of the
//! first, and Linux delays that ACK by 40 ms once the connection has turned "ping-pong"
//! (we answered quickly before). Three such stalls were 120 ms of a direct `ssh target
//! true` here, and one to two of them were most of what `ssh -J` added over it
//! (bench/RESULTS.md, "The hop, fixed: delayed ACKs"). `TCP_QUICKACK` after a small read
//! sends the pending ACK
//! at once and leaves ping-pong mode until we answer again, so it is set after every read
//! shorter than [`SMALL_READ`]; bulk reads skip it (the kernel ACKs full segments at once).

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads shorter than this are followed by an immediate ACK (one `setsockopt`).
pub(super) const SMALL_READ: usize = 16 * 1024;

/// After `n` bytes were read from `socket`: ACK them now if the read was small. A failure
/// (not a TCP socket) changes nothing but the timing, so it is ignored.
pub(super) fn after_read<F: AsFd>(socket: F, n: usize) {
    if n > 0 && n < SMALL_READ {
        let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
    }
}

/// A socket whose small reads are ACKed at once (see the module's documentation).
pub(super) struct QuickAck<S>(pub S);

impl<S: AsyncRead + AsFd + Unpin> AsyncRead for QuickAck<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            after_read(&self.0, buf.filled().len().saturating_sub(before));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuickAck<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connection in ping-pong mode: the server answered the client's messages at
    /// once, so Linux now delays the server's ACKs. The client keeps Nagle on, as the
    /// OpenSSH client's `ssh -W` process and sshd do.
    async fn ping_ponged() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        for _ in 0..3 {
            client.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            server.read_exact(&mut b).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut b).await.unwrap();
        }
        (client, server)
    }

    /// The stall of the module's documentation, timed: the client sends two small
    /// messages in a row and the server reads both. The second waits in the client's
    /// kernel (Nagle) until the server ACKs the first, so how long the server waits for
    /// it is how long its ACK was delayed.
    async fn second_message_wait(quick: bool) -> Duration {
        let (mut client, server) = ping_ponged().await;
        let mut server = QuickAck(server);
        client.write_all(b"KEXINIT").await.unwrap();
        let mut b = [0u8; 7];
        if quick {
            server.read_exact(&mut b).await.unwrap();
        } else {
            server.0.read_exact(&mut b).await.unwrap();
        }
        let start = Instant::now();
        client.write_all(b"ECDH_INIT").await.unwrap();
        let mut b = [0u8; 9];
        server.read_exact(&mut b).await.unwrap();
        start.elapsed()
    }

    /// Without the immediate ACK the second message waits for the delayed-ACK timer
    /// (40 ms on Linux); through `QuickAck` it does not. A busy machine can delay one
    /// attempt, so the wrapped read gets several tries; the plain read must show the
    /// stall at least once for the comparison to mean anything.
    #[tokio::test]
    async fn a_small_read_is_acked_at_once_so_a_nagled_peer_does_not_stall() {
        let mut plain = Vec::new();
        let mut quick = Vec::new();
        for _ in 0..5 {
            plain.push(second_message_wait(false).await);
            quick.push(second_message_wait(true).await);
        }
        assert!(
            plain.iter().any(|d| *d >= Duration::from_millis(30)),
            "premise: a plain read should leave the peer's second message waiting for the \
             delayed ACK (>= 30 ms) at least once: {plain:?}"
        );
        assert!(
            quick.iter().any(|d| *d < Duration::from_millis(15)),
            "the peer's second message still waited for a delayed ACK after a read \
             through QuickAck: {quick:?} (plain reads: {plain:?})"
        );
    }
}
