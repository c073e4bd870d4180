//! The log engine: the rules that make the audit log what it is, over any [`Backend`].
//!
//! One writer thread owns the backend's write connection and group-commits (see
//! [`super::writer`]): sequences, the idempotency rule, the hash chain and Merkle frontier,
//! checkpoint signing, poisoning after a failed commit, the recent-entries window and the
//! head that wakes cursors all live there, once. Reads go through a small pool of the
//! backend's read connections on blocking threads, or are answered from the recent window.
//!
//! A shared backend (several replicas on one database) hands the writer the log's tip under a
//! lock at the start of every group, so every replica extends one chain; a thread follows the
//! head that other replicas commit; and a lost database is recovered instead of poisoning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use audit_ledger::{Hash, PublicKey, SigningKey};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::backend::{Backend, CursorWrite, Reader};
use super::recent::{self, Recent};
use super::signer::{Checkpointing, Signer};
use super::verify::{self, Refusal};
use super::writer::{PruneRequest, WriteJob, Writer};
use super::{
    CursorClaim, Direction, Page, PruneStep, Read, Receipt, Stats, StatsQuery, Store,
    StoredCheckpoint,
};
use crate::error::Error;
use crate::validate::NewEntry;

/// Tuning of the log engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most bytes of entries waiting for the writer.
    pub max_pending_bytes: usize,
    /// Most entries committed in one group.
    pub max_group_entries: usize,
    /// Read connections in the pool.
    pub read_connections: usize,
    /// Signing of checkpoints.
    pub checkpointing: Checkpointing,
}

/// What happened to entries handed to the writer, as counted by a [`CommitObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryOutcome {
    /// Stored under a new sequence.
    Stored,
    /// A retry of an id already stored with the same content: answered with the first receipt.
    Retried,
    /// Refused: its id is stored with other content.
    Conflict,
    /// Not stored: the commit failed.
    Failed,
}

/// Told by the writer thread what each group commit did (metrics, without the engine knowing
/// how they are exported). Called on the writer thread: must not block.
pub trait CommitObserver: Send + Sync {
    /// A group of `entries` entries was committed in `took` (the backend transaction).
    fn committed(&self, entries: usize, took: Duration);
    /// `count` entries ended as `outcome`.
    fn entries(&self, outcome: EntryOutcome, count: usize);
    /// A signed checkpoint was committed.
    fn checkpoint_signed(&self);
}

/// The observer of a log, set once after it opened (see [`Log::observe`]).
pub(super) type ObserverSlot = Arc<OnceLock<Arc<dyn CommitObserver>>>;

/// The audit log over a backend. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken by `close`; the writer stops once it is gone and the queue is drained.
    jobs: RwLock<Option<mpsc::UnboundedSender<WriteJob>>>,
    /// Bytes the queue may still take; bounds the memory of waiting writes.
    pending_bytes: Arc<Semaphore>,
    max_pending_bytes: u32,
    readers: Readers,
    /// The newest committed entries, which answer the reads of subscribers that keep up.
    recent: Arc<RwLock<Recent>>,
    head: watch::Receiver<u64>,
    /// Retention's horizon as the writer last committed it.
    pruned: watch::Receiver<u64>,
    writable: watch::Receiver<bool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    follower: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    public_key: PublicKey,
    /// Why the log opened read-only (it did not verify), if it did.
    read_only: Option<String>,
    /// Whether the backend recovers from failures (then a refused write says "retry").
    shared: bool,
    observer: ObserverSlot,
}

/// Bytes a job is charged in the write queue: its entries plus bookkeeping.
fn queued_bytes(entries: &[NewEntry]) -> usize {
    entries
        .iter()
        .map(|new| new.entry.encoded_len() + std::mem::size_of::<NewEntry>())
        .sum::<usize>()
        + std::mem::size_of::<WriteJob>()
}

