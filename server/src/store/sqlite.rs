//! The embedded store: one SQLite database in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the write connection and group-commits: it takes every write request
//! waiting in its queue, applies them in one transaction (a request refused for a conflicting
//! id writes nothing, so it does not fail the others), commits with one fsync, and only then
//! answers each request and publishes the new head. A failed write or commit poisons the store: it refuses
//! every later write rather than retry something that may or may not be on disk.
//! Reads go through a small pool of read-only connections on blocking threads, and a checkpoint
//! thread moves committed pages from the write-ahead log into the database file, off the
//! writer's path.
//!
//! The writer also keeps the log tamper-evident (see [`super::ledger`]): each entry is stored
//! with its entry hash and chain hash, computed in the same transaction, and checkpoints are
//! signed into the store every so many entries or seconds, and when it closes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use audit_ledger::{Hash, PublicKey};
use audit_proto::pb::AuditEntry;
use prost::Message;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params_from_iter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::fault::{self, Point};
use super::filter_sql::{caller_identity, condition};
use super::ledger::{self, Checkpointing, Signer, StoredCheckpoint};
use super::recent::{self, Kept, Recent};
use super::{Direction, Page, Read, Receipt, Store};
use crate::error::Error;
use crate::validate::{NewEntry, timestamp_nanos};

use audit_ledger::sqlite::{SCHEMA_1 as SCHEMA, SCHEMA_2, SCHEMA_VERSION};

const INSERT: &str = "INSERT INTO entries (sequence, id, digest, request_id, time_ns, received_ns,
    source, method, event, category, resource, level, outcome, status_code, principal, spiffe_id,
    labels, entry, entry_hash, chain_hash)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most bytes of entries waiting for the writer.
    pub max_pending_bytes: usize,
    /// Most entries committed in one transaction.
    pub max_group_entries: usize,
    /// Read connections in the pool.
    pub read_connections: usize,
    /// Signing of checkpoints.
    pub checkpointing: Checkpointing,
    /// Largest the write-ahead log may grow (plus one group) before the writer checkpoints it
    /// itself, making writers wait, instead of leaving it to the background checkpointer. Only
    /// a checkpoint still blocked after a second (by readers of old snapshots) lets it grow on.
    pub max_wal_bytes: u64,
}

/// The embedded SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken by `close`; the writer stops once it is gone and the queue is drained.
    jobs: std::sync::RwLock<Option<mpsc::UnboundedSender<WriteJob>>>,
    /// Bytes the queue may still take; bounds the memory of waiting writes.
    pending_bytes: Arc<Semaphore>,
    max_pending_bytes: u32,
    readers: Readers,
    /// The newest committed entries, which answer the reads of subscribers that keep up.
    recent: Arc<RwLock<Recent>>,
    head: watch::Receiver<u64>,
    writable: watch::Receiver<bool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Verifies the store's checkpoints.
    public_key: PublicKey,
    /// Why the store opened read-only (its log did not verify), if it did.
    read_only: Option<String>,
    /// The database file; its write-ahead log is beside it.
    path: PathBuf,
    /// Held for the store's lifetime so that no second server writes the same database.
    _lock: File,
}

struct WriteJob {
    entries: Vec<NewEntry>,
    reply: oneshot::Sender<Result<Vec<Receipt>, Error>>,
    /// Released once the job is answered.
    _pending: OwnedSemaphorePermit,
}

