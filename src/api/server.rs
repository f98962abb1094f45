//! Serving the router over TLS (or plain HTTP on loopback) with the limits hyper and axum
//! do not set by themselves: a cap on open connections, in all and per client source, a
//! deadline from accept to the first complete request head, an idle timeout, HTTP/2
//! stream limits, and graceful shutdown.
//!
//! # Holding a connection costs nothing but a slot, so slots are watched
//!
//! Every connection must deliver a complete request head within `api.header_timeout` of
//! being accepted: that one deadline covers the TLS handshake and hyper-util's protocol
//! detection read (which has no timer of its own), and hyper's header timeout after it.
//! After that, a connection with no request in progress (HTTP/1 keep-alive, or HTTP/2
//! with no open stream, even one that keeps answering PINGs) is closed once it has been
//! idle for `api.idle_timeout`. And one client source (an IPv4 address or an IPv6 /64)
//! holds at most `api.max_connections_per_source` connections, so a few addresses cannot
//! take the `api.max_connections` slots `/healthz` and everyone else need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ApiConfig;

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open requests finish
/// for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    cfg: ApiConfig,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let sources = Arc::new(Sources::default());
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: shed load, never stop serving.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(source_slot) = sources.take(peer.ip(), cfg.max_connections_per_source) else {
            // Closed at once, before any TLS work; no audit record (a flood must not
            // drive the log), a debug line only.
            tracing::debug!(%peer, "per-source connection cap reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let first_request_by = Instant::now() + cfg.header_timeout;
        let idle_timeout = cfg.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            let activity = Arc::new(Activity::new());
            let seen = activity.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let busy = seen.begin();
                let call = app.clone().oneshot(req);
                async move {
                    let response = call.await;
                    drop(busy);
                    response
                }
            });
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout_at(first_request_by, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    let conn = watcher.watch(conn.into_owned());
                    watch_idle(conn, &activity, first_request_by, idle_timeout, peer).await;
                }
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = watcher.watch(conn.into_owned());
                    watch_idle(conn, &activity, first_request_by, idle_timeout, peer).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the shutdown grace period; closing");
    }
}

/// Runs `conn` until it ends, or closes it (by dropping it) when no request head came
/// by `first_request_by`, or when it has had no request in progress for `idle_timeout`.
async fn watch_idle<F: std::future::Future>(
    conn: F,
    activity: &Activity,
    first_request_by: Instant,
    idle_timeout: Duration,
    peer: std::net::SocketAddr,
) {
    tokio::pin!(conn);
    loop {
        let deadline = match activity.idle_since() {
            Idle::Busy => Instant::now() + idle_timeout,
            Idle::Never => first_request_by,
            Idle::Since(t) => t + idle_timeout,
        };
        tokio::select! {
            _ = &mut conn => return,
            // A request ended: the deadline moves.
            _ = activity.ended.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                let expired = match activity.idle_since() {
                    Idle::Busy => false,
                    Idle::Never => now >= first_request_by,
                    Idle::Since(t) => now >= t + idle_timeout,
                };
                if expired {
                    tracing::debug!(%peer, "API connection idle past its deadline; closing");
                    return;
                }
            }
        }
    }
}

/// Whether a connection has a request in progress, and since when it has none.
struct Activity {
    in_progress: AtomicUsize,
    /// When the last request ended; `None` before the first request head.
    last: Mutex<Option<Instant>>,
    ended: tokio::sync::Notify,
}

enum Idle {
    Busy,
    Never,
    Since(Instant),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_progress: AtomicUsize::new(0),
            last: Mutex::new(None),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// A request head arrived; the request counts as in progress until the guard drops.
    fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        InProgress(self.clone())
    }

    fn idle_since(&self) -> Idle {
        if self.in_progress.load(Ordering::SeqCst) > 0 {
            return Idle::Busy;
        }
        match *self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => Idle::Since(t),
            None if self.in_progress.load(Ordering::SeqCst) > 0 => Idle::Busy,
            None => Idle::Never,
        }
    }
}

struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_one();
    }
}

/// Open connections per client source (IPv4 address, IPv6 /64).
#[derive(Default)]
struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    /// A place for one more connection from `ip`, or `None` when its source has `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let source = crate::util::source_prefix(ip, 32, 64);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(source).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

/// One connection's place in its source's count; given back on drop.
struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 with aws-lc-rs, ALPN h2 and http/1.1.
pub fn tls_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
