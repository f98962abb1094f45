//! The shared connection of the async parts (limits, counts, forwards): one
//! `tokio_postgres::Client` (which pipelines concurrent queries), reconnected on demand,
//! every wait bounded.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::StateError;
use super::connect::{CONNECT_WAIT, Target};

/// Longest wait of one call, connecting included: a caller learns "unavailable" within it.
pub const OP_WAIT: Duration = Duration::from_millis(700);
/// After a failed connect, callers are refused at once for this long instead of each
/// trying again (an outage must not become a storm of connects).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Conn {
    client: Option<Arc<Client>>,
    failed_at: Option<Instant>,
    reason: Option<String>,
}

/// A self-healing connection. Cheap to share behind an `Arc`.
pub struct Db {
    target: Target,
    conn: Mutex<Conn>,
    connecting: tokio::sync::Mutex<()>,
    healthy: AtomicBool,
}

impl Db {
    pub fn new(target: Target) -> Arc<Db> {
        Arc::new(Db {
            target,
            conn: Mutex::new(Conn::default()),
            connecting: tokio::sync::Mutex::new(()),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn replica(&self) -> &str {
        &self.target.replica
    }

    /// False after a call failed, until one succeeds.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Why the last call failed, while unhealthy.
    pub fn reason(&self) -> Option<String> {
        if self.healthy() {
            return None;
        }
        self.lock().reason.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, reason: String, drop_client: bool) -> StateError {
        self.healthy.store(false, Ordering::SeqCst);
        let mut c = self.lock();
        if drop_client {
            c.client = None;
        }
        c.reason = Some(reason.clone());
        tracing::warn!(database = %self.target.shown, reason = %reason, "shared state unavailable");
        StateError::Unavailable(reason)
    }

    async fn client(&self) -> Result<Arc<Client>, StateError> {
        if let Some(c) = self.lock().client.clone().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        {
            let c = self.lock();
            if let Some(client) = c.client.clone().filter(|c| !c.is_closed()) {
                return Ok(client);
            }
            if c.failed_at.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE) {
                let reason = c.reason.clone().unwrap_or_else(|| "not connected".into());
                return Err(StateError::Unavailable(reason));
            }
        }
        match tokio::time::timeout(CONNECT_WAIT, self.target.pg.connect(NoTls)).await {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "shared state connection ended");
                    }
                });
                let client = Arc::new(client);
                let mut c = self.lock();
                c.client = Some(client.clone());
                c.failed_at = None;
                Ok(client)
            }
            Ok(Err(e)) => {
                self.lock().failed_at = Some(Instant::now());
                Err(self.fail(format!("cannot connect: {e}"), true))
            }
            Err(_) => {
                self.lock().failed_at = Some(Instant::now());
                Err(self.fail(
                    format!("no connection within {} ms", CONNECT_WAIT.as_millis()),
                    true,
                ))
            }
        }
    }

    /// Runs `op` on the connection, all of it within [`OP_WAIT`].
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StateError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let client = self.client().await?;
            op(client.clone()).await.map_err(|e| {
                let closed = client.is_closed() || e.is_closed();
                self.fail(db_error(&e), closed)
            })
        };
        match tokio::time::timeout(OP_WAIT, work).await {
            Ok(Ok(v)) => {
                self.healthy.store(true, Ordering::SeqCst);
                Ok(v)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.fail(format!("no answer within {} ms", OP_WAIT.as_millis()), true)),
        }
    }

    /// One round trip (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StateError> {
        self.run(|c| async move { c.simple_query("SELECT 1").await.map(|_| ()) })
            .await
    }
}

/// The database's message, with its SQLSTATE when it has one (never a parameter value:
/// tokio-postgres does not put them in errors).
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
