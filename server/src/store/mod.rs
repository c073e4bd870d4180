//! Persistence of the audit log behind one small trait, and its embedded SQLite implementation.

pub mod aggregate;
mod fault;
mod filter_sql;
pub mod ledger;
mod recent;
pub mod sqlite;

use std::future::Future;

use audit_ledger::{Hash, PublicKey};
use audit_proto::pb::{AuditEntry, Filter};
use tokio::sync::watch;

use crate::error::Error;
use crate::validate::NewEntry;

pub use aggregate::{Stats, StatsQuery};
pub use ledger::{Checkpointing, StartupCheck, StoredCheckpoint};
pub use sqlite::SqliteStore;

/// Where a stored entry landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Id of the entry.
    pub id: String,
    /// Sequence of the entry (of the first recording, for a retried id).
    pub sequence: u64,
    /// Request id stored with the entry.
    pub request_id: String,
    /// Hash of the entry as stored (of the first recording, for a retried id).
    pub entry_hash: Hash,
    /// Chain hash stored with the entry.
    pub chain_hash: Hash,
}

/// Which way a read walks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Entries with a sequence greater than `after`, oldest first.
    Ascending {
        /// Exclusive lower bound.
        after: u64,
    },
    /// Entries with a sequence lower than `before` (or the newest), newest first.
    Descending {
        /// Exclusive upper bound; `None` starts at the newest entry.
        before: Option<u64>,
    },
}

/// One bounded read of entries matching a filter.
#[derive(Debug, Clone)]
pub struct Read {
    /// Entries to select.
    pub filter: Filter,
    /// Where to start and which way to go.
    pub direction: Direction,
    /// Highest sequence to consider: the committed head when the read was planned.
    pub through: u64,
    /// Most entries to return.
    pub limit: usize,
    /// Stop once the returned entries reach this many encoded bytes (at least one is returned).
    pub max_bytes: usize,
}

/// Entries returned by a read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching entries, with their sequences, in the read's direction.
    pub entries: Vec<AuditEntry>,
    /// True when the read reached the end of its range: no further entry matches.
    pub exhausted: bool,
}

/// A durable, append-only audit log.
pub trait Store: Send + Sync + 'static {
    /// Appends entries atomically: every entry is committed and synced to stable storage, or none
    /// is. Entries whose id is already stored with the same content are not stored again; their
    /// receipt gives the first sequence.
    fn append(
        &self,
        entries: Vec<NewEntry>,
    ) -> impl Future<Output = Result<Vec<Receipt>, Error>> + Send;

    /// Reads entries matching a filter, in sequence order.
    fn read(&self, read: Read) -> impl Future<Output = Result<Page, Error>> + Send;

    /// The lowest sequence received by the server at or after `nanos` since the Unix epoch.
    fn first_received_since(
        &self,
        nanos: i64,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// The key that signs the store's checkpoints.
    fn public_key(&self) -> PublicKey;

    /// The newest checkpoint, or the newest one of exactly `size` entries.
    fn checkpoint(
        &self,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Option<StoredCheckpoint>, Error>> + Send;

    /// Checkpoints with an index above `after`, oldest first, at most `limit`.
    fn checkpoints(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredCheckpoint>, Error>> + Send;

    /// The stored hash of entry `sequence`, if it is stored.
    fn entry_hash(&self, sequence: u64)
    -> impl Future<Output = Result<Option<Hash>, Error>> + Send;

    /// The Merkle tree hash of each range of leaves (leaf `i` is entry `i + 1`).
    fn tree_hashes(
        &self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> impl Future<Output = Result<Vec<Hash>, Error>> + Send;

    /// Counts of the entries matching `query.filter` per time bucket and outcome, and its most
    /// frequent principals and methods (the web console's charts).
    fn stats(&self, query: StatsQuery) -> impl Future<Output = Result<Stats, Error>> + Send;

    /// The sequence of the newest committed entry (0 when empty), updated after each commit.
    fn head(&self) -> watch::Receiver<u64>;

    /// Whether the store accepts writes: false from the start when its log did not verify as it
    /// opened, and for good after a storage failure.
    fn writable(&self) -> watch::Receiver<bool>;
}
