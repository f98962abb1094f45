//! This replica's audit chain in the table `audit_records`, one row per record keyed by
//! `(replica, seq)`.
//!
//! A batch is one `INSERT` (one transaction): committed (`synchronous_commit`, the
//! database's fsync) before [`AuditSink::append`] returns, so a record is durable before
//! its action, as with the file. A failed batch leaves no row; if the failure hid a commit
//! (the connection dropped after the database committed), the next batch first deletes the
//! rows from its first `seq` on, as the file is truncated back. Two processes must not
//! write one chain: a session advisory lock on the replica's name is taken on every
//! connection, and a second writer is refused, as the file's `flock` refuses it; the
//! primary key refuses a forked `seq` besides.
//!
//! The audit writer thread calls the sink; the sink keeps its own single-threaded runtime
//! for the PostgreSQL client, so it never blocks the service's runtime.

use std::io;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::connect::{CONNECT_WAIT, Target};
use super::db::db_error;
use crate::audit::AuditSink;
use crate::audit::record::parse_line;

/// Longest wait for one batch's commit (the audit log waits 1 s for its callers).
const APPEND_WAIT: Duration = Duration::from_millis(800);

/// The PostgreSQL sink of one replica's chain.
pub struct PgSink {
    rt: OwnRuntime,
    inner: Inner,
}

/// The sink's runtime, shut down without waiting when dropped: the sink may be dropped
/// inside the service's runtime (a failed start), where waiting is not allowed.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.0 {
            Some(rt) => rt.block_on(f),
            // Only `drop` takes it.
            None => unreachable!("the sink's runtime is gone"),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    target: Target,
    client: Option<Client>,
    /// A failed batch may have been committed after all: delete its rows first.
    dirty: bool,
}

impl PgSink {
    /// Connects and takes the replica's writer lock.
    pub fn open(target: Target) -> io::Result<PgSink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut sink = PgSink {
            rt: OwnRuntime(Some(rt)),
            inner: Inner {
                target,
                client: None,
                dirty: false,
            },
        };
        // At start the database may be slow to answer (replicas starting together, a busy
        // machine): keep trying for as long as the migration step does before giving up.
        let deadline = std::time::Instant::now() + super::migrate::START_WAIT;
        loop {
            match sink.blocking(|s| s.rt.block_on(s.inner.ensure()).map(|_| ())) {
                Ok(()) => return Ok(sink),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "the audit chain in PostgreSQL: trying again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` off the caller's runtime when there is one (a runtime cannot block on
    /// another inside itself).
    fn blocking<T: Send>(&mut self, f: impl FnOnce(&mut PgSink) -> T + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| f(self))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            f(self)
        }
    }
}

impl Inner {
    async fn ensure(&mut self) -> io::Result<&Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, connection) =
                match tokio::time::timeout(CONNECT_WAIT, self.target.pg.connect(NoTls)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(io::Error::other(format!("cannot connect: {e}"))),
                    Err(_) => return Err(io::Error::other("no connection within 500 ms")),
                };
            tokio::spawn(async move {
                let _ = connection.await;
            });
            // A session of ours that was just dropped may hold the lock for a moment.
            let mut locked = false;
            for _ in 0..8 {
                locked = client
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtextextended('drawbridge-audit:' || $1, 0))",
                        &[&self.target.replica],
                    )
                    .await
                    .map_err(|e| io::Error::other(db_error(&e)))?
                    .get(0);
                if locked {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !locked {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another process writes the audit chain of replica {:?}: each replica \
                         needs its own [state] replica",
                        self.target.replica
                    ),
                ));
            }
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| io::Error::other("not connected"))
    }

    async fn last_async(&mut self) -> io::Result<Option<(u64, String)>> {
        let replica = self.target.replica.clone();
        let client = self.ensure().await?;
        let row = client
            .query_opt(
                "SELECT seq, hash, line FROM audit_records WHERE replica = $1 \
                 ORDER BY seq DESC LIMIT 1",
                &[&replica],
            )
            .await
            .map_err(|e| io::Error::other(db_error(&e)))?;
        let Some(row) = row else { return Ok(None) };
        let line: String = row.get(2);
        let rec = parse_line(line.trim_end_matches('\n').as_bytes()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the last record of replica {replica:?} is invalid: {e}; run `drawbridge \
                     audit verify-postgres --replica {replica}`"
                ),
            )
        })?;
        let seq: i64 = row.get(0);
        let hash: String = row.get(1);
        if u64::try_from(seq).ok() != Some(rec.seq) || hash != rec.hash {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the last record of replica {replica:?} does not match its row"),
            ));
        }
        Ok(Some((rec.seq, rec.hash)))
    }

    async fn append_async(
        &mut self,
        seqs: &[i64],
        hashes: &[String],
        lines: &[String],
    ) -> io::Result<()> {
        let replica = self.target.replica.clone();
        let dirty = self.dirty;
        let client = self.ensure().await?;
        let first = seqs.first().copied().unwrap_or(0);
        let insert = "INSERT INTO audit_records (replica, seq, hash, line) \
                      SELECT $1, s, h, l FROM unnest($2::bigint[], $3::text[], $4::text[]) \
                      AS t(s, h, l)";
        let result = if dirty {
            let delete = format!("DELETE FROM audit_records WHERE replica = $1 AND seq >= {first}");
            async {
                client.batch_execute("BEGIN").await?;
                client.execute(delete.as_str(), &[&replica]).await?;
                client
                    .execute(insert, &[&replica, &seqs, &hashes, &lines])
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await
        } else {
            client
                .execute(insert, &[&replica, &seqs, &hashes, &lines])
                .await
                .map(|_| ())
        };
        result.map_err(|e| io::Error::other(db_error(&e)))
    }
}