/// Bytes a job is charged in the write queue: its entries plus bookkeeping.
fn queued_bytes(entries: &[NewEntry]) -> usize {
    entries
        .iter()
        .map(|new| new.entry.encoded_len() + std::mem::size_of::<NewEntry>())
        .sum::<usize>()
        + std::mem::size_of::<WriteJob>()
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, and starts its writer thread.
    pub fn open(data_dir: &Path, options: &Options) -> Result<Self, Error> {
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join("audit.db");
        // SQLite gives its WAL and shared-memory files the database file's mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::StoreFailed(format!("open {}: {e}", path.display())))?;
        }
        let (mut conn, migrated) = open_writer(&path)?;
        bound_wal_file(&conn, options.max_wal_bytes)?;
        let checkpointer = Checkpointer::spawn(&path)?;
        // The database file's directory entry must be durable too; SQLite syncs it only for
        // journals.
        File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::StoreFailed(format!("sync {}: {e}", data_dir.display())))?;

        let head: u64 = conn.query_row(
            "SELECT COALESCE(MAX(sequence), 0) FROM entries",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64;
        let key = ledger::load_key(data_dir, &options.checkpointing)?;
        let (signer, read_only) = ledger::start(&mut conn, key, &options.checkpointing, migrated)?;
        let public_key = signer.public_key();
        let readers = Readers::open(&path, options.read_connections.max(1))?;
        let (head_tx, head_rx) = watch::channel(head);
        let writable = read_only.is_none() && probe_writable(&conn, data_dir);
        let (writable_tx, writable_rx) = watch::channel(writable);
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let max_pending_bytes = u32::try_from(options.max_pending_bytes)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32)
            .max(1);
        let recent = Arc::new(RwLock::new(Recent::new(
            recent::MAX_ENTRIES,
            recent::MAX_BYTES,
        )));
        let writer = Writer {
            conn,
            jobs: jobs_rx,
            recent: recent.clone(),
            next_sequence: head + 1,
            max_group_entries: options.max_group_entries.max(1),
            head: head_tx,
            writable: writable_tx,
            signer,
            wal_path: wal_path(&path),
            max_wal_bytes: options.max_wal_bytes,
        };
        let handle = std::thread::Builder::new()
            .name("audit-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Internal(format!("spawn writer thread: {e}")))?;
        tracing::info!(path = %path.display(), head, "store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: std::sync::RwLock::new(Some(jobs_tx)),
                pending_bytes: Arc::new(Semaphore::new(max_pending_bytes as usize)),
                max_pending_bytes,
                readers,
                recent,
                head: head_rx,
                writable: writable_rx,
                writer: Mutex::new(Some(handle)),
                checkpointer: Mutex::new(Some(checkpointer)),
                public_key,
                read_only,
                path: path.clone(),
                _lock: lock,
            }),
        })
    }

    /// Bytes the store takes on disk now: the database file and its write-ahead log.
    pub fn disk_usage(&self) -> DiskUsage {
        let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
        DiskUsage {
            database_bytes: size(&self.inner.path),
            wal_bytes: size(&wal_path(&self.inner.path)),
        }
    }

    /// Stops accepting writes, lets the writer commit what is queued, and waits for it.
    pub async fn close(&self) {
        self.inner.jobs.write().expect("jobs lock").take();
        let handle = self.inner.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .take();
        if let Some(checkpointer) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
        }
    }
}

/// Bytes the start-up probe writes beside the database: room for a few groups of entries. A
/// store with less room starts refusing writes rather than fail its first ones.
const PROBE_BYTES: usize = 1 << 20;

/// Whether the store can write: a commit (SQLite writes and syncs its log) and `PROBE_BYTES`
/// written, synced and removed in the data directory. A store restarted on a full disk then
/// reports NOT_SERVING from the start and still answers reads.
fn probe_writable(conn: &Connection, data_dir: &Path) -> bool {
    let commit = || -> Result<(), Error> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Rewriting the header page with its own value changes nothing but is a real write.
        let written = conn
            .pragma_update(None, "user_version", version)
            .and_then(|()| conn.execute_batch("COMMIT"));
        if written.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        Ok(written?)
    };
    let room = || -> Result<(), Error> {
        let path = data_dir.join("space-probe");
        let written = File::create(&path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, &vec![0; PROBE_BYTES])?;
                file.sync_all()
            })
            .map_err(|e| Error::StoreFailed(format!("write {}: {e}", path.display())));
        let _ = fs::remove_file(&path);
        written
    };
    match commit().and_then(|()| room()) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(
                %error,
                "store cannot write; serving reads only until a restart with room to write"
            );
            false
        }
    }
}

/// Bytes the store takes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// The database file.
    pub database_bytes: u64,
    /// Its write-ahead log.
    pub wal_bytes: u64,
}

fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Has SQLite cut the write-ahead log back to `max_bytes` whenever it restarts it from the
/// beginning, so that a burst does not leave a large file behind.
fn bound_wal_file(conn: &Connection, max_bytes: u64) -> Result<(), Error> {
    let limit = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    conn.query_row(&format!("PRAGMA journal_size_limit = {limit}"), [], |_| {
        Ok(())
    })?;
    Ok(())
}

/// How often committed pages are moved from the write-ahead log into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A thread that checkpoints the write-ahead log, so the writer never does it inline (SQLite's
/// automatic checkpoint would run inside a commit, on the write path).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("audit-store-checkpointer".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    // PASSIVE: copies what it can without waiting for readers or the writer.
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(error) = done {
                        tracing::warn!(%error, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("spawn checkpoint thread: {e}")))?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

