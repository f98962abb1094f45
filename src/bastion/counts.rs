//! Authenticated connections per user (`ssh.max_connections_per_user`), behind a trait:
//! [`MemoryCounts`] for one process, `state::counts::PgCounts` for every replica (a row
//! per connection, with a lease). Both pass [`contract`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// What the counts' calls return (a shared count waits for its database).
pub type CountFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a place was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlace {
    /// The user holds `max` connections already.
    Full,
    /// The shared count cannot be read: refused (fail closed); the text is for the log.
    Unavailable(String),
}

/// Connections per key id.
pub trait ConnectionCounts: Send + Sync {
    /// Takes a place for `key_id`'s connection `conn` when it holds fewer than `max`.
    fn take<'a>(
        &'a self,
        key_id: &'a str,
        conn: u64,
        max: usize,
    ) -> CountFuture<'a, Result<(), NoPlace>>;
    /// Gives connection `conn`'s place back (it ended). Never waits.
    fn give_back(&self, key_id: &str, conn: u64);
}

/// The in-process count.
#[derive(Default)]
pub struct MemoryCounts {
    users: Mutex<HashMap<String, usize>>,
}

impl ConnectionCounts for MemoryCounts {
    fn take<'a>(
        &'a self,
        key_id: &'a str,
        _conn: u64,
        max: usize,
    ) -> CountFuture<'a, Result<(), NoPlace>> {
        let mut u = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let n = u.entry(key_id.to_string()).or_insert(0);
        let r = if *n >= max {
            Err(NoPlace::Full)
        } else {
            *n += 1;
            Ok(())
        };
        if u.get(key_id) == Some(&0) {
            u.remove(key_id);
        }
        Box::pin(std::future::ready(r))
    }

    fn give_back(&self, key_id: &str, _conn: u64) {
        let mut u = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = u.get_mut(key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(key_id);
            }
        }
    }
}

/// The behaviour every count must have (run on [`MemoryCounts`] here, on PostgreSQL in
/// `tests/it/state.rs`). `counts` starts empty.
#[doc(hidden)]
pub mod contract {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    pub async fn all(counts: &dyn ConnectionCounts) {
        for conn in 1..=3 {
            counts.take("alice", conn, 3).await.unwrap();
        }
        assert_eq!(counts.take("alice", 4, 3).await, Err(NoPlace::Full));
        // Another user is counted apart.
        counts.take("bob", 5, 3).await.unwrap();
        counts.give_back("alice", 2);
        // A place given back is free again (giving back may finish a moment later).
        let mut ok = false;
        for _ in 0..50 {
            if counts.take("alice", 6, 3).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(ok, "a place given back was not free again");
        assert_eq!(counts.take("alice", 7, 3).await, Err(NoPlace::Full));
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_count_keeps_the_contract() {
        super::contract::all(&super::MemoryCounts::default()).await;
    }
}
