//! A forwarder's loop: a cursor on the log (read from the store, woken by the committed head,
//! like a subscription) that hands bounded batches to its sink and saves its position only
//! after the sink acknowledged them. Writers never wait for it; a slow or stuck sink only
//! makes it lag, and it holds one batch in memory at most.
//!
//! Invariants:
//! - every entry up to `position` matching the filter was acknowledged by the sink, and so was
//!   every checkpoint up to `checkpoint_index`;
//! - each checkpoint is delivered after every matching entry it covers (and, as the newest
//!   checkpoint is looked up at most once a second, before the entries committed a second or
//!   more after it);
//! - positions are saved after the acknowledgement, so a crash repeats at most the last
//!   unacknowledged batch;
//! - positions are saved in the store, under a lease: when several servers share a log, one
//!   at a time drives each forwarder (it renews the lease with every save, and at least every
//!   third of [`CURSOR_LEASE`]); the others stand by and take over, from the saved position,
//!   once the lease lapses, or at once when its holder releases it at a clean shutdown.

use std::future::Future;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use audit_proto::pb::Filter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::item::{Checkpoint, Item};
use crate::store::{CURSOR_LEASE, CursorClaim, Direction, Read, Store};

/// How often the newest checkpoint is looked up at most.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);
/// Checkpoints read at a time.
const CHECKPOINT_CHUNK: usize = 16;
/// Retry back-off: first wait and longest wait.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Repeated errors and the lag are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How often a standby server tries to claim a forwarder another one holds: soon after that
/// one releases it at shutdown. A refused claim writes nothing.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// When only filtered-out entries pass, the position is saved at most this often.
const IDLE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Why a sink did not take a batch.
#[derive(Debug)]
pub enum SinkError {
    /// Worth retrying (connection refused, timeout, 5xx, 429), after `after` if the receiver
    /// said so.
    Retry {
        /// What went wrong.
        message: String,
        /// The receiver's `Retry-After`, if any.
        after: Option<Duration>,
    },
    /// The receiver refused the batch for good (4xx): the forwarder stops rather than skip it.
    Halt(String),
}

impl SinkError {
    /// A retryable error.
    pub fn retry(message: impl std::fmt::Display) -> Self {
        SinkError::Retry {
            message: message.to_string(),
            after: None,
        }
    }
}

