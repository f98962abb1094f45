//! What the client sends one recorded channel, on its way to the target, in order.
//!
//! The inner server's handler must never wait for the target: while it waits, its session
//! reads nothing from the client, not even the window adjustment the target's output is
//! waiting for, and a target that stops reading while its output is stuck (an echo read
//! slowly) would stop both directions for good. So the handler only queues here, and a
//! writer task of the channel's own sends to the target as the target's window allows.
//!
//! The queue is bounded by the window: the handler holds the channel's window
//! (`Handler::window_held`), and the writer gives bytes back only once the target took
//! them, so a client that keeps to its window never has more than one window queued. A
//! client that sends past it overruns the queue and its session ends. Data is coalesced
//! into chunks, so a flood of one-byte packets costs bytes, not items; other messages
//! (requests, signals, window changes, EOF) are few, and capped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// Data items are coalesced up to this size.
const CHUNK: usize = 32 * 1024;
/// Items other than data a channel may have queued at once.
pub const MAX_CONTROL: usize = 256;

/// One message for the target's side of a channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<C> {
    Data(Bytes),
    Control(C),
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Overrun {
    /// More data than the window allows.
    Data { queued: usize, limit: usize },
    /// Too many requests, signals or window changes waiting.
    Control,
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overrun::Data { queued, limit } => write!(
                f,
                "the client sent past its window ({queued} bytes waiting for the target, at most {limit})"
            ),
            Overrun::Control => write!(
                f,
                "more than {MAX_CONTROL} requests wait for a target that does not read"
            ),
        }
    }
}

#[derive(Debug)]
struct Queue<C> {
    items: VecDeque<QueuedItem<C>>,
    bytes: usize,
    controls: usize,
    /// The handler's side is gone: the writer ends once the queue is empty.
    closed: bool,
}

#[derive(Debug)]
enum QueuedItem<C> {
    Data(BytesMut),
    Control(C),
}

#[derive(Debug)]
struct Shared<C> {
    queue: Mutex<Queue<C>>,
    ready: Notify,
    limit: usize,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Queue<C>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handler's side: queues, never waits.
#[derive(Debug)]
pub struct Outbox<C> {
    shared: Arc<Shared<C>>,
}

/// The writer's side: takes in order, waits when there is nothing.
#[derive(Debug)]
pub struct Inbox<C> {
    shared: Arc<Shared<C>>,
}

/// A queue holding at most `limit` bytes of data.
pub fn outbox<C>(limit: usize) -> (Outbox<C>, Inbox<C>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            bytes: 0,
            controls: 0,
            closed: false,
        }),
        ready: Notify::new(),
        limit,
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl<C> Outbox<C> {
    /// Queues data after what is queued; refused past the window.
    pub fn data(&self, data: &[u8]) -> Result<(), Overrun> {
        let mut q = self.shared.lock();
        let queued = q.bytes.saturating_add(data.len());
        if queued > self.shared.limit {
            return Err(Overrun::Data {
                queued,
                limit: self.shared.limit,
            });
        }
        q.bytes = queued;
        match q.items.back_mut() {
            Some(QueuedItem::Data(last)) if last.len() + data.len() <= CHUNK => {
                last.extend_from_slice(data);
            }
            _ => q.items.push_back(QueuedItem::Data(BytesMut::from(data))),
        }
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Queues a message other than data after what is queued.
    pub fn control(&self, item: C) -> Result<(), Overrun> {
        let mut q = self.shared.lock();
        if q.controls >= MAX_CONTROL {
            return Err(Overrun::Control);
        }
        q.controls += 1;
        q.items.push_back(QueuedItem::Control(item));
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<C> Drop for Outbox<C> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

impl<C> Inbox<C> {
    /// The next message, in the order queued; `None` once the handler's side is gone and
    /// everything it queued has been taken. The data returned still counts against the
    /// window until [`Inbox::taken`] says the target has it.
    pub async fn next(&self) -> Option<Item<C>> {
        loop {
            {
                let mut q = self.shared.lock();
                match q.items.pop_front() {
                    Some(QueuedItem::Data(d)) => return Some(Item::Data(d.freeze())),
                    Some(QueuedItem::Control(c)) => {
                        q.controls -= 1;
                        return Some(Item::Control(c));
                    }
                    None if q.closed => return None,
                    None => {}
                }
            }
            self.shared.ready.notified().await;
        }
    }

    /// `bytes` of data taken by [`Inbox::next`] are with the target: room for as many.
    pub fn taken(&self, bytes: usize) {
        let mut q = self.shared.lock();
        q.bytes = q.bytes.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn now<C>(inbox: &Inbox<C>) -> Option<Item<C>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(50), inbox.next())
                .await
                .unwrap_or_else(|_| panic!("nothing queued"))
        })
    }

    #[test]
    fn data_and_controls_come_out_in_the_order_queued_with_small_writes_coalesced() {
        let (out, inbox) = outbox::<&str>(1024);
        out.data(b"ab").unwrap();
        out.data(b"cd").unwrap();
        out.control("eof").unwrap();
        out.data(b"ef").unwrap();
        assert_eq!(now(&inbox), Some(Item::Data(Bytes::from_static(b"abcd"))));
        assert_eq!(now(&inbox), Some(Item::Control("eof")));
        assert_eq!(now(&inbox), Some(Item::Data(Bytes::from_static(b"ef"))));
        drop(out);
        assert_eq!(now(&inbox), None);
    }

    #[test]
    fn data_past_the_window_is_refused_until_the_target_has_taken_some() {
        let (out, inbox) = outbox::<()>(10);
        out.data(&[1; 6]).unwrap();
        assert_eq!(
            out.data(&[2; 5]),
            Err(Overrun::Data {
                queued: 11,
                limit: 10
            })
        );
        // Taken by the writer but not yet with the target: still counted.
        let Some(Item::Data(d)) = now(&inbox) else {
            panic!("no data")
        };
        assert!(out.data(&[2; 5]).is_err());
        inbox.taken(d.len());
        out.data(&[2; 5]).unwrap();
    }

    #[test]
    fn a_flood_of_one_byte_packets_costs_chunks_not_items() {
        let (out, inbox) = outbox::<()>(1 << 20);
        for _ in 0..(2 * CHUNK) {
            out.data(b"x").unwrap();
        }
        assert_eq!(inbox.shared.lock().items.len(), 2);
    }

    #[test]
    fn controls_are_capped() {
        let (out, inbox) = outbox::<u32>(10);
        for i in 0..MAX_CONTROL {
            out.control(i as u32).unwrap();
        }
        assert_eq!(out.control(0), Err(Overrun::Control));
        assert_eq!(now(&inbox), Some(Item::Control(0)));
        out.control(1).unwrap();
    }

    #[test]
    fn what_was_queued_before_the_handler_went_is_still_delivered() {
        let (out, inbox) = outbox::<&str>(100);
        out.data(b"last words").unwrap();
        out.control("close").unwrap();
        drop(out);
        assert_eq!(
            now(&inbox),
            Some(Item::Data(Bytes::from_static(b"last words")))
        );
        assert_eq!(now(&inbox), Some(Item::Control("close")));
        assert_eq!(now(&inbox), None);
    }
}
