//! Live subscriptions: each subscriber is a cursor on the log that reads what it has not sent
//! from the store, woken by the committed head. Writers never wait for subscribers; a slow
//! subscriber only delays its own cursor, and catches up from the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use audit_proto::pb::{Filter, Heartbeat, SubscribeResponse, subscribe_response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Error;
use crate::store::{Direction, Read, Store};
use crate::validate::now;

/// Entries read from the store at a time by one cursor.
const READ_CHUNK: usize = 256;
/// Messages buffered between a cursor and its gRPC stream.
const STREAM_BUFFER: usize = 64;

/// The stream of messages sent to one subscriber.
pub type SubscriptionStream = ReceiverStream<Result<SubscribeResponse, Status>>;

/// Opens subscriptions and enforces the cap on how many run at once.
#[derive(Clone)]
pub struct Hub<S> {
    store: S,
    slots: Arc<Semaphore>,
    max_subscribers: usize,
    heartbeat_interval: Duration,
    max_read_bytes: usize,
    shutdown: CancellationToken,
    /// The position of every running cursor (dead ones are pruned as new ones start).
    positions: Arc<Mutex<Vec<Weak<AtomicU64>>>>,
}

impl<S> Hub<S> {
    /// Subscriptions running now.
    pub fn subscribers(&self) -> usize {
        self.max_subscribers
            .saturating_sub(self.slots.available_permits())
    }

    /// The position of the subscriber furthest behind, if any runs.
    pub fn slowest_position(&self) -> Option<u64> {
        let positions = self.positions.lock().expect("positions lock");
        positions
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.load(Ordering::Relaxed))
            .min()
    }
}

impl<S: Store + Clone> Hub<S> {
    /// A hub over `store`; its streams end when `shutdown` is cancelled.
    pub fn new(
        store: S,
        max_subscribers: usize,
        heartbeat_interval: Duration,
        max_read_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            slots: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            heartbeat_interval,
            max_read_bytes,
            shutdown,
            positions: Arc::default(),
        }
    }

    /// Starts a subscription sending entries that match `filter` with a sequence above `after`.
    pub fn subscribe(&self, filter: Filter, after: u64) -> Result<SubscriptionStream, Error> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "too many subscribers (limit {}); retry later",
                self.max_subscribers
            ))
        })?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let shared_position = Arc::new(AtomicU64::new(after));
        {
            let mut positions = self.positions.lock().expect("positions lock");
            // Bounded by the subscriber cap: the dead are dropped before one is added.
            positions.retain(|p| p.strong_count() > 0);
            positions.push(Arc::downgrade(&shared_position));
        }
        let cursor = Cursor {
            store: self.store.clone(),
            filter,
            position: after,
            sender,
            heartbeat_interval: self.heartbeat_interval,
            max_read_bytes: self.max_read_bytes,
            shutdown: self.shutdown.clone(),
            shared_position,
            _slot: permit,
        };
        tokio::spawn(cursor.run());
        Ok(ReceiverStream::new(receiver))
    }
}

/// One subscriber's position in the log.
struct Cursor<S> {
    store: S,
    filter: Filter,
    /// Every matching entry up to this sequence has been sent.
    position: u64,
    sender: mpsc::Sender<Result<SubscribeResponse, Status>>,
    heartbeat_interval: Duration,
    max_read_bytes: usize,
    shutdown: CancellationToken,
    /// `position`, as the hub's metrics read it.
    shared_position: Arc<AtomicU64>,
    _slot: OwnedSemaphorePermit,
}

/// A cursor stops: the subscriber went away or the server is shutting down.
struct Ended;

impl<S: Store> Cursor<S> {
    async fn run(mut self) {
        let mut head = self.store.head();
        // The first message tells the subscriber where it starts, so that even a stream that
        // drops before any entry can be resumed without a gap.
        if self.heartbeat().await.is_err() {
            return;
        }
        let mut last_sent = Instant::now();
        loop {
            let through = *head.borrow_and_update();
            match self.catch_up(through).await {
                Ok(true) => last_sent = Instant::now(),
                Ok(false) => {}
                Err(Ended) => return,
            }
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(last_sent + self.heartbeat_interval) => {
                    if self.heartbeat().await.is_err() {
                        return;
                    }
                    last_sent = Instant::now();
                }

                () = self.shutdown.cancelled() => return,
                () = self.sender.closed() => return,
            }
        }
    }

    /// Sends every matching entry up to `through`; returns whether any was sent.
    async fn catch_up(&mut self, through: u64) -> Result<bool, Ended> {
        let mut sent = false;
        while self.position < through {
            let read = Read {
                filter: self.filter.clone(),
                direction: Direction::Ascending {
                    after: self.position,
                },
                through,
                limit: READ_CHUNK,
                max_bytes: self.max_read_bytes,
            };
            let page = match self.store.read(read).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = self.send(Err(error.into())).await;
                    return Err(Ended);
                }
            };
            for entry in page.entries {
                let sequence = entry.sequence;
                let message = subscribe_response::Message::Entry(entry);
                self.send(Ok(SubscribeResponse {
                    message: Some(message),
                }))
                .await?;
                self.position = sequence;
                self.shared_position.store(sequence, Ordering::Relaxed);
                sent = true;
            }
            if page.exhausted {
                self.position = through;
            }
            self.shared_position.store(self.position, Ordering::Relaxed);
        }
        Ok(sent)
    }

    /// Tells the subscriber that every matching entry up to its position has been sent.
    async fn heartbeat(&self) -> Result<(), Ended> {
        let heartbeat = subscribe_response::Message::Heartbeat(Heartbeat {
            sequence: self.position,
            time: Some(now()),
        });
        self.send(Ok(SubscribeResponse {
            message: Some(heartbeat),
        }))
        .await
    }

    /// Waits for room in the stream, unless the subscriber leaves or the server shuts down.
    async fn send(&self, message: Result<SubscribeResponse, Status>) -> Result<(), Ended> {
        tokio::select! {
            sent = self.sender.send(message) => sent.map_err(|_| Ended),
            () = self.shutdown.cancelled() => Err(Ended),
        }
    }
}