/// Where a forwarder delivers: `send` returns once the receiver acknowledged every item (as far
/// as its transport can tell).
pub trait Sink: Send + 'static {
    /// Delivers `items`, in order.
    fn send(&mut self, items: &[Item]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

pub use super::status::ForwarderStats;

/// A forwarder's cursor and its settings.
pub struct Cursor<S, K> {
    /// The forwarder's name.
    pub name: String,
    /// The log.
    pub store: S,
    /// The receiver.
    pub sink: K,
    /// Entries to deliver.
    pub filter: Filter,
    /// Who this server is when it claims the forwarder's lease.
    pub owner: String,
    /// Every matching entry up to this sequence was acknowledged. Until the lease is claimed,
    /// where a forwarder without a saved position starts: `u64::MAX` (with
    /// `checkpoint_index`) starts at the head.
    pub position: u64,
    /// Every checkpoint up to this index was acknowledged.
    pub checkpoint_index: u64,
    /// Most entries per batch.
    pub batch: usize,
    /// Most encoded bytes of entries per batch.
    pub batch_bytes: usize,
    /// How long a batch that is not full may wait for more entries (zero: sent at once).
    pub linger: Duration,
    /// Cancelled at shutdown: deliver what is committed, for at most `grace`, then stop
    /// between batches.
    pub stopping: CancellationToken,
    /// How long delivery goes on after `stopping`.
    pub grace: Duration,
    /// When delivery stops: set once `stopping` is seen (`None` until then).
    pub stop_deadline: Option<Instant>,
    /// The checkpoint index as last saved (`None` until saved), so that it is written again
    /// only when it changes: most batches hold no checkpoint.
    pub saved_checkpoint_index: Option<u64>,
    /// Position, errors and halt, for metrics.
    pub stats: Arc<ForwarderStats>,
}

/// The key under which the checkpoint index of forwarder `name` is saved.
pub fn checkpoint_key(name: &str) -> String {
    format!("{name}.checkpoints")
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Nothing new.
    None,
    /// The position moved past entries the filter leaves out; nothing was sent or saved.
    Skipped,
    /// Items were delivered and the positions saved.
    Delivered,
}

/// How the loop ends.
enum Stop {
    /// Shutdown, with everything committed delivered (or given up by the caller's timeout).
    Done,
    /// Another server took the lease (this one stalled past it), or the store failed: stand
    /// by and claim the forwarder again, from its saved position.
    Interrupted(String),
    /// A sink refused a batch for good, or the store failed.
    Halted(String),
}

impl<S: Store, K: Sink> Cursor<S, K> {
    /// Runs until shutdown (after delivering what was committed) or until the sink refuses.
    pub async fn run(mut self) {
        let (start, start_index) = (self.position, self.checkpoint_index);
        loop {
            if !self.claim(start, start_index).await {
                return;
            }
            match self.forward().await {
                Stop::Done => {
                    self.release().await;
                    tracing::info!(forwarder = %self.name, position = self.position, "forwarder stopped");
                    return;
                }
                // Logged once; it claims the forwarder again from its saved position.
                Stop::Interrupted(why) => self.stats.retrying(&self.name, self.position, &why),
                Stop::Halted(error) => {
                    self.stats.halted(&self.name, self.position, &error);
                    // Held until shutdown, then let go: the restarted server resumes at once.
                    self.stopping.cancelled().await;
                    self.release().await;
                    return;
                }
            }
        }
    }

    /// Waits until this server holds the forwarder's lease (false: shutdown came first), and
    /// takes the saved positions, or `start` and `start_index` for a new forwarder.
    async fn claim(&mut self, start: u64, start_index: u64) -> bool {
        loop {
            // Both leases (entries and checkpoints), or the owner holding one of them.
            let claimed = async {
                let mut positions = [None, None];
                for (key, saved) in [self.name.clone(), checkpoint_key(&self.name)]
                    .into_iter()
                    .zip(&mut positions)
                {
                    match self.store.cursor(&key, &self.owner, None).await? {
                        CursorClaim::Held { position } => *saved = position,
                        CursorClaim::Busy { owner } => return Ok(Err(owner)),
                    }
                }
                Ok::<_, crate::Error>(Ok((positions[0], positions[1])))
            };
            let wait = match claimed.await {
                Ok(Ok((position, index))) => {
                    self.position = position.unwrap_or(start);
                    self.checkpoint_index = match position {
                        Some(_) => index.unwrap_or(0),
                        None => start_index,
                    };
                    self.saved_checkpoint_index = index;
                    self.stats.running(&self.name, self.position);
                    return true;
                }
                Ok(Err(owner)) => {
                    self.stats.standby(&self.name, &owner);
                    STANDBY_POLL
                }
                Err(error) => {
                    let error = format!("cannot claim it in the store: {error}");
                    self.stats.retrying(&self.name, self.position, &error);
                    BACKOFF_FIRST
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stopping.cancelled() => return false,
            }
        }
    }

    async fn forward(&mut self) -> Stop {
        let mut head = self.store.head();
        if self.position == u64::MAX {
            // `start=now`: the head as it starts, saved before anything else happens so that a
            // restart does not start from a later "now" and skip entries.
            self.position = *head.borrow();
            self.checkpoint_index = match self.store.checkpoint(None).await {
                Ok(newest) => newest.map_or(0, |c| c.index),
                Err(error) => return Stop::Interrupted(format!("store: {error}")),
            };
            if let Err(stop) = self.save().await {
                return stop;
            }
        }
        let pruned = self.store.pruned_through();
        if self.position < pruned {
            // Entries it never delivered were pruned: a forwarder added (or brought back) after
            // retention passed its position. They are gone; it goes on from the oldest kept.
            tracing::warn!(
                forwarder = %self.name,
                position = self.position,
                pruned,
                "entries this forwarder has not delivered were removed by retention; it starts \
                 after them"
            );
            self.position = pruned;
            if let Err(stop) = self.save().await {
                return stop;
            }
        }
        let mut newest_checkpoint = self.checkpoint_index;
        let mut next_poll = Instant::now();
        let mut last_lag_log = Instant::now();
        let mut last_save = Instant::now();
        let mut saved = self.position;
        let mut pending_since: Option<Instant> = None;
        loop {
            let through = *head.borrow_and_update();
            let stopping = self.stopping.is_cancelled();
            if stopping && self.stop_deadline.is_none() {
                self.stop_deadline = Some(Instant::now() + self.grace);
            }
            if self.past_deadline() {
                if self.position != saved
                    && let Err(stop) = self.save().await
                {
                    return stop;
                }
                return Stop::Done;
            }
            let short = through > self.position && through - self.position < self.batch as u64;
            if !stopping && !self.linger.is_zero() && short {
                // Wait a little for a fuller batch.
                let until = *pending_since.get_or_insert_with(Instant::now) + self.linger;
                if Instant::now() < until {
                    tokio::select! {
                        changed = head.changed() => {
                            if changed.is_err() {
                                return Stop::Done;
                            }
                        }
                        () = tokio::time::sleep_until(until) => {}
                        () = self.stopping.cancelled() => {}
                    }
                    continue;
                }
            }
            pending_since = None;
            if stopping || Instant::now() >= next_poll {
                match self.store.checkpoint(None).await {
                    Ok(newest) => newest_checkpoint = newest.map_or(0, |c| c.index),
                    Err(error) => return Stop::Interrupted(format!("store: {error}")),
                }
                next_poll = Instant::now() + CHECKPOINT_POLL;
            }
            self.stats.position.store(self.position, Ordering::Relaxed);
            let progress = match self.deliver_batch(through, newest_checkpoint).await {
                Ok(progress) => progress,
                Err(stop) => return stop,
            };
            self.stats.position.store(self.position, Ordering::Relaxed);
            if progress == Progress::Delivered {
                saved = self.position;
                last_save = Instant::now();
            } else if (self.position != saved
                && (stopping || last_save.elapsed() >= IDLE_SAVE_EVERY))
                || last_save.elapsed() >= CURSOR_LEASE / 3
            {
                // Filtered-out entries passed (saved now and then, not on every commit), or
                // the lease is due for renewal.
                // Only filtered-out entries passed: saved now and then, not on every commit.
                if let Err(stop) = self.save().await {
                    return stop;
                }
                saved = self.position;
                last_save = Instant::now();
            }
            if last_lag_log.elapsed() >= LOG_EVERY {
                let lag = through.saturating_sub(self.position);
                // More than a batch behind: lagging, not just busy.
                if lag > self.batch as u64 {
                    tracing::info!(forwarder = %self.name, position = self.position, lag, "forwarder lagging");
                }
                last_lag_log = Instant::now();
            }
            if progress != Progress::None {
                continue;
            }
            if stopping {
                return Stop::Done;
            }
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return Stop::Done;
                    }
                }
                () = tokio::time::sleep_until(next_poll) => {}
                () = self.stopping.cancelled() => {}
            }
        }
    }

    /// Reads one batch after the position (entries through `through`, checkpoints up to
    /// `newest_checkpoint` that the batch covers), delivers it, and saves the positions.
    async fn deliver_batch(
        &mut self,
        through: u64,
        newest_checkpoint: u64,
    ) -> Result<Progress, Stop> {
        let store_error = |error: crate::error::Error| Stop::Interrupted(format!("store: {error}"));
        let mut entries = Vec::new();
        let mut position = self.position;
        if self.position < through {
            let page = self
                .store
                .read(Read {
                    filter: self.filter.clone(),
                    direction: Direction::Ascending {
                        after: self.position,
                    },
                    through,
                    limit: self.batch,
                    max_bytes: self.batch_bytes,
                })
                .await
                .map_err(store_error)?;
            position = match (page.exhausted, page.entries.last()) {
                (true, _) | (false, None) => through,
                (false, Some(last)) => last.sequence,
            };
            entries = page.entries;
        }
        let mut checkpoints = Vec::new();
        if newest_checkpoint > self.checkpoint_index {
            for stored in self
                .store
                .checkpoints(self.checkpoint_index, CHECKPOINT_CHUNK)
                .await
                .map_err(store_error)?
            {
                let parsed = audit_ledger::Checkpoint::parse_unverified(&stored.note)
                    .map_err(|e| Stop::Halted(format!("checkpoint {}: {e}", stored.index)))?;
                if parsed.size > position {
                    break;
                }
                checkpoints.push(Checkpoint {
                    index: stored.index,
                    size: parsed.size,
                    time: parsed.time,
                    note: stored.note,
                });
            }
        }
        if entries.is_empty() && checkpoints.is_empty() {
            let progress = if position == self.position {
                Progress::None
            } else {
                Progress::Skipped
            };
            self.position = position;
            return Ok(progress);
        }
        let checkpoint_index = checkpoints
            .last()
            .map_or(self.checkpoint_index, |c| c.index);
        let items = merge(entries, checkpoints);
        self.send(&items).await?;
        self.position = position;
        self.checkpoint_index = checkpoint_index;
        self.save().await?;
        Ok(Progress::Delivered)
    }

    /// Sends `items`, retrying with exponential back-off and jitter until the sink takes them
    /// or refuses them for good. The state changes are logged (once each, see `status`).
    async fn send(&mut self, items: &[Item]) -> Result<(), Stop> {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.sink.send(items).await {
                Ok(()) => {
                    self.stats.running(&self.name, self.position);
                    return Ok(());
                }
                Err(SinkError::Halt(error)) => return Err(Stop::Halted(error)),
                Err(SinkError::Retry { message, after }) => {
                    self.stats.retrying(&self.name, self.position, &message);
                    let wait = after.unwrap_or_else(|| jitter(backoff)).min(BACKOFF_MAX);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if self.stopping.is_cancelled() {
                        // Shutting down: this batch is sent again at the next start.
                        return Err(Stop::Done);
                    }
                    let stopped = tokio::select! {
                        () = tokio::time::sleep(wait) => false,
                        () = self.stopping.cancelled() => true,
                    };
                    if stopped {
                        return Err(Stop::Done);
                    }
                }
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.stop_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Saves the positions in the store (renewing the lease).
    async fn save(&mut self) -> Result<(), Stop> {
        let index = self.checkpoint_index;
        let mut writes = vec![(self.name.clone(), self.position)];
        if self.saved_checkpoint_index != Some(index) {
            writes.push((checkpoint_key(&self.name), index));
        }
        for (key, position) in writes {
            match self.store.cursor(&key, &self.owner, Some(position)).await {
                Ok(CursorClaim::Held { .. }) => {}
                Ok(CursorClaim::Busy { owner }) => {
                    return Err(Stop::Interrupted(format!("server {owner} took it over")));
                }
                Err(error) => {
                    return Err(Stop::Interrupted(format!(
                        "cannot save its position: {error}"
                    )));
                }
            }
        }
        self.saved_checkpoint_index = Some(index);
        Ok(())
    }
}

impl<S: Store, K: Sink> Cursor<S, K> {
    /// Saves the positions and lets the leases go (a clean shutdown), so that the next process
    /// or another server takes the forwarder over at once. If this fails, the leases lapse on
    /// their own after [`CURSOR_LEASE`].
    async fn release(&mut self) {
        let writes = [
            (self.name.clone(), self.position),
            (checkpoint_key(&self.name), self.checkpoint_index),
        ];
        for (key, position) in writes {
            match self.store.release_cursor(&key, &self.owner, position).await {
                Ok(CursorClaim::Held { .. }) => {}
                Ok(CursorClaim::Busy { owner }) => {
                    tracing::warn!(forwarder = %self.name, %owner, "another server took this forwarder over before it stopped");
                    return;
                }
                Err(error) => {
                    tracing::warn!(forwarder = %self.name, %error, "cannot release this forwarder; another server takes it over once its lease lapses");
                    return;
                }
            }
        }
    }
}

/// Entries and checkpoints in delivery order: each checkpoint right after the last entry it
/// covers.
fn merge(entries: Vec<audit_proto::pb::AuditEntry>, checkpoints: Vec<Checkpoint>) -> Vec<Item> {
    let mut items = Vec::with_capacity(entries.len() + checkpoints.len());
    let mut checkpoints = checkpoints.into_iter().peekable();
    for entry in entries {
        while let Some(checkpoint) = checkpoints.next_if(|c| c.size < entry.sequence) {
            items.push(Item::Checkpoint(checkpoint));
        }
        items.push(Item::Entry(entry));
    }
    items.extend(checkpoints.map(Item::Checkpoint));
    items
}

/// A wait between `base / 2` and `base`.
fn jitter(base: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let half = base / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64) -> audit_proto::pb::AuditEntry {
        audit_proto::pb::AuditEntry {
            sequence,
            ..Default::default()
        }
    }

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            index: size,
            size,
            time: 0,
            note: String::new(),
        }
    }

    #[test]
    fn checkpoints_follow_the_entries_they_cover() {
        let items = merge(
            vec![entry(3), entry(5), entry(6)],
            vec![checkpoint(2), checkpoint(5), checkpoint(7)],
        );
        let order: Vec<String> = items
            .iter()
            .map(|item| match item {
                Item::Entry(e) => format!("e{}", e.sequence),
                Item::Checkpoint(c) => format!("c{}", c.size),
            })
            .collect();
        assert_eq!(order, ["c2", "e3", "e5", "c5", "e6", "c7"]);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let wait = jitter(Duration::from_millis(400));
            assert!(wait >= Duration::from_millis(200) && wait < Duration::from_millis(400));
        }
    }
}