impl Log {
    /// Opens the log over `backend`: verifies it (see [`super::verify`]), signs a first
    /// checkpoint if it needs one, and starts the writer. `writable` is the backend's own
    /// verdict (a start-up write probe); `migrated` is true when its schema was just migrated
    /// from a version without checkpoints.
    pub fn open(
        mut backend: Box<dyn Backend>,
        key: SigningKey,
        writable: bool,
        migrated: bool,
        options: &Options,
    ) -> Result<Self, Error> {
        let shared = backend.shared();
        let public_key = key.public_key();
        let readers = Readers::open(backend.as_ref(), options.read_connections.max(1))?;
        let mut reader = readers.take();
        let verdict = verify::verify(
            reader.as_mut(),
            &public_key,
            &options.checkpointing,
            migrated,
        );
        let head = reader.head();
        readers.give_back(reader);
        let (verified, read_only) = match verdict? {
            Ok(verified) => (Some(verified), None),
            Err(Refusal::WrongKey(reason)) if shared => {
                return Err(Error::Config(format!(
                    "{reason}: every replica of a shared log must use the log's signing key"
                )));
            }
            Err(refusal) => {
                tracing::error!(
                    reason = %refusal,
                    "the store did not verify: it is open read-only, no checkpoint will be \
                     signed and writes are refused (run `audit verify` on a copy)"
                );
                (
                    None,
                    Some(format!("the log did not verify at start-up: {refusal}")),
                )
            }
        };
        let mut signer = Signer::new(key, &options.checkpointing);
        let (tip, writable) = match verified {
            Some(verified) => {
                let mut tip = verified.tip;
                let mut signed = None;
                if verified.sign_now {
                    let (signed_tip, checkpoint) =
                        super::writer::sign_at_start(backend.as_mut(), &signer, tip)?;
                    tip = signed_tip;
                    signed = Some(checkpoint);
                }
                signer.committed(&tip, signed.as_ref());
                (tip, writable)
            }
            None => (super::backend::Tip::empty(), false),
        };
        let head_now = if read_only.is_some() {
            head?
        } else {
            tip.sequence
        };
        let (head_tx, head_rx) = watch::channel(head_now);
        let head_tx = Arc::new(head_tx);
        let (pruned_tx, pruned_rx) = watch::channel(tip.pruned);
        let (writable_tx, writable_rx) = watch::channel(writable);
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let recent = Arc::new(RwLock::new(Recent::new(
            recent::MAX_ENTRIES,
            recent::MAX_BYTES,
        )));
        let follower = match backend.follow_head() {
            Some(follower) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (head, stopped) = (head_tx.clone(), stop.clone());
                let thread = std::thread::Builder::new()
                    .name("audit-store-head".into())
                    .spawn(move || follower.run(&|seen| advance(&head, seen), &stopped))
                    .map_err(|e| Error::Internal(format!("spawn head thread: {e}")))?;
                Some((stop, thread))
            }
            None => None,
        };
        let observer = ObserverSlot::default();
        let writer = Writer::new(
            backend,
            jobs_rx,
            recent.clone(),
            tip,
            options.max_group_entries.max(1),
            head_tx,
            pruned_tx,
            writable_tx,
            signer,
            observer.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("audit-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Internal(format!("spawn writer thread: {e}")))?;
        let max_pending_bytes = u32::try_from(options.max_pending_bytes)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32)
            .max(1);
        tracing::info!(head = head_now, shared, "log opened");
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: RwLock::new(Some(jobs_tx)),
                pending_bytes: Arc::new(Semaphore::new(max_pending_bytes as usize)),
                max_pending_bytes,
                readers,
                recent,
                head: head_rx,
                pruned: pruned_rx,
                writable: writable_rx,
                writer: Mutex::new(Some(handle)),
                follower: Mutex::new(follower),
                public_key,
                read_only,
                shared,
                observer,
            }),
        })
    }

    /// Stops accepting writes, lets the writer commit what is queued, and waits for it.
    pub async fn close(&self) {
        self.inner.jobs.write().expect("jobs lock").take();
        let handle = self.inner.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.inner.readers.close().await;
        let follower = self.inner.follower.lock().expect("follower lock").take();
        if let Some((stop, thread)) = follower {
            stop.store(true, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Tells `observer` what every later group commit does. Set after opening, so that
    /// backends and their tests open the log without it; only the first observer counts.
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    /// Bytes of entries waiting for the writer now (at most `max_pending_bytes`).
    pub fn queued_bytes(&self) -> usize {
        let free = self.inner.pending_bytes.available_permits();
        (self.inner.max_pending_bytes as usize).saturating_sub(free)
    }

    /// Hands a job to the writer.
    fn queue(&self, job: WriteJob) -> Result<(), Error> {
        let jobs = self.inner.jobs.read().expect("jobs lock").clone();
        jobs.ok_or(Error::ShuttingDown)?
            .send(job)
            .map_err(|_| Error::ShuttingDown)
    }

    /// Queues a cursor write (claim, save or release) with the next group and waits for it.
    async fn write_cursor(
        &self,
        name: &str,
        owner: &str,
        position: Option<u64>,
        release: bool,
    ) -> Result<CursorClaim, Error> {
        if let Some(reason) = &self.inner.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let write = CursorWrite {
            name: name.to_string(),
            owner: owner.to_string(),
            position,
            now_ms,
            lease_ms: super::CURSOR_LEASE.as_millis() as i64,
            release,
        };
        let (claim, claimed) = oneshot::channel();
        self.queue_bookkeeping(Some((write, claim)), None)?;
        claimed.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues a job without entries (a cursor write or a retention step) with the next group.
    fn queue_bookkeeping(
        &self,
        cursor: Option<(CursorWrite, oneshot::Sender<Result<CursorClaim, Error>>)>,
        prune: Option<PruneRequest>,
    ) -> Result<(), Error> {
        let pending = self
            .inner
            .pending_bytes
            .clone()
            .try_acquire_many_owned(queued_bytes(&[]) as u32)
            .map_err(|_| Error::Overloaded("write queue is full; retry later".into()))?;
        let (reply, _) = oneshot::channel();
        self.queue(WriteJob {
            entries: Vec::new(),
            cursor,
            prune,
            reply,
            _pending: pending,
        })
    }

    /// Runs `work` on a pooled read connection.
    async fn with_reader<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Reader) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.inner.readers.run(work).await
    }

    #[cfg(test)]
    pub(super) fn recent_read(&self, read: &Read) -> Option<Page> {
        let shared = self.inner.recent.read().expect("recent lock").read(read);
        shared.map(|s| s.into_page())
    }

    #[cfg(test)]
    pub(super) async fn backend_read(&self, read: Read) -> Result<Page, Error> {
        self.with_reader(move |r| r.read(&read)).await
    }
}

/// Moves the head forward to `seen` (never back).
pub(super) fn advance(head: &watch::Sender<u64>, seen: u64) {
    head.send_if_modified(|current| {
        let moved = seen > *current;
        if moved {
            *current = seen;
        }
        moved
    });
}

impl Store for Log {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Receipt>, Error> {
        if let Some(reason) = &self.inner.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        if !*self.inner.writable.borrow() {
            return Err(Error::StoreFailed(if self.inner.shared {
                "the database is unavailable; retry later".into()
            } else {
                "store failed earlier; restart required".into()
            }));
        }
        let bytes = u32::try_from(queued_bytes(&entries))
            .unwrap_or(u32::MAX)
            .min(self.inner.max_pending_bytes);
        let pending = self
            .inner
            .pending_bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| Error::Overloaded("write queue is full; retry later".into()))?;
        let (reply, response) = oneshot::channel();
        let job = WriteJob {
            entries,
            cursor: None,
            prune: None,
            reply,
            _pending: pending,
        };
        self.queue(job)?;
        response.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn cursor(
        &self,
        name: &str,
        owner: &str,
        position: Option<u64>,
    ) -> Result<CursorClaim, Error> {
        self.write_cursor(name, owner, position, false).await
    }

    async fn release_cursor(
        &self,
        name: &str,
        owner: &str,
        position: u64,
    ) -> Result<CursorClaim, Error> {
        self.write_cursor(name, owner, Some(position), true).await
    }

    async fn read(&self, read: Read) -> Result<Page, Error> {
        let after = match read.direction {
            Direction::Ascending { after } => Some(after),
            Direction::Descending { .. } => None,
        };
        let horizon = self.pruned_through();
        if let Some(after) = after
            && after < horizon
        {
            return Err(Error::Pruned { through: horizon });
        }
        let shared = self.inner.recent.read().expect("recent lock").read(&read);
        if let Some(shared) = shared {
            return Ok(shared.into_page());
        }
        self.with_reader(move |r| {
            let page = r.read(&read)?;
            // Another replica may have pruned past `after` since this one last saw the
            // horizon. Pruning only ever moves a prefix, so if nothing after `after` is pruned
            // now, nothing was when the page was read.
            if let Some(after) = after
                && let Some((tail, _)) = r.pruned_tail()?
                && tail > after
            {
                return Err(Error::Pruned {
                    through: tail.max(horizon),
                });
            }
            Ok(page)
        })
        .await
    }

    async fn first_received_since(&self, nanos: i64) -> Result<Option<u64>, Error> {
        let horizon = self.pruned_through();
        self.with_reader(move |r| {
            let first = r.first_received_since(nanos)?;
            let pruned = match r.pruned_tail()? {
                // Entries received at or after `nanos` may be among the pruned ones.
                Some((tail, received)) => (received >= nanos).then_some(tail.max(horizon)),
                None => None,
            };
            match (pruned, first) {
                (Some(through), _) => Err(Error::Pruned { through }),
                (None, Some(first)) if first <= horizon => Err(Error::Pruned { through: horizon }),
                (None, first) => Ok(first),
            }
        })
        .await
    }

    fn public_key(&self) -> PublicKey {
        self.inner.public_key.clone()
    }

    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error> {
        self.with_reader(move |r| r.checkpoint(size)).await
    }

    async fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error> {
        self.with_reader(move |r| r.checkpoints(after, limit)).await
    }

    async fn entry_hash(&self, sequence: u64) -> Result<Option<Hash>, Error> {
        self.with_reader(move |r| r.entry_hash(sequence)).await
    }

    async fn tree_hashes(&self, ranges: Vec<std::ops::Range<u64>>) -> Result<Vec<Hash>, Error> {
        self.with_reader(move |r| {
            let mut hashes = Vec::with_capacity(ranges.len());
            for range in ranges {
                let mut tree = audit_ledger::merkle::Frontier::new();
                r.hashes(range.start, range.end, &mut |_, entry_hash, _| {
                    tree.push(&entry_hash);
                    true
                })?;
                if tree.size() != range.end - range.start {
                    return Err(Error::Internal(format!(
                        "entries {}..={} are not all stored",
                        range.start + 1,
                        range.end
                    )));
                }
                hashes.push(tree.root());
            }
            Ok(hashes)
        })
        .await
    }

    async fn stats(&self, query: StatsQuery) -> Result<Stats, Error> {
        self.with_reader(move |r| r.stats(&query)).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.clone()
    }

    fn pruned_through(&self) -> u64 {
        *self.inner.pruned.borrow()
    }

    async fn prune(&self, through: u64, rows: usize) -> Result<PruneStep, Error> {
        if let Some(reason) = &self.inner.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        // Only to the size of a signed checkpoint: its chain value is where verification of
        // the kept entries starts.
        let through = self
            .with_reader(move |r| r.checkpoint_size_at_most(through))
            .await?;
        let (step, stepped) = oneshot::channel();
        let request = PruneRequest {
            through,
            rows: rows.max(1),
            reply: step,
        };
        self.queue_bookkeeping(None, Some(request))?;
        stepped.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn cursor_position(&self, name: &str) -> Result<Option<u64>, Error> {
        let name = name.to_string();
        self.with_reader(move |r| r.cursor_position(&name)).await
    }

    fn writable(&self) -> watch::Receiver<bool> {
        self.inner.writable.clone()
    }
}

// === impl Readers ===

/// A fixed pool of read connections, used on blocking threads.
struct Readers {
    connections: Arc<Mutex<Vec<Box<dyn Reader>>>>,
    permits: Semaphore,
    count: usize,
}

impl Readers {
    fn open(backend: &dyn Backend, count: usize) -> Result<Self, Error> {
        let connections = (0..count)
            .map(|_| backend.open_reader())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            connections: Arc::new(Mutex::new(connections)),
            permits: Semaphore::new(count),
            count,
        })
    }

    /// Waits for the reads in progress, refuses later ones (`ShuttingDown`), and closes the
    /// connections off the async threads (a PostgreSQL connection stops a runtime of its own).
    async fn close(&self) {
        if let Ok(all) = self.permits.acquire_many(self.count as u32).await {
            all.forget();
        }
        self.permits.close();
        let readers = std::mem::take(&mut *self.connections.lock().expect("reader pool lock"));
        let _ = tokio::task::spawn_blocking(move || drop(readers)).await;
    }

    /// Takes a connection outside the async path (at open, before any reader runs).
    fn take(&self) -> Box<dyn Reader> {
        self.connections
            .lock()
            .expect("reader pool lock")
            .pop()
            .expect("at least one reader")
    }

    fn give_back(&self, reader: Box<dyn Reader>) {
        self.connections
            .lock()
            .expect("reader pool lock")
            .push(reader);
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Reader) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let connections = self.connections.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = connections
                .lock()
                .expect("reader pool lock")
                .pop()
                .expect("one connection per permit");
            let result = work(conn.as_mut());
            connections.lock().expect("reader pool lock").push(conn);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}