impl Store for SqliteStore {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Receipt>, Error> {
        if let Some(reason) = &self.inner.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        if !*self.inner.writable.borrow() {
            return Err(Error::StoreFailed(
                "store failed earlier; restart required".into(),
            ));
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
            reply,
            _pending: pending,
        };
        let jobs = self.inner.jobs.read().expect("jobs lock").clone();
        jobs.ok_or(Error::ShuttingDown)?
            .send(job)
            .map_err(|_| Error::ShuttingDown)?;
        response.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn read(&self, read: Read) -> Result<Page, Error> {
        let shared = self.inner.recent.read().expect("recent lock").read(&read);
        if let Some(shared) = shared {
            return Ok(shared.into_page());
        }
        self.inner
            .readers
            .run(move |conn| read_page(conn, &read))
            .await
    }

    async fn first_received_since(&self, nanos: i64) -> Result<Option<u64>, Error> {
        self.inner
            .readers
            .run(move |conn| {
                let first: Option<i64> = conn.query_row(
                    "SELECT MIN(sequence) FROM entries WHERE received_ns >= ?",
                    [nanos],
                    |row| row.get(0),
                )?;
                Ok(first.map(|s| s as u64))
            })
            .await
    }

    fn public_key(&self) -> PublicKey {
        self.inner.public_key.clone()
    }

    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error> {
        self.inner
            .readers
            .run(move |conn| ledger::read_checkpoint(conn, size))
            .await
    }

    async fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error> {
        self.inner
            .readers
            .run(move |conn| ledger::read_checkpoints(conn, after, limit))
            .await
    }

    async fn entry_hash(&self, sequence: u64) -> Result<Option<Hash>, Error> {
        self.inner
            .readers
            .run(move |conn| ledger::read_entry_hash(conn, sequence))
            .await
    }

    async fn tree_hashes(&self, ranges: Vec<std::ops::Range<u64>>) -> Result<Vec<Hash>, Error> {
        self.inner
            .readers
            .run(move |conn| ledger::read_tree_hashes(conn, &ranges))
            .await
    }

    async fn stats(&self, query: super::StatsQuery) -> Result<super::Stats, Error> {
        self.inner
            .readers
            .run(move |conn| super::aggregate::stats(conn, &query))
            .await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.clone()
    }

    fn writable(&self) -> watch::Receiver<bool> {
        self.inner.writable.clone()
    }
}

/// Creates the data directory (mode 0700) and takes its exclusive lock.
fn lock_data_dir(data_dir: &Path) -> Result<File, Error> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        Error::StoreFailed(format!("{what} {}: {e}", path.display()))
    };
    if !data_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| failed("create data dir", data_dir, e))?;
    }
    let lock_path: PathBuf = data_dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| failed("open", &lock_path, e))?;
    lock.try_lock().map_err(|_| {
        Error::StoreFailed(format!(
            "data dir {} is in use by another audit-server",
            data_dir.display()
        ))
    })?;
    Ok(lock)
}

/// Opens the write connection: WAL, synchronous=FULL, schema up to date (and whether it was
/// just migrated from version 1).
fn open_writer(path: &Path) -> Result<(Connection, bool), Error> {
    let mut conn = Connection::open(path)
        .map_err(|e| Error::StoreFailed(format!("open {}: {e}", path.display())))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: each commit syncs the WAL, so an acknowledged entry survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoints run on their own thread (`Checkpointer`), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let migrated = migrate(&mut conn)?;
    Ok((conn, migrated))
}

fn migrate(conn: &mut Connection) -> Result<bool, Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(SCHEMA_2)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            Ok(false)
        }
        1 => {
            // Version 2 hashes every entry stored so far into the chain.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SCHEMA_2)?;
            ledger::hash_existing_rows(&tx)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            tracing::info!("store migrated to schema version 2: entries hashed and chained");
            Ok(true)
        }
        SCHEMA_VERSION => Ok(false),
        newer => Err(Error::StoreFailed(format!(
            "database schema version {newer} is newer than this server's ({SCHEMA_VERSION})"
        ))),
    }
}

// === impl Writer ===

struct Writer {
    conn: Connection,
    jobs: mpsc::UnboundedReceiver<WriteJob>,
    recent: Arc<RwLock<Recent>>,
    next_sequence: u64,
    max_group_entries: usize,
    head: watch::Sender<u64>,
    writable: watch::Sender<bool>,
    signer: Signer,
    wal_path: PathBuf,
    max_wal_bytes: u64,
}