impl AuditSink for PgSink {
    fn last(&mut self) -> io::Result<Option<(u64, String)>> {
        self.blocking(|s| {
            let inner = &mut s.inner;
            s.rt.block_on(async { tokio::time::timeout(APPEND_WAIT, inner.last_async()).await })
                .unwrap_or_else(|_| Err(io::Error::other("no answer within 800 ms")))
        })
    }

    fn append(&mut self, lines: &[String]) -> io::Result<()> {
        let mut seqs = Vec::with_capacity(lines.len());
        let mut hashes = Vec::with_capacity(lines.len());
        let mut bodies = Vec::with_capacity(lines.len());
        for line in lines {
            let body = line.trim_end_matches('\n');
            let rec = parse_line(body.as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            seqs.push(i64::try_from(rec.seq).map_err(io::Error::other)?);
            hashes.push(rec.hash);
            bodies.push(body.to_string());
        }
        self.blocking(|s| {
            let (rt, inner) = (&s.rt, &mut s.inner);
            let mut tries = 0;
            loop {
                tries += 1;
                let started = std::time::Instant::now();
                let result = rt
                    .block_on(async {
                        tokio::time::timeout(
                            APPEND_WAIT,
                            inner.append_async(&seqs, &hashes, &bodies),
                        )
                        .await
                    })
                    .unwrap_or_else(|_| Err(io::Error::other("no commit within 800 ms")));
                match result {
                    Ok(()) => {
                        inner.dirty = false;
                        return Ok(());
                    }
                    Err(e) => {
                        // Whatever state the session is in (a transaction cut short, a
                        // statement still running), a new one starts clean; the rows of
                        // this batch, if they were committed after all, go first.
                        inner.client = None;
                        inner.dirty = true;
                        // A connection the database had closed (a restart) fails at
                        // once: one more try on a new connection.
                        if tries >= 2 || started.elapsed() > Duration::from_millis(150) {
                            return Err(e);
                        }
                    }
                }
            }
        })
    }
}

/// Reads a replica's chain as the lines of a file (for `audit verify-postgres`,
/// `audit export`), in `seq` order, `batch` rows per query.
pub async fn read_chain(
    client: &Client,
    replica: &str,
    mut each: impl FnMut(&str) -> io::Result<()>,
) -> io::Result<u64> {
    let mut after: i64 = 0;
    let mut n = 0u64;
    loop {
        let rows = client
            .query(
                "SELECT seq, line FROM audit_records WHERE replica = $1 AND seq > $2 \
                 ORDER BY seq LIMIT 10000",
                &[&replica, &after],
            )
            .await
            .map_err(|e| io::Error::other(db_error(&e)))?;
        if rows.is_empty() {
            return Ok(n);
        }
        for row in rows {
            after = row.get(0);
            let line: String = row.get(1);
            each(&line)?;
            n += 1;
        }
    }
}

/// Every replica with a chain, by name.
pub async fn replicas(client: &Client) -> io::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT replica FROM audit_records ORDER BY replica",
            &[],
        )
        .await
        .map_err(|e| io::Error::other(db_error(&e)))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}
