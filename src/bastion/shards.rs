//! Connection shards: every SSH connection runs, with the tasks it spawns (russh's session
//! task, its forwards), on one of a few single-threaded runtimes, one per core, dealt round
//! robin.
//!
//! Why: on the multi-threaded runtime, each SSH packet that russh's session task hands to
//! a forward task (an mpsc send per 32 KiB) could wake that task on another worker
//! thread: a futex or eventfd write, a context switch, cold caches. Measured on the
//! `ssh -J` path (`perf record -e cpu-clock`), scheduler switches were the largest cost
//! after the cipher. On one thread the hand-off is a push on a local run queue. Connections
//! still use every core, through the shards.
//!
//! What a connection shares with the rest of the bastion (the audit writer, the policy,
//! the registry, the pre-auth table, metrics) goes through channels, locks and atomics
//! that work across runtimes; timers and sockets belong to the shard the connection runs
//! on (the accepted socket is moved onto it with `into_std` / `from_std`).

use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// How long a shard waits, when the bastion stops, for blocking work its tasks started.
const STOP_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Shards {
    handles: Vec<Handle>,
    next: usize,
    /// Dropping a sender ends its shard's thread (see [`Shards::stop`]).
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// One shard per core the process may use (at least one).
    pub(super) fn per_core() -> std::io::Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start(n)
    }

    pub(super) fn start(n: usize) -> std::io::Result<Self> {
        let mut shards = Shards {
            handles: Vec::new(),
            next: 0,
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("ssh-shard-{i}"))
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            shards.handles.push(runtime.handle().clone());
            shards.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("ssh-shard-{i}"))
                .spawn(move || drive(runtime, stopped))?;
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// The shard the next connection goes to (the caller's runtime if there were none,
    /// which `start` never allows).
    pub(super) fn next(&mut self) -> Handle {
        let i = self.next % self.handles.len().max(1);
        self.next = self.next.wrapping_add(1);
        self.handles.get(i).cloned().unwrap_or_else(Handle::current)
    }

    /// Ends every shard: the tasks still on them are dropped. Call after the connections
    /// were drained or aborted.
    pub(super) fn stop(self) {
        drop(self.stops);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A shard's thread: runs the tasks spawned onto `runtime` until `stopped`.
fn drive(runtime: Runtime, stopped: oneshot::Receiver<()>) {
    runtime.block_on(async {
        let _ = stopped.await;
    });
    runtime.shutdown_timeout(STOP_WAIT);
}