/// Marks the store failed if dropped during a panic.
struct FailOnPanic(watch::Sender<bool>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.send_replace(false);
        }
    }
}

/// Why one write request of a group failed without failing the group.
enum JobFailure {
    Conflict { field: String, id: String },
}

impl Writer {
    fn run(mut self) {
        // Should the writer ever panic, the store must not look writable.
        let _fail_on_panic = FailOnPanic(self.writable.clone());
        // Only to wait for a job with a timeout (the checkpoint deadline).
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("timer runtime");
        loop {
            let next = match self.signer.deadline() {
                Some(deadline) if *self.writable.borrow() => timer.block_on(async {
                    tokio::time::timeout_at(deadline.into(), self.jobs.recv()).await
                }),
                _ => Ok(self.jobs.blocking_recv()),
            };
            let first = match next {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(_elapsed) => {
                    self.sign_checkpoint();
                    continue;
                }
            };
            let mut count = first.entries.len();
            let mut group = vec![first];
            while count < self.max_group_entries {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        count += job.entries.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            if !*self.writable.borrow() {
                for job in group {
                    let _ = job.reply.send(Err(Error::StoreFailed(
                        "store failed earlier; restart required".into(),
                    )));
                }
                continue;
            }
            let first_sequence = self.next_sequence;
            match self.commit(&group) {
                Ok(outcomes) => {
                    self.remember(&mut group, &outcomes, first_sequence);
                    if self.next_sequence != first_sequence {
                        self.head.send_replace(self.next_sequence - 1);
                    }
                    for (job, outcome) in group.into_iter().zip(outcomes) {
                        let result = outcome.map_err(|JobFailure::Conflict { field, id }| {
                            Error::IdConflict { field, id }
                        });
                        let _ = job.reply.send(result);
                    }
                    self.bound_wal();
                }
                Err(error) => {
                    // The outcome on disk is unknown: refuse all further writes rather than
                    // guess. Clients retry with their ids once an operator has fixed the store.
                    tracing::error!(%error, "store write failed; refusing further writes");
                    self.next_sequence = first_sequence;
                    self.writable.send_replace(false);
                    for job in group {
                        let _ = job.reply.send(Err(Error::StoreFailed(error.to_string())));
                    }
                }
            }
        }
        if *self.writable.borrow() && self.signer.behind() {
            self.sign_checkpoint();
        }
        tracing::debug!("store writer stopped");
    }

    /// Moves the entries the last commit stored into the recent window, before the new head is
    /// published: entries inserted now got consecutive sequences from `first_sequence`, in job
    /// order; retries of stored ids and failed jobs got none.
    fn remember(
        &self,
        group: &mut [WriteJob],
        outcomes: &[Result<Vec<Receipt>, JobFailure>],
        first_sequence: u64,
    ) {
        let mut kept = Vec::new();
        let mut expected = first_sequence;
        for (job, outcome) in group.iter_mut().zip(outcomes) {
            let Ok(receipts) = outcome else { continue };
            for (new, receipt) in job.entries.drain(..).zip(receipts) {
                if receipt.sequence == expected {
                    let mut entry = new.entry;
                    entry.entry_hash = receipt.entry_hash.to_vec();
                    entry.chain_hash = receipt.chain_hash.to_vec();
                    kept.push(Kept::new(entry, expected));
                    expected += 1;
                }
            }
        }
        // Prepared above, so that subscribers' reads wait only for the pushes.
        let mut recent = self.recent.write().expect("recent lock");
        for kept in kept {
            recent.push(kept);
        }
        if expected != self.next_sequence {
            // Never expected; the database stays the truth, so drop the window.
            tracing::warn!(
                expected,
                next = self.next_sequence,
                "recent window out of step"
            );
            recent.clear();
        }
    }

    /// Checkpoints the write-ahead log on the writer's thread once it outgrows its bound.
    ///
    /// The background checkpointer copies pages while commits continue, but it can never
    /// finish a pass under back-to-back commits, and SQLite restarts the log from its beginning
    /// only after a pass finished; so under sustained writes the log would grow without limit.
    /// Here no commit can run meanwhile: RESTART copies the rest, waits (up to the busy timeout)
    /// for readers of older snapshots, and lets the next commit write from the beginning of the
    /// file, which `journal_size_limit` keeps at `max_wal_bytes`. Writers wait meanwhile: that is
    /// the back-pressure that keeps disk use bounded by the data, not by the write rate.
    fn bound_wal(&mut self) {
        match restart_wal_over(&self.conn, &self.wal_path, self.max_wal_bytes) {
            Ok(WalCheckpoint::NotNeeded) => {}
            Ok(WalCheckpoint::Done { wal_bytes }) => {
                tracing::debug!(wal_bytes, "WAL checkpointed by the writer");
            }
            Ok(WalCheckpoint::Busy { wal_bytes }) => tracing::warn!(
                wal_bytes,
                "WAL checkpoint still busy after 1 s; the writer retries after its next commit"
            ),
            Err(error) => {
                // Everything acknowledged is in the log, but it can no longer be bounded.
                tracing::error!(%error, "WAL checkpoint failed; refusing further writes");
                self.writable.send_replace(false);
            }
        }
    }

    /// Signs a checkpoint of the committed log in a transaction of its own.
    fn sign_checkpoint(&mut self) {
        let tip = self.signer.tip.clone();
        let signed = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                fault::hit(Point::SignCheckpoint)?;
                let note = self.signer.sign(&tx, &tip)?;
                tx.commit().map(|()| note)
            });
        match signed {
            Ok(note) => self.signer.committed(tip, Some(note)),
            Err(error) => {
                tracing::error!(%error, "signing a checkpoint failed; refusing further writes");
                self.writable.send_replace(false);
            }
        }
    }

    /// Applies every job in one transaction and commits it with one fsync.
    fn commit(
        &mut self,
        group: &[WriteJob],
    ) -> Result<Vec<Result<Vec<Receipt>, JobFailure>>, rusqlite::Error> {
        let mut next = self.next_sequence;
        let mut tip = self.signer.tip.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        fault::hit(Point::BeforeInsert)?;
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group {
            // A refused request writes nothing (see `insert_job`), so requests need no savepoint
            // of their own: savepoints would copy every page they touch to a sub-journal.
            let outcome = insert_job(&tx, &job.entries, &mut next, tip.chain)?;
            if let Ok(receipts) = &outcome {
                for receipt in receipts {
                    tip.add(receipt.sequence, &receipt.entry_hash, &receipt.chain_hash);
                }
            }
            outcomes.push(outcome);
        }
        fault::hit(Point::BeforeCommit)?;
        // A due checkpoint rides on this commit: no extra fsync.
        let signed = match self.signer.due(&tip) {
            true => {
                fault::hit(Point::SignCheckpoint)?;
                Some(self.signer.sign(&tx, &tip)?)
            }
            false => None,
        };
        // An injected commit failure drops the transaction, which rolls it back.
        fault::hit(Point::Commit)?;
        tx.commit()?;
        // The commit is on disk, but the store is told it failed (as a lost fsync reply would).
        fault::hit(Point::AfterCommit)?;
        self.next_sequence = next;
        self.signer.committed(tip, signed);
        Ok(outcomes)
    }
}

/// What [`restart_wal_over`] did.
enum WalCheckpoint {
    NotNeeded,
    Done { wal_bytes: u64 },
    Busy { wal_bytes: u64 },
}

/// Runs a RESTART checkpoint on the write connection if the log at `wal_path` is larger than
/// `max_bytes` (see [`Writer::bound_wal`]).
fn restart_wal_over(
    conn: &Connection,
    wal_path: &Path,
    max_bytes: u64,
) -> Result<WalCheckpoint, rusqlite::Error> {
    let wal_bytes = fs::metadata(wal_path).map_or(0, |m| m.len());
    if wal_bytes <= max_bytes {
        return Ok(WalCheckpoint::NotNeeded);
    }
    fault::hit(Point::WalCheckpoint)?;
    // SQLite answers busy at once, without its busy handler, while the background checkpointer
    // holds the checkpoint lock; retry for a while (writers wait) rather than let the log grow.
    let started = std::time::Instant::now();
    loop {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(WalCheckpoint::Done { wal_bytes });
        }
        if started.elapsed() >= WAL_CHECKPOINT_PATIENCE {
            return Ok(WalCheckpoint::Busy { wal_bytes });
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// How long the writer keeps retrying a busy WAL checkpoint before it commits again.
const WAL_CHECKPOINT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Inserts the entries of one request, assigning sequences from `next` and chaining them to
/// `chain`, the chain value after the entry before (`next - 1`).
///
/// Entries whose client-chosen id is already stored are not stored again: their receipt is the
/// first one. If such an entry's content differs, the request is refused before anything is
/// written. Server-chosen ids are fresh UUIDv7s; a clash would fail the insert, and the group.
fn insert_job(
    conn: &Connection,
    entries: &[NewEntry],
    next: &mut u64,
    mut chain: Hash,
) -> Result<Result<Vec<Receipt>, JobFailure>, rusqlite::Error> {
    let mut stored = Vec::with_capacity(entries.len());
    for new in entries {
        let earlier = if new.client_id {
            stored_receipt(conn, &new.entry.id)?
        } else {
            None
        };
        if let Some((receipt, digest)) = &earlier
            && *digest != new.digest
        {
            return Ok(Err(JobFailure::Conflict {
                field: format!("{}.id", new.path),
                id: receipt.id.clone(),
            }));
        }
        stored.push(earlier.map(|(receipt, _)| receipt));
    }

    let mut insert = conn.prepare_cached(INSERT)?;
    let mut receipts = Vec::with_capacity(entries.len());
    for (new, earlier) in entries.iter().zip(stored) {
        if let Some(receipt) = earlier {
            receipts.push(receipt);
            continue;
        }
        let entry = &new.entry;
        let id = uuid::Uuid::parse_str(&entry.id).expect("validated id");
        let (principal, spiffe_id) = caller_identity(entry);
        let entry_hash = audit_ledger::entry_hash_at(entry, *next);
        let chain_hash = audit_ledger::chain_hash(&chain, &entry_hash);
        insert.execute(rusqlite::params![
            *next as i64,
            id.as_bytes().as_slice(),
            new.digest.as_slice(),
            entry.request_id,
            entry.time.as_ref().and_then(timestamp_nanos).unwrap_or(0),
            entry
                .received_time
                .as_ref()
                .and_then(timestamp_nanos)
                .unwrap_or(0),
            entry.source,
            entry.method,
            entry.event,
            entry.category,
            entry.resource,
            entry.level,
            entry.outcome,
            entry.status_code,
            principal,
            spiffe_id,
            serde_json::to_string(&entry.labels).expect("string map serializes"),
            entry.encode_to_vec(),
            entry_hash.as_slice(),
            chain_hash.as_slice(),
        ])?;
        receipts.push(Receipt {
            id: entry.id.clone(),
            sequence: *next,
            request_id: entry.request_id.clone(),
            entry_hash,
            chain_hash,
        });
        *next += 1;
        chain = chain_hash;
    }
    Ok(Ok(receipts))
}

/// The receipt and content digest of the entry stored with `id`, if any.
fn stored_receipt(
    conn: &Connection,
    id: &str,
) -> Result<Option<(Receipt, Vec<u8>)>, rusqlite::Error> {
    let key = uuid::Uuid::parse_str(id).expect("validated id");
    let mut select = conn.prepare_cached(
        "SELECT sequence, digest, request_id, entry_hash, chain_hash FROM entries WHERE id = ?",
    )?;
    let hash = |h: Option<Vec<u8>>| h.and_then(|h| h.try_into().ok()).unwrap_or([0; 32]);
    select
        .query_row([key.as_bytes().as_slice()], |row| {
            Ok((
                Receipt {
                    id: id.to_string(),
                    sequence: row.get::<_, i64>(0)? as u64,
                    request_id: row.get(2)?,
                    entry_hash: hash(row.get(3)?),
                    chain_hash: hash(row.get(4)?),
                },
                row.get::<_, Vec<u8>>(1)?,
            ))
        })
        .optional()
}

// === impl DirectWriter ===

/// The store's inserts without its queue, writer thread or gRPC: the same schema, durability and
/// rows, one transaction (one fsync) per call on the caller's thread. The benchmarks measure it
/// as the storage ceiling of the server.
pub struct DirectWriter {
    conn: Connection,
    next_sequence: u64,
    /// Chain value after the newest entry, kept in memory as the server's writer keeps it.
    chain: Hash,
    /// Checkpoints as the server's store does: in the background, and by the writer at the
    /// default WAL bound. Its thread ends when this is dropped.
    _checkpointer: Checkpointer,
    wal_path: PathBuf,
}

/// The WAL bound of [`DirectWriter`]: the server's default.
const DIRECT_MAX_WAL_BYTES: u64 = 64 << 20;

impl DirectWriter {
    /// Opens (creating if needed) `audit.db` in `data_dir`, which no server may be using.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join("audit.db");
        let (conn, _) = open_writer(&path)?;
        bound_wal_file(&conn, DIRECT_MAX_WAL_BYTES)?;
        let head: i64 = conn.query_row(
            "SELECT COALESCE(MAX(sequence), 0) FROM entries",
            [],
            |row| row.get(0),
        )?;
        let chain = ledger::stored_chain(&conn, head as u64)?;
        Ok(Self {
            conn,
            next_sequence: head as u64 + 1,
            chain,
            _checkpointer: Checkpointer::spawn(&path)?,
            wal_path: wal_path(&path),
        })
    }

    /// Inserts `entries` in one transaction and commits it.
    pub fn append(&mut self, entries: &[NewEntry]) -> Result<(), Error> {
        let mut next = self.next_sequence;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let receipts = match insert_job(&tx, entries, &mut next, self.chain)? {
            Ok(receipts) => receipts,
            Err(JobFailure::Conflict { field, id }) => return Err(Error::IdConflict { field, id }),
        };
        tx.commit()?;
        if let Some(newest) = receipts
            .iter()
            .rev()
            .find(|r| r.sequence >= self.next_sequence)
        {
            self.chain = newest.chain_hash;
        }
        self.next_sequence = next;
        restart_wal_over(&self.conn, &self.wal_path, DIRECT_MAX_WAL_BYTES)?;
        Ok(())
    }
}

// === impl Readers ===

/// A fixed pool of read-only connections, used on blocking threads.
struct Readers {
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Semaphore,
}

impl Readers {
    fn open(path: &Path, count: usize) -> Result<Self, Error> {
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.pragma_update(None, "query_only", true)?;
            connections.push(conn);
        }
        Ok(Self {
            connections: Arc::new(Mutex::new(connections)),
            permits: Semaphore::new(count),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let connections = self.connections.clone();
        tokio::task::spawn_blocking(move || {
            let conn = connections
                .lock()
                .expect("reader pool lock")
                .pop()
                .expect("one connection per permit");
            let result = work(&conn);
            connections.lock().expect("reader pool lock").push(conn);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}

fn read_page(conn: &Connection, read: &Read) -> Result<Page, Error> {
    let filter = condition(&read.filter);
    let mut params = filter.params;
    let (bound, order) = match read.direction {
        Direction::Ascending { after } => {
            params.push(Value::Integer(after as i64));
            ("sequence > ?", "ASC")
        }
        Direction::Descending { before } => {
            params.push(Value::Integer(before.unwrap_or(u64::MAX >> 1) as i64));
            ("sequence < ?", "DESC")
        }
    };
    params.push(Value::Integer(read.through as i64));
    params.push(Value::Integer(read.limit as i64 + 1));
    let sql = format!(
        "SELECT sequence, entry, entry_hash, chain_hash FROM entries \
         WHERE {} AND {bound} AND sequence <= ? \
         ORDER BY sequence {order} LIMIT ?",
        filter.sql
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(params))?;
    let mut page = Page {
        entries: Vec::new(),
        exhausted: true,
    };
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        if page.entries.len() == read.limit || (bytes >= read.max_bytes && !page.entries.is_empty())
        {
            page.exhausted = false;
            break;
        }
        let sequence: i64 = row.get(0)?;
        let blob = row.get_ref(1)?.as_blob()?;
        bytes += blob.len();
        let mut entry = AuditEntry::decode(blob).map_err(|e| {
            Error::Internal(format!("stored entry {sequence} does not decode: {e}"))
        })?;
        entry.sequence = sequence as u64;
        entry.entry_hash = row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
        entry.chain_hash = row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default();
        // Counted as the recent window counts them: the entry with its hashes.
        bytes += prost::encoding::bytes::encoded_len(20, &entry.entry_hash)
            + prost::encoding::bytes::encoded_len(21, &entry.chain_hash);
        page.entries.push(entry);
    }
    Ok(page)
}

impl From<rusqlite::types::FromSqlError> for Error {
    fn from(error: rusqlite::types::FromSqlError) -> Self {
        Error::Internal(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use audit_proto::pb::{self, Filter};

    use super::*;
    use crate::config::Limits;
    use crate::validate::{self, Context};

    fn new_entry(i: usize) -> NewEntry {
        let entry = pb::AuditEntry {
            source: ["billing", "kms"][i % 2].into(),
            method: format!("/svc.v1.S/M{}", i % 3),
            event: format!("e{}", i % 2),
            category: format!("c{}", i % 3),
            resource: format!("res/{i}"),
            outcome: 1 + (i % 3) as i32,
            status_code: (i % 5) as i32,
            level: 1 + (i % 5) as i32,
            caller: Some(pb::Caller {
                principal: format!("p{}", i % 4),
                peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                    spiffe_id: format!("spiffe://x/{}", i % 2),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            labels: [("k".to_string(), format!("{}", i % 2))].into(),
            // Client-chosen, as a retry carries it.
            id: uuid::Uuid::now_v7().to_string(),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            ..Default::default()
        };
        let context = Context {
            received_time: validate::now(),
            recorder: None,
        };
        validate::entry(entry, "entry", None, &context, &Limits::default()).expect("valid")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_near_its_bound_and_disk_usage_reports_it() {
        const BOUND: u64 = 128 * 1024;
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options {
            max_pending_bytes: 1 << 24,
            max_group_entries: 64,
            read_connections: 1,
            checkpointing: Checkpointing {
                signing_key: None,
                log_name: "test".into(),
                every_entries: 1000,
                interval: std::time::Duration::from_secs(60),
                copy_dir: None,
                startup_check: ledger::StartupCheck::Full,
            },
            max_wal_bytes: BOUND,
        };
        let store = SqliteStore::open(dir.path(), &options).expect("open");
        let mut largest = 0;
        for batch in 0..100 {
            let entries = (0..20).map(|i| new_entry(batch * 20 + i)).collect();
            store.append(entries).await.expect("append");
            largest = largest.max(store.disk_usage().wal_bytes);
        }
        let usage = store.disk_usage();
        assert!(usage.database_bytes > 0);
        // One group's pages past the bound at most: the writer waits out the background
        // checkpointer, and no reader holds an old snapshot.
        assert!(
            largest <= BOUND + 256 * 1024,
            "WAL reached {largest} bytes (bound {BOUND}); {usage:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn reads_of_recent_entries_match_the_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options {
            max_pending_bytes: 1 << 20,
            max_group_entries: 64,
            read_connections: 1,
            checkpointing: Checkpointing {
                signing_key: None,
                log_name: "test".into(),
                every_entries: 10,
                interval: std::time::Duration::from_secs(60),
                copy_dir: None,
                startup_check: ledger::StartupCheck::Full,
            },
            max_wal_bytes: 64 << 20,
        };
        let store = SqliteStore::open(dir.path(), &options).expect("open");
        let entries: Vec<_> = (0..60).map(new_entry).collect();
        store.append(entries[..30].to_vec()).await.expect("append");
        // A retry of a stored id is not stored again, so it takes no sequence.
        let receipts = store
            .append(vec![entries[3].clone(), entries[30].clone()])
            .await
            .expect("append");
        assert_eq!(receipts[0].sequence, 4);
        assert_eq!(receipts[1].sequence, 31);
        for entry in &entries[31..] {
            store.append(vec![entry.clone()]).await.expect("append");
        }
        let head = *store.head().borrow();
        assert_eq!(head, 60);

        let filters = [
            Filter::default(),
            Filter {
                source: "kms".into(),
                ..Default::default()
            },
            Filter {
                method: "/svc.v1.S/*".into(),
                outcomes: vec![2, 3],
                ..Default::default()
            },
            Filter {
                method: "/svc.v1.S/M1".into(),
                principal: "p1".into(),
                ..Default::default()
            },
            Filter {
                spiffe_id: "spiffe://x/*".into(),
                status_codes: vec![0, 4],
                min_level: 3,
                ..Default::default()
            },
            Filter {
                event: "e1".into(),
                category: "c2".into(),
                resource: "res/1*".into(),
                ..Default::default()
            },
            Filter {
                labels: [("k".to_string(), "1".to_string())].into(),
                start_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_010,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_040,
                    nanos: 0,
                }),
                ..Default::default()
            },
            Filter {
                request_id: entries[7].entry.request_id.clone(),
                ..Default::default()
            },
        ];
        for filter in filters {
            for after in [0, 10, 29, 59] {
                for (limit, max_bytes) in [(1, usize::MAX), (7, usize::MAX), (100, 500)] {
                    let read = Read {
                        filter: filter.clone(),
                        direction: Direction::Ascending { after },
                        through: head,
                        limit,
                        max_bytes,
                    };
                    let memory = store
                        .inner
                        .recent
                        .read()
                        .unwrap()
                        .read(&read)
                        .expect("in the recent window")
                        .into_page();
                    let database = store
                        .inner
                        .readers
                        .run(move |conn| read_page(conn, &read))
                        .await
                        .expect("read");
                    assert_eq!(memory.entries, database.entries, "{filter:?} after {after}");
                    assert_eq!(
                        memory.exhausted, database.exhausted,
                        "{filter:?} after {after}"
                    );
                }
            }
        }
        store.close().await;
    }
}
